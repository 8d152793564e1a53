"""Token ranks without sorting, URIAL shift buckets and the paper's rank shift.

Why no sort: the rank of one token in a distribution is ``1 + #(entries with a larger logit)``, a
single comparison pass over the vocabulary (O(V) per position) instead of an O(V log V) sort; ties
share the better rank, which is what "how many tokens did the model prefer over this one" means.

URIAL (Lin et al. 2023, "The Unlocking Spell on Base LLMs"): at each response position take the
tuned model B's top token and look up its rank under the base model A: rank 1 = *unshifted*,
2-3 = *marginal*, > 3 = *shifted*. Huan et al. 2025 add the rank shift of the realised token
``rank_A(y_t) - rank_B(y_t)``: positive when tuning promoted the token that was actually produced,
and the rank shift of B's top token ``rank_A(top_B) - 1``.

Ties, independent of vocabulary order: ranks are "min" ranks (``1 + #strictly greater``), so tied
tokens share the better rank. When B has several tied top tokens, B's "top token" is the one A ranks
best among them (the highest A logit over B's maxima; if A ties too, the lowest id, which only
decides which string is listed). A position's URIAL bucket and ``rank_A(top_B)`` therefore do not
change when the vocabulary is permuted; ``argmax`` alone would pick the lowest token id.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

#: URIAL bucket names in order, with their rank ranges (inclusive)
BUCKETS = ("unshifted", "marginal", "shifted")


def rank_of(logits: torch.Tensor, ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) int64 rank of ``ids[i]`` in row ``i`` of ``logits`` (1 = the argmax).

    ``out`` is an optional (n, V) scratch buffer reused across calls (avoids page faults): bool, or
    float32, which counts ~10x faster (a float sum is vectorised, a bool sum casts entry by entry) and
    exactly (0/1 partial sums stay integers below 2^24).
    """
    thr = logits.gather(1, ids.view(-1, 1).to(torch.int64))
    if out is None:
        greater = logits > thr
    else:
        greater = torch.gt(logits, thr, out=out[: logits.shape[0]])
        if greater.dtype == torch.float32:
            return greater.sum(1).to(torch.int64) + 1
    return greater.sum(1) + 1


def urial_bucket(rank: torch.Tensor) -> torch.Tensor:
    """Bucket index per position: 0 unshifted (rank 1), 1 marginal (2-3), 2 shifted (> 3)."""
    return (rank > 1).to(torch.int64) + (rank > 3).to(torch.int64)


@dataclass
class RankStats:
    """Per-position rank quantities for one chunk (all (n,) int64)."""

    top_b: torch.Tensor  # B's top token (among tied maxima: the one A ranks best)
    rank_a_of_top_b: torch.Tensor  # its rank under A (URIAL)
    rank_a: torch.Tensor | None  # rank of the realised next token under A
    rank_b: torch.Tensor | None  # ... and under B


@functools.lru_cache(maxsize=2)
def _id_columns(vocab: int) -> torch.Tensor:
    """The (2, V) float32 rows ``[id, 1]`` of :func:`_top_and_ties` (made once per vocabulary size:
    the kernels run on small row slices, and rebuilding them per slice showed in the profile)."""
    return torch.stack([torch.arange(vocab, dtype=torch.float32), torch.ones(vocab)])


def _top_and_ties(logits: torch.Tensor, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the maximum (n, 1), the id of the maximal entry (n,) and how many entries tie at it (n,).

    Why not ``argmax``: on CPU ``argmax``/``max(dim)`` run ~4x slower than ``amax`` (9.4 vs 2.3 ms on a
    (227, 49,152) float32 block). Instead one comparison pass writes the 0/1 indicator of the maxima and
    one small matrix product with the columns ``[id, 1]`` gives, per row, the sum of the maximal ids and
    their count: the id itself when the maximum is unique (exact in float32: one integer below 2^24;
    counts are 0/1 partial sums below 2^24). Rows with a tie or no maximum (NaN) are fixed by the caller."""
    vocab = logits.shape[1]
    top_val = logits.amax(1, keepdim=True)
    is_max = torch.eq(logits, top_val, out=scratch)
    # (2, V) then transposed: the product streams the indicator once (a (V, 2) layout runs 3x slower)
    cols = _id_columns(vocab)
    id_sum, count = torch.mm(is_max, cols.T).unbind(1)
    return top_val, id_sum.to(torch.int64), count.to(torch.int64)


def rank_stats(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    next_ids: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> RankStats:
    """Rank quantities between two (n, V) logit blocks of the same positions (not modified);
    ``scratch``: an (n, V) float32 buffer reused across calls (one is allocated when not given)."""
    n, vocab = logits_b.shape
    if scratch is None or scratch.dtype != torch.float32:
        scratch = torch.empty(n, vocab, dtype=torch.float32)
    if vocab < 2**24:
        top_val, top_b, count = _top_and_ties(logits_b, scratch[:n])
        odd = (count != 1).nonzero().view(-1)
    else:  # float32 cannot hold such ids exactly: plain argmax, ties found by counting
        top_val, top_b = logits_b.amax(1, keepdim=True), logits_b.argmax(1)
        odd = (torch.eq(logits_b, top_val, out=scratch[:n]).sum(1) != 1).nonzero().view(-1)
    rank_top = rank_of(logits_a, top_b.clamp_(0, vocab - 1), scratch)
    # Rows where B's maximum is tied (rare): take the tied token A ranks best. Only those rows are
    # re-examined, so no (n, V) float temporary is made for the common untied case. A row without a
    # maximum (NaN logits) keeps argmax's answer.
    if odd.numel():
        top_b[odd] = logits_b[odd].argmax(1)
        tied = odd[(logits_b[odd] == top_val[odd]).sum(1) > 1]
        cand = logits_a[tied].masked_fill(logits_b[tied] != top_val[tied], float("-inf"))
        top_b[tied] = cand.argmax(1)
        rank_top[odd] = rank_of(logits_a[odd], top_b[odd])
        rank_top[tied] = (logits_a[tied] > cand.amax(1, keepdim=True)).sum(1) + 1
    if next_ids is None:
        return RankStats(top_b, rank_top, None, None)
    return RankStats(top_b, rank_top, rank_of(logits_a, next_ids, scratch), rank_of(logits_b, next_ids, scratch))
