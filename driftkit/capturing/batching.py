"""Batching by a token budget over length-sorted samples.

Why: padding is wasted compute. Sorting by length makes neighbours similar in length, and sizing
each batch so ``rows x longest`` stays under ``max_batch_tokens`` keeps memory flat whatever the
prompt lengths. The token budget alone still pads a lot when lengths are short and spread out: on
the bundled general-mix prompts (7-27 tokens) three 4096-token batches held 24% padding, computed
by every layer and by the V-wide ``lm_head``. A batch is therefore also closed once its padding
would exceed ``max_padding`` of its padded size (unless it is still smaller than
``min_batch_tokens``, where one more trace could cost more than the padding saves): a batch of a few
hundred tokens already keeps the matrix units busy, and smaller batches also keep the (B, S, V)
logits small.
The file order is restored by the writer (samples are written to their own rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: largest share of a batch's padded tokens that may be padding (once the batch is big enough)
MAX_PADDING = 0.05
#: batches below this many padded tokens are not closed for padding
MIN_BATCH_TOKENS = 256


def token_budget_batches(
    lengths: Sequence[int],
    todo: Sequence[int],
    max_batch_tokens: int,
    max_padding: float = MAX_PADDING,
    min_batch_tokens: int = MIN_BATCH_TOKENS,
) -> list[list[int]]:
    """Group sample indices ``todo`` into batches with ``len(batch) * max_len <= max_batch_tokens``
    (a single sample longer than the budget gets a batch of its own), longest first; a batch is also
    closed when adding the next sample would make more than ``max_padding`` of it padding and it holds
    at least ``min_batch_tokens`` padded tokens already."""
    order = sorted(todo, key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    real = 0
    for i in order:
        L = lengths[i]
        new_max = max(cur_max, L)
        padded = new_max * (len(cur) + 1)
        too_big = padded > max_batch_tokens
        too_padded = padded - (real + L) > max_padding * padded and cur_max * len(cur) >= min_batch_tokens
        if cur and (too_big or too_padded):
            batches.append(cur)
            cur, new_max, real = [], L, 0
        cur.append(i)
        cur_max = new_max
        real += L
    if cur:
        batches.append(cur)
    return batches


def padded_batch(tokens: Sequence[Sequence[int]], idx: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the samples ``idx`` right-padded to the longest: what the
    capture feeds the model, and what a plain forward over the same batches must feed it too."""
    longest = max(len(tokens[i]) for i in idx)
    ids = torch.full((len(idx), longest), pad_id, dtype=torch.long)
    attn = torch.zeros((len(idx), longest), dtype=torch.long)
    for r, i in enumerate(idx):
        ids[r, : len(tokens[i])] = torch.as_tensor(tokens[i], dtype=torch.long)
        attn[r, : len(tokens[i])] = 1
    return ids, attn
