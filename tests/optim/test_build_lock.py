"""A build killed mid-way must not leave later builds waiting forever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_stale_torch_build_lock_is_cleared(tmp_path: Path) -> None:
    # A fresh cache: the build runs, finds a lock file a killed build left, and still completes.
    cache = tmp_path / "cache"
    code = (
        "import sys; from workbench.optim import _build;"
        "from pathlib import Path;"
        "d = _build._build_dir([_build.kernel_sources_dir() / n for n in _build.CPU_SOURCES]"
        " + [_build.kernel_sources_dir() / _build.HEADERS[0]], False);"
        "d.mkdir(parents=True, exist_ok=True); (d / 'lock').write_text('');"
        "print(_build.ensure_loaded(), _build.backend_info()['reason'])"
    )
    env = dict(os.environ, WORKBENCH_CACHE_DIR=str(cache))
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True"), out.stdout + out.stderr


def test_package_imports_and_steps_without_fcntl(tmp_path: Path) -> None:
    # Where fcntl does not exist (Windows) the package must import and the reference path serve.
    code = (
        "import sys, warnings; sys.modules['fcntl'] = None\n"
        "import torch\n"
        "from workbench.optim import FusedAdamW, backend_info\n"
        "w = torch.nn.Parameter(torch.ones(3)); w.grad = torch.ones(3)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    FusedAdamW([w], lr=0.1).step()\n"
        "print(backend_info()['cpu'], len(caught), float(w[0]))\n"
    )
    env = dict(os.environ, WORKBENCH_CACHE_DIR=str(tmp_path / "cache"))
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    backend, warned, w0 = out.stdout.split()
    assert (backend, warned) == ("reference", "1"), out.stdout + out.stderr
    assert float(w0) < 1.0
