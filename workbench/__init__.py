"""markovian-workbench: teach a small language model while using it.

The core library (everything here but ``workbench.widgets`` and ``workbench.mcp``) never imports
widget, plotting or MCP code.
"""

from __future__ import annotations

from workbench.learner import LearnerError, LearningConfig, OnlineLearner, TrainingExample
from workbench.models import ModelConfig, Transformer
from workbench.tokenizers import ByteTokenizer, Tokenizer, gpt2_tokenizer

__version__ = "0.1.0"

__all__ = [
    "ByteTokenizer",
    "LearnerError",
    "LearningConfig",
    "ModelConfig",
    "OnlineLearner",
    "Tokenizer",
    "TrainingExample",
    "Transformer",
    "__version__",
    "gpt2_tokenizer",
]
