"""The repository's top-level folders never shadow an installed distribution.

pytest, ``python -m`` and notebooks started from the repository root put that root first on
``sys.path``, so a top-level package there wins over an installed one of the same name. That
broke CI once: transformers 5.25 started depending on the PyPI package ``kernels`` while our
C++/CUDA sources lived in a top-level ``kernels/`` (now ``csrc/``), and every transformers
model import failed with ``cannot import name 'CUDAProperties' from 'kernels'``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _top_level_packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def test_no_top_level_package_shares_a_name_with_an_installed_distribution() -> None:
    installed = importlib.metadata.packages_distributions()
    mine = set(installed.get("workbench", []))
    clashes = {
        name: dists
        for name in _top_level_packages()
        if (dists := [d for d in installed.get(name, []) if d not in mine])
    }
    assert clashes == {}, (
        f"rename these top-level folders, they shadow installed packages: {clashes}"
    )
