"""Just-in-time build of the GGUF dequantization kernel ``csrc/dequant_cpu.cpp`` (ops under
``torch.ops.workbench_dequant``), and the one call the loader makes into it.

The build is the fused optimizers' (``workbench.optim._build``, used read-only): sources found
beside theirs, built once with ``torch.utils.cpp_extension`` into a cache keyed by the source and
flags, an flock against concurrent builds. Without a compiler (or with
``WORKBENCH_DEQUANT_IMPL=reference``) :func:`ensure_loaded` says no, once, and the loader decodes
with the numpy/torch ports of ``gguf_quants``, which give the same bits. Nothing is compiled
until the first quantized GGUF tensor is decoded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from workbench.optim._build import CFLAGS, ENV_CACHE, _process_lock, kernel_sources_dir

__all__ = ["ENV_IMPL", "KERNEL_TYPES", "dequantize_many", "ensure_loaded", "kernel_state"]

ENV_IMPL = "WORKBENCH_DEQUANT_IMPL"
"""Set to ``reference`` to force the numpy/torch ports (no build is attempted)."""

LIB_NAME = "workbench_dequant"
SOURCE = "dequant_cpu.cpp"
# The kernel runs its own threads (std::thread), so no OpenMP.
FLAGS = tuple(f for f in CFLAGS if f != "-fopenmp")
# ggml type ids the kernel decodes (the same set as gguf_quants.QUANTIZED).
KERNEL_TYPES = frozenset({2, 3, 6, 7, 8, 10, 11, 12, 13, 14})

_LOCK = threading.Lock()
_STATE: dict[str, str | None] = {"impl": None, "reason": "not built yet"}


def kernel_state() -> dict[str, str | None]:
    """``impl`` ("kernel", "reference" or None before the first load) and ``reason``."""
    return dict(_STATE)


def ensure_loaded() -> bool:
    """Build (once, cached) and load the kernel; return whether it is usable. Thread-safe."""
    if _STATE["impl"] is None:
        with _LOCK:
            if _STATE["impl"] is None:
                impl, reason = _load()
                _STATE.update(impl=impl, reason=reason)
                if impl != "kernel" and not reason.startswith(ENV_IMPL):
                    warnings.warn(
                        f"workbench.formats: {reason}; GGUF blocks are decoded by the numpy/torch "
                        f"ports (same values, slower). Set {ENV_IMPL}=reference to silence this.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    return _STATE["impl"] == "kernel"


def _load() -> tuple[str, str]:
    if os.environ.get(ENV_IMPL, "").strip().lower() == "reference":
        return "reference", f"{ENV_IMPL}=reference forces the numpy/torch ports"
    source = kernel_sources_dir() / SOURCE
    if not source.is_file():
        return "reference", f"dequantization kernel source missing: {source}"
    key = hashlib.sha256(source.read_bytes())
    key.update(f"{torch.__version__}|{sys.version_info[:2]}|{FLAGS}".encode())
    root = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "markovian-workbench")
    build_dir = root / "kernels" / f"dequant-{key.hexdigest()[:16]}"
    library, built = build_dir / f"{LIB_NAME}.so", build_dir / "built"
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        with _process_lock(build_dir):
            # The directory is named by the source and flags, so a library there that a build
            # finished (``built`` holds its size) is this one: loaded directly it costs a
            # millisecond, against ~0.3 s to import cpp_extension and run its ninja check,
            # paid by the first GGUF load of every process. Anything else is linked again: a
            # library cut short by a killed build crashes the process that loads it (SIGBUS).
            size = str(library.stat().st_size) if library.is_file() else None
            if built.is_file() and built.read_text() == size:
                torch.ops.load_library(str(library))
                return "kernel", "GGUF dequantization kernel loaded"
            library.unlink(missing_ok=True)
            from torch.utils import cpp_extension

            # logged, not printed: a notebook shows stderr as an error box under the cell
            logging.getLogger(__name__).info("building the GGUF kernel once into %s", build_dir)
            cpp_extension.load(
                name=LIB_NAME,
                sources=[str(source)],
                extra_cflags=list(FLAGS),
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
            built.write_text(str(library.stat().st_size))
    except Exception as exc:  # any compiler or loader failure means: use the ports
        return "reference", f"GGUF kernel build failed ({type(exc).__name__}: {exc!s:.300})"
    return "kernel", "GGUF dequantization kernel loaded"


def dequantize_many(
    raws: Sequence[Tensor],
    types: Sequence[int],
    outs: Sequence[Tensor],
    rows: Sequence[Tensor | None],
    threads: int | None = None,
) -> list[int]:
    """Decode ``raws[i]`` (uint8 bytes of one tensor of ggml type ``types[i]``) into ``outs[i]``.

    ``outs`` are contiguous float32 or bfloat16 tensors (all one dtype) of the decoded size;
    ``rows[i]``, when given, is the int64 order to take the tensor's rows in (output row ``r``
    is the file's row ``rows[i][r]``). Returns, per tensor, how many blocks have a NaN or Inf
    scale (those decode to non-finite values). ``threads``: default ``torch.get_num_threads()``.
    The kernel must be loaded (:func:`ensure_loaded`).
    """
    n = torch.get_num_threads() if threads is None else threads
    counts = torch.ops.workbench_dequant.dequantize_many_(
        list(raws), list(types), list(outs), list(rows), n
    )
    return [int(c) for c in counts.tolist()]


def _reset_for_tests(impl: str | None = None) -> None:
    """Forget the load decision, or force ``impl`` (the loaded library stays loaded)."""
    with _LOCK:
        _STATE.update(impl=impl, reason="reset")
