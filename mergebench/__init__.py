"""mergebench: stream-merge LLM finetunes and LoRA adapters in bounded memory.

Python hooks for quick evaluation (transformers is imported only when they run):

    import mergebench
    scores = mergebench.evaluate("./merged", "eval/add.jsonl", device="auto")
    mergebench.register_evaluator("my_metric", fn)   # fn(model, tokenizer, records, device) -> float
"""

from __future__ import annotations

from mergebench.quickeval import evaluate, evaluate_models, format_table, register_evaluator
from mergebench.version import __version__

__all__ = ["__version__", "evaluate", "evaluate_models", "format_table", "register_evaluator"]
