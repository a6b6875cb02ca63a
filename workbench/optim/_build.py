"""Just-in-time build and loading of the fused optimizer kernels in ``csrc/``.

The boundary: this module finds the C++/CUDA sources, builds them once with
``torch.utils.cpp_extension`` into a cache keyed by their contents, loads the library (ops under
``torch.ops.workbench_optim``) and records which path is active and why. It knows nothing of
optimizers. Import is cheap: nothing is compiled until :func:`ensure_loaded` is first called.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["BackendState", "backend_info", "ensure_loaded", "kernel_sources_dir"]

ENV_IMPL = "WORKBENCH_OPTIM_IMPL"
"""Set to ``reference`` to force the pure-torch path (no build is attempted)."""

ENV_CACHE = "WORKBENCH_CACHE_DIR"
"""Overrides the cache root (default ``~/.cache/markovian-workbench``)."""

LIB_NAME = "workbench_optim"
# cpu_pool.cpp is no optimizer: it rides in this library (built anyway for the learner) so a
# third just-in-time build is not needed; workbench._cpu_pool uses it.
CPU_SOURCES = ("optim_cpu.cpp", "cpu_pool.cpp")
CUDA_SOURCES = ("optim_cuda.cu", "optim_cuda_ops.cpp")
HEADERS = ("optim_math.h", "optim_cpu_loops.h")
CFLAGS = ("-O3", "-fno-math-errno", "-ffp-contract=off", "-march=native", "-fopenmp")
# The optimizer loops are auto-vectorized; GCC's default of 256-bit vectors on AVX-512 parts
# left the norm pass ~1.4x slower (bench/optim.py, 2-core Xeon). Harmless without AVX-512.
OPTIM_CFLAGS = (*CFLAGS, "-mprefer-vector-width=512")
LDFLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3", "-std=c++17")


@dataclass
class BackendState:
    """What the last load attempt decided; read through :func:`backend_info`."""

    cpu: Literal["fused", "reference", "unloaded"] = "unloaded"
    cuda: Literal["fused", "reference", "unavailable", "unloaded"] = "unloaded"
    reason: str = "not built yet: the kernels are built on the first optimizer step"
    build_dir: str | None = None
    sources: list[str] = field(default_factory=list)


_STATE = BackendState()
_LOCK = threading.Lock()
_ATTEMPTED = False


def kernel_sources_dir() -> Path:
    """Directory holding ``optim_math.h`` and the drivers.

    The installed package ``workbench._kernels`` first (a wheel ships the sources there), then
    the repository's ``csrc/`` beside ``workbench/``.
    """
    try:
        root = importlib.resources.files("workbench._kernels")
        path = Path(str(root))
        if (path / HEADERS[0]).is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "csrc"


def _cuda_buildable() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    if torch.version.cuda is None:
        return False, "this torch build has no CUDA"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not (shutil.which("nvcc") or Path(CUDA_HOME, "bin", "nvcc").exists()):
        return False, "no nvcc found (set CUDA_HOME)"
    return True, ""


def _build_dir(sources: list[Path], with_cuda: bool) -> Path:
    digest = hashlib.sha256()
    for src in sorted(sources):
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    digest.update(f"{torch.__version__}|{sys.version_info[:2]}|{OPTIM_CFLAGS}|{with_cuda}".encode())
    root = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "markovian-workbench")
    return root / "kernels" / digest.hexdigest()[:16]


def _library_file(build_dir: Path) -> Path:
    return build_dir / f"{LIB_NAME}.so"


def ensure_loaded() -> bool:
    """Build (once, cached) and load the kernels; return whether the fused ops are usable.

    Thread-safe and idempotent. A failed build warns once and leaves the reference path active.
    """
    global _ATTEMPTED
    if _ATTEMPTED:
        return _STATE.cpu == "fused"
    with _LOCK:
        if _ATTEMPTED:
            return _STATE.cpu == "fused"
        try:
            _load()
        finally:
            _ATTEMPTED = True
    return _STATE.cpu == "fused"


def _load() -> None:
    forced = os.environ.get(ENV_IMPL, "").strip().lower()
    if forced == "reference":
        _STATE.cpu = "reference"
        _STATE.cuda = "reference" if torch.cuda.is_available() else "unavailable"
        _STATE.reason = f"{ENV_IMPL}=reference forces the pure-torch path"
        return
    src_dir = kernel_sources_dir()
    with_cuda, why_not = _cuda_buildable()
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    sources = [src_dir / n for n in names]
    missing = [str(s) for s in [*sources, *(src_dir / h for h in HEADERS)] if not s.is_file()]
    if missing:
        _fail(f"kernel sources missing: {', '.join(missing)}")
        return
    build_dir = _build_dir([*sources, *(src_dir / h for h in HEADERS)], with_cuda)
    _STATE.build_dir = str(build_dir)
    _STATE.sources = [str(s) for s in sources]
    if not _library_file(build_dir).exists():
        what = "CPU + CUDA" if with_cuda else "CPU"
        print(
            f"workbench.optim: building fused {what} kernels once into {build_dir}",
            file=sys.stderr,
            flush=True,
        )
    try:
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        with _process_lock(build_dir):
            _load_locked(cpp_extension, build_dir, sources, src_dir, with_cuda)
        from ._fake import register_fake_impls

        register_fake_impls()
    except Exception as exc:  # any compiler or loader failure means: use the reference path
        _fail(f"kernel build failed ({type(exc).__name__}: {str(exc).strip()[-400:]})")
        return
    _STATE.cpu = "fused"
    _STATE.cuda = (
        "fused" if with_cuda else ("unavailable" if not torch.cuda.is_available() else "reference")
    )
    _STATE.reason = "fused kernels loaded" + ("" if with_cuda else f"; CUDA: {why_not}")


@contextlib.contextmanager
def _process_lock(build_dir: Path) -> Iterator[None]:
    """Serialize builds across processes with an flock, which dies with its holder.

    torch's own build lock is a plain file that a killed build leaves behind, after which every
    later build waits on it forever. Holding our flock proves no live process is building, so
    such a leftover is stale and removed.

    ``fcntl`` is imported here, not at module top, so that ``import workbench.optim`` works
    where it does not exist (Windows): there the import fails inside :func:`_load`'s ``try``,
    and the reference path serves.
    """
    import fcntl

    with open(build_dir / "workbench.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_locked(
    cpp_extension: Any, build_dir: Path, sources: list[Path], src_dir: Path, with_cuda: bool
) -> None:
    cpp_extension.load(
        name=LIB_NAME,
        sources=[str(s) for s in sources],
        extra_cflags=[*OPTIM_CFLAGS, *(["-DWB_WITH_CUDA"] if with_cuda else [])],
        extra_cuda_cflags=list(NVCC_FLAGS),
        extra_ldflags=list(LDFLAGS),
        extra_include_paths=[str(src_dir)],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


def _fail(reason: str) -> None:
    _STATE.cpu = "reference"
    _STATE.cuda = "reference" if torch.cuda.is_available() else "unavailable"
    _STATE.reason = reason
    warnings.warn(
        f"workbench.optim: {reason}; falling back to the pure-torch reference optimizer "
        f"(correct but slower). Set {ENV_IMPL}=reference to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )


def backend_info(build: bool = False) -> dict[str, str | None]:
    """Which optimizer path is active and why, for ``workbench doctor``.

    Parameters
    ----------
    build
        Build and load the kernels first if that has not happened yet.

    Returns
    -------
    dict
        ``cpu`` and ``cuda`` (``"fused"``, ``"reference"``, ``"unavailable"`` or
        ``"unloaded"``), ``reason`` and ``build_dir``.

    Examples
    --------
    >>> sorted(backend_info())
    ['build_dir', 'cpu', 'cuda', 'reason', 'sources_dir']
    """
    if build:
        ensure_loaded()
    return {
        "cpu": _STATE.cpu,
        "cuda": _STATE.cuda,
        "reason": _STATE.reason,
        "build_dir": _STATE.build_dir,
        "sources_dir": str(kernel_sources_dir()),
    }


def _reset_for_tests() -> None:
    """Forget the last load decision (the loaded library stays loaded)."""
    global _ATTEMPTED
    with _LOCK:
        _ATTEMPTED = False
        _STATE.cpu, _STATE.cuda = "unloaded", "unloaded"
        _STATE.reason, _STATE.build_dir = "reset", None
