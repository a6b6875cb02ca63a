"""The core library never imports widget, plotting or MCP code (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIN_LIBRARIES = ("ipywidgets", "plotly", "mcp", "anywidget")
CORE_MODULES = [
    "workbench",
    "workbench.models",
    "workbench.tokenizers",
    "workbench.formats",
    "workbench.optim",
    "workbench.losses",
    "workbench.store",
    "workbench.learner",
    "workbench.demo",
    "workbench.cli",
]


def test_importing_the_core_loads_no_skin_library() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE_MODULES)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {SKIN_LIBRARIES!r})\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"core imports skin libraries: {out.stdout}"


def test_no_core_file_names_a_skin_library() -> None:
    offenders = []
    for path in (ROOT / "workbench").rglob("*.py"):
        if "mcp" in path.relative_to(ROOT / "workbench").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in SKIN_LIBRARIES
            ]
    assert offenders == []
