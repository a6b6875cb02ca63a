"""Just-in-time build of the decode kernel ``csrc/decode_cpu.cpp`` with its int8 matrices
``csrc/int8_cpu.cpp`` (one library, ops under ``torch.ops.workbench_decode``).

The same build as the fused optimizers (``workbench.optim._build``): sources found beside the
optimizers', built once with ``torch.utils.cpp_extension`` into a cache keyed by their contents,
an flock against concurrent builds. A failed build warns once and the fast copy runs its
pure-torch reference. Nothing is compiled until :func:`ensure_loaded` is first called.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

from workbench.optim._build import CFLAGS, ENV_CACHE, LDFLAGS, _process_lock, kernel_sources_dir

__all__ = ["ENV_IMPL", "ensure_loaded", "kernel_state"]

ENV_IMPL = "WORKBENCH_DECODE_IMPL"
"""Set to ``reference`` to force the pure-torch path (no build is attempted)."""

LIB_NAME = "workbench_decode"
SOURCES = ("decode_cpu.cpp", "int8_cpu.cpp")
HEADERS = ("int8_cpu.h",)  # part of the build key: a change rebuilds

_LOCK = threading.Lock()
_STATE: dict[str, str | None] = {"impl": None, "reason": "not built yet"}


def _build_dir(sources: list[Path]) -> Path:
    digest = hashlib.sha256()
    for src in sources:
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    digest.update(f"{torch.__version__}|{sys.version_info[:2]}|{CFLAGS}|{LDFLAGS}".encode())
    root = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "markovian-workbench")
    return root / "kernels" / f"decode-{digest.hexdigest()[:16]}"


def ensure_loaded() -> bool:
    """Build (once, cached) and load the decode kernel; return whether it is usable."""
    if _STATE["impl"] is not None:
        return _STATE["impl"] == "kernel"
    with _LOCK:
        if _STATE["impl"] is None:
            _STATE["impl"], _STATE["reason"] = _load()
            if _STATE["impl"] != "kernel" and not _STATE["reason"].startswith(ENV_IMPL):  # type: ignore[union-attr]
                warnings.warn(
                    f"workbench.models.fast: {_STATE['reason']}; the fast copy uses its "
                    f"pure-torch reference (correct, slower). Set {ENV_IMPL}=reference to "
                    "silence this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _STATE["impl"] == "kernel"


def kernel_state() -> dict[str, str | None]:
    """``impl`` ("kernel", "reference" or None before the first load) and ``reason``."""
    return dict(_STATE)


def _load() -> tuple[str, str]:
    if os.environ.get(ENV_IMPL, "").strip().lower() == "reference":
        return "reference", f"{ENV_IMPL}=reference forces the pure-torch path"
    sources = [kernel_sources_dir() / name for name in SOURCES]
    headers = [kernel_sources_dir() / name for name in HEADERS]
    missing = [str(s) for s in [*sources, *headers] if not s.is_file()]
    if missing:
        return "reference", f"decode kernel source missing: {', '.join(missing)}"
    build_dir = _build_dir([*sources, *headers])
    try:
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / f"{LIB_NAME}.so").exists():
            # logged, not printed: the first publish builds it, and a notebook shows stderr as
            # an error box under the cell that happened to create the learner
            logging.getLogger(__name__).info("building the decode kernel once into %s", build_dir)
        with _process_lock(build_dir):
            cpp_extension.load(
                name=LIB_NAME,
                sources=[str(s) for s in sources],
                # OpenMP as the optimizers: at::parallel_for is inline and runs serially in a
                # library compiled without it (the decode step then used one core of two)
                extra_cflags=list(CFLAGS),
                extra_ldflags=list(LDFLAGS),
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
    except Exception as exc:  # any compiler or loader failure means: use the reference path
        return "reference", f"decode kernel build failed ({type(exc).__name__}: {exc!s:.300})"
    return "kernel", "decode kernel loaded"


def _reset_for_tests(impl: str | None = None) -> None:
    """Forget the load decision, or force ``impl`` (the loaded library stays loaded)."""
    with _LOCK:
        _STATE["impl"], _STATE["reason"] = impl, "reset"
