"""mergebench: stream-merge LLM finetunes and LoRA adapters in bounded memory.

Merging from Python (torch is imported on first use)::

    import mergebench
    result = mergebench.merge("recipe.yaml", "./merged", device="cpu")   # or a dict / MergeConfig
    print(result.path, result.merged, result.seconds)
    plan = mergebench.plan({"merge_method": "linear", "models": [...]})  # headers only: what would happen

Python hooks for quick evaluation (transformers is imported only when they run):

    import mergebench
    scores = mergebench.evaluate("./merged", "eval/add.jsonl", device="auto")
    mergebench.register_evaluator("my_metric", fn)   # fn(model, tokenizer, records, device) -> float
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergebench.quickeval import evaluate, evaluate_models, format_table, register_evaluator
from mergebench.version import __version__

if TYPE_CHECKING:
    from mergebench.pipeline import MergeResult
    from mergebench.planner import MergePlan

__all__ = [
    "__version__",
    "evaluate",
    "evaluate_models",
    "format_table",
    "merge",
    "plan",
    "register_evaluator",
]


def merge(config, out_dir, **options) -> MergeResult:
    """Merge ``config`` (YAML path, mapping or MergeConfig) into ``out_dir``; see ``mergebench.pipeline.merge``."""
    from mergebench.pipeline import merge as run

    return run(config, out_dir, **options)


def plan(config, *, allow_pickle: bool = False) -> MergePlan:
    """The validated plan of ``config`` from headers alone; see ``mergebench.pipeline.plan``."""
    from mergebench.pipeline import plan as make_plan

    return make_plan(config, allow_pickle=allow_pickle)
