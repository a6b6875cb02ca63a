"""markovian-workbench: teach a small language model while using it.

The core library (everything here but ``workbench.widgets`` and ``workbench.mcp``) never imports
widget, plotting or MCP code.
"""

from __future__ import annotations

from workbench.models import ModelConfig, Transformer

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Transformer", "__version__"]
