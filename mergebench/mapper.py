"""How independent pieces of work run: a ``Mapper`` is ``map(function, items)`` returning
``[function(item) for item in items]`` in items' order, however it computed them.

Code that receives one (a stats step's slices, a tensor's read ranges) stays correct on one thread;
the executor hands out mappers backed by its idle threads, so large pieces of work spread over the
cores without the code that describes them knowing about threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Item, Result = TypeVar("Item"), TypeVar("Result")
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def in_order(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """The sequential ``Mapper``: each item in turn, on the calling thread."""
    return [function(item) for item in items]


def spans(numel: int, step: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) pieces of ``step`` entries (the last one shorter) covering ``numel``."""
    return [(start, min(start + step, numel)) for start in range(0, numel, step)]
