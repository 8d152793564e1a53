"""Batching by a token budget over length-sorted samples.

Why: padding is wasted compute. Sorting by length makes neighbours similar in length, and sizing
each batch so ``rows x longest`` stays under ``max_batch_tokens`` keeps memory flat whatever the
prompt lengths. The file order is restored by the writer (samples are written to their own rows).
"""
from __future__ import annotations

from typing import Sequence


def token_budget_batches(lengths: Sequence[int], todo: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group sample indices ``todo`` into batches with ``len(batch) * max_len <= max_batch_tokens``
    (a single sample longer than the budget gets a batch of its own), longest first."""
    order = sorted(todo, key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        L = lengths[i]
        new_max = max(cur_max, L)
        if cur and new_max * (len(cur) + 1) > max_batch_tokens:
            batches.append(cur)
            cur, new_max = [], L
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches
