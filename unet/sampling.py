"""Samples of a folder: a few of many files, spread over all of them."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def spread(items: Sequence[T], n: int) -> list[T]:
    """Up to `n` of `items`, every (len // n)-th from the first: in a sorted folder that is
    every car or slide, not the first few."""
    step = max(1, len(items) // n)
    return list(items)[::step][:n]
