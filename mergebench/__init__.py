"""mergebench: stream-merge LLM finetunes and LoRA adapters in bounded memory."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
