"""The layer table of ARCHITECTURE.md, checked on every import in the code.

Imports point down only: skins → learner → building blocks. The core never imports widget,
plotting or MCP code, nor our own skins, not even lazily inside a function, and no two parts
import each other (directly or around a longer circle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIN_LIBRARIES = ("ipywidgets", "plotly", "mcp", "anywidget")

# ARCHITECTURE.md's layer table as data: part -> layer (higher may import lower, never up).
# "workbench" is the package root, which re-exports the main API for `import workbench`.
LAYERS: dict[str, int] = {
    # building blocks, in the order they may import each other
    "losses": 1,
    "optim": 1,
    "store": 1,
    "models": 1,
    "_template_sandbox": 1,  # the jinja2 sandbox chat templates run in
    "_openmp": 1,  # frees a thread's OpenMP team (ctypes; the learner's threads)
    "chat": 2,  # chat templates (uses losses.IGNORE)
    "_cpu_pool": 2,  # reuse of freed CPU blocks for the learner's thread (in optim's library)
    "tokenizers": 3,  # carry the chat template
    "batching": 4,  # examples -> token ids, labels and padded batches
    "formats": 4,  # files -> models + tokenizers
    # the learner, and the offline trainer beside it
    "learner": 5,
    "train": 5,
    # cores built on the learner
    "labeling": 6,
    "demo": 6,
    "workbench": 6,
    "watch": 6,
    # skins
    "mcp": 7,
    "widgets": 7,
    "cli": 7,
}
SKINS = {"mcp", "widgets", "cli"}
# Arrows between parts of one layer that the table allows (composition roots).
SIDEWAYS = {
    ("cli", "mcp"),
    # the learner starts offline runs and adopts their weights (train_offline); train never
    # imports the learner (NEVER below)
    ("learner", "train"),
    # the decode kernel (models/fast.py) is built by the optimizers' JIT builder, one build path
    ("models", "optim"),
}
# ARCHITECTURE.md's "never imports" beyond the layer order.
NEVER = {("train", "learner")}
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


def _part_of_file(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("").parts
    if rel[0] == "widgets":
        return "widgets"
    if rel[1:] == ("__init__",):
        return "workbench"
    return rel[1]


def _parts_named(node: ast.Import | ast.ImportFrom, here: str) -> list[str]:
    """The first-party parts an import statement reaches (``from workbench import losses``
    reaches ``losses``; a relative import inside ``widgets/`` stays in ``widgets``)."""
    if isinstance(node, ast.Import):
        modules = [a.name for a in node.names]
    elif node.level > 0:
        return [here]
    elif node.module == "workbench":
        modules = [f"workbench.{a.name}" for a in node.names]
    else:
        modules = [node.module or ""]
    out = []
    for m in modules:
        parts = m.split(".")
        if parts[0] != "workbench":
            continue
        out.append("workbench" if len(parts) == 1 else parts[1])
    return out


def _python_files() -> list[Path]:
    return sorted([*(ROOT / "workbench").rglob("*.py"), *(ROOT / "widgets").glob("*.py")])


def import_graph() -> dict[str, set[tuple[str, str]]]:
    """part -> {(imported part, 'file:line')}, over every import statement, including those
    inside functions and ``TYPE_CHECKING`` blocks (a type-only arrow is still an arrow)."""
    graph: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in _python_files():
        here = _part_of_file(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for there in _parts_named(node, here):
                    if there != here:
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        graph[here].add((there, where))
    return graph


def test_every_part_is_in_the_layer_table() -> None:
    parts = {_part_of_file(p) for p in _python_files()}
    assert parts - LAYERS.keys() == set(), "add the new part to LAYERS (and ARCHITECTURE.md)"


def test_imports_point_down_the_layer_table() -> None:
    bad = []
    for here, arrows in import_graph().items():
        for there, where in arrows:
            up = LAYERS[there] > LAYERS[here]
            sideways = LAYERS[there] == LAYERS[here] and (here, there) not in SIDEWAYS
            if up or sideways or (here, there) in NEVER:
                bad.append(f"{where}: {here} (layer {LAYERS[here]}) imports {there}")
    assert sorted(bad) == []


def test_no_import_circles() -> None:
    graph = {k: {t for t, _ in v} for k, v in import_graph().items()}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            else:
                visit(nxt, [*path, nxt])

    for start in graph:
        visit(start, [start])
    assert circles == []


def test_the_checker_sees_lazy_imports_of_our_skins(tmp_path: Path) -> None:
    """The hole the old guard had: a core function importing ``workbench.mcp`` lazily."""
    code = "def serve(learner):\n    from workbench.mcp import serve_http\n    return serve_http\n"
    node = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Import | ast.ImportFrom))
    assert _parts_named(node, "learner") == ["mcp"]
    assert LAYERS["mcp"] > LAYERS["learner"]


def test_importing_the_core_loads_no_skin_library() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE_MODULES)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {SKIN_LIBRARIES!r}"
        + " or m.startswith(('workbench.mcp', 'workbench.widgets')))\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"core imports skins: {out.stdout}"


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_core_file_names_a_skin_library(path: Path) -> None:
    if _part_of_file(path) in SKINS:
        return
    offenders = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        offenders += [f"{node.lineno} {n}" for n in names if n.split(".")[0] in SKIN_LIBRARIES]
    assert offenders == []
