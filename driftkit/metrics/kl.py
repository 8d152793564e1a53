"""Exact full-vocabulary KL, reverse KL and Jensen-Shannon divergence per position.

Why rebuild logits: captures store ``final/hidden`` (T, d) and the unembedding (V, d) instead of
(T, V) logits, 40-80x smaller. At compare time we rebuild both models' logits for a chunk of
positions with one matmul each and reduce them to per-position numbers immediately, so nothing of
size T x V ever exists.

Why the odd formulation: on CPU, element-wise passes over a (n, V) block cost about as much as a
memory copy each, and a fresh allocation of a big block costs a page fault per 4 kB. With
``V = 49,152`` the two logit matmuls are the floor, so the reductions must cost less than one more
matmul. We therefore (1) reuse preallocated buffers (:class:`KLWorkspace`), (2) keep the logits
*unnormalised* (``e = exp(l - max)`` and ``s = sum e``) and fold the normalisers into per-row
scalars, and (3) turn every weighted sum into a batched dot product (``bmm`` of a row with a row),
which reads its inputs once and allocates nothing. With ``c = log s_B - log s_A`` and
``D = (l_B - max_B) - (l_A - max_A)`` the log-ratio is ``log p_B - log p_A = D - c``, hence::

    KL(P_B || P_A) = <e_B, D> / s_B - c          KL(P_A || P_B) = c - <e_A, D> / s_A
    JS = 1/2 (sum p_A log p_A + sum p_B log p_B) - 1/2 sum m log m + log 2,   m = p_A + p_B

(``sum m = 2``), and ``sum p_A log p_A + sum p_B log p_B = sum m log p_A + KL(P_B || P_A)``. ``D`` is formed element-wise before any reduction, so KL keeps full float32
precision even when the two models' logits differ by a large constant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from driftkit.store.reader import Unembedding, apply_final_transform

LOG2 = math.log(2.0)


@dataclass
class KLStats:
    """Per-position divergences (all (n,) float32 tensors)."""

    kl_forward: torch.Tensor  # KL(P_B || P_A): tuned from base, the paper's direction
    kl_reverse: torch.Tensor  # KL(P_A || P_B)
    js: torch.Tensor  # Jensen-Shannon divergence (natural log, in [0, log 2])
    logratio: torch.Tensor | None  # log p_B(y) - log p_A(y) for the next token y, when given


def logits_into(un: Unembedding, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``hidden @ W.T (+ bias)`` then scale/softcap, written into ``out`` (no temporary blocks)."""
    torch.mm(hidden, un.weight.T, out=out)
    if un.bias is not None:
        out.add_(un.bias)
    if un.scale is not None or un.softcap is not None:
        out.copy_(apply_final_transform(out, un.softcap, un.scale))
    return out


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (n, V) blocks without an (n, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def rows_for_budget(vocab: int, max_rows: int, bytes_per_entry: int = 20, budget: int = 512 * 2**20) -> int:
    """Rows per logits block so that the (rows, V) buffers stay within ``budget`` bytes: 512 rows
    for a 49k vocabulary, ~100 for Gemma's 256k. Bounds memory instead of chunking the vocabulary."""
    return int(max(8, min(max_rows, budget // (bytes_per_entry * max(vocab, 1)))))


class KLWorkspace:
    """Preallocated (n, V) float32 buffers reused across chunks (five blocks)."""

    def __init__(self, rows: int, vocab: int, device: str | torch.device = "cpu") -> None:
        self.rows, self.vocab = rows, vocab
        self._bufs = [torch.empty(rows, vocab, dtype=torch.float32, device=device) for _ in range(5)]

    def views(self, n: int) -> list[torch.Tensor]:
        if n > self.rows:
            raise ValueError(f"workspace holds {self.rows} rows, asked for {n}")
        return [b[:n] for b in self._bufs]


def kl_from_logits_(la: torch.Tensor, lb: torch.Tensor, next_ids: torch.Tensor | None = None,
                    d_buf: torch.Tensor | None = None, ea_buf: torch.Tensor | None = None,
                    eb_buf: torch.Tensor | None = None) -> KLStats:
    """Divergences between the rows of two (n, V) float32 logit blocks. **Overwrites** ``la`` and
    ``lb`` (and the optional scratch buffers); pass clones if you need them afterwards."""
    d_buf = torch.empty_like(la) if d_buf is None else d_buf
    ea = torch.empty_like(la) if ea_buf is None else ea_buf
    eb = torch.empty_like(lb) if eb_buf is None else eb_buf
    la.sub_(la.amax(1, keepdim=True))  # shifted logits (<= 0): exp cannot overflow
    lb.sub_(lb.amax(1, keepdim=True))
    torch.sub(lb, la, out=d_buf)  # D
    torch.exp(la, out=ea)
    torch.exp(lb, out=eb)
    sa = ea.sum(1)  # torch sums in cascaded blocks: float32 is accurate to ~1e-7 relative here
    sb = eb.sum(1)
    log_sa, log_sb = sa.log(), sb.log()
    c = log_sb - log_sa
    kl_f = rowdot(eb, d_buf) / sb - c
    kl_r = c - rowdot(ea, d_buf) / sa
    logratio = None
    if next_ids is not None:
        logratio = d_buf.gather(1, next_ids.view(-1, 1).to(torch.int64)).view(-1) - c
    m = torch.mul(ea, (1.0 / sa).unsqueeze(1), out=d_buf)  # p_A (D no longer needed)
    m.addcmul_(eb, (1.0 / sb).unsqueeze(1))  # m = p_A + p_B
    # sum p_A log p_A + sum p_B log p_B = sum m log p_A + KL(P_B||P_A): one dot product instead of two
    neg_h = rowdot(m, la) - 2.0 * log_sa + kl_f
    # 0 log 0 = 0 where both probabilities underflow: clamping to the smallest normal float gives a
    # finite log whose product with ~0 vanishes (xlogy does the same but is 4x slower on CPU).
    logm = torch.log(m.clamp_min_(torch.finfo(torch.float32).tiny), out=ea)
    mlogm = rowdot(m, logm)
    js = 0.5 * neg_h - 0.5 * mlogm + LOG2
    # Guard rounding just below zero (divergences are non-negative by definition).
    return KLStats(kl_f.clamp_min_(0.0), kl_r.clamp_min_(0.0), js.clamp_min_(0.0), logratio)


def kl_from_hidden(
    h_a: torch.Tensor,
    h_b: torch.Tensor,
    un_a: Unembedding,
    un_b: Unembedding,
    next_ids: torch.Tensor | None = None,
    workspace: KLWorkspace | None = None,
    chunk: int = 512,
) -> KLStats:
    """Exact divergences between two models' next-token distributions at the same positions.

    ``h_a``/``h_b`` are (n, d) final hidden states (input of ``lm_head``); logits are rebuilt in
    chunks of ``chunk`` rows. Pass a :class:`KLWorkspace` to reuse buffers across calls.
    """
    if h_a.shape[0] != h_b.shape[0]:
        raise ValueError(f"KL needs matching positions, got {h_a.shape[0]} and {h_b.shape[0]}")
    n = h_a.shape[0]
    vocab = un_a.weight.shape[0]
    if un_b.weight.shape[0] != vocab:
        raise ValueError(f"vocabularies differ: {vocab} vs {un_b.weight.shape[0]}")
    ws = workspace if workspace is not None and workspace.vocab == vocab else KLWorkspace(min(chunk, max(n, 1)), vocab, h_a.device)
    step = ws.rows
    parts: list[KLStats] = []
    for s in range(0, n, step):
        e = min(n, s + step)
        la, lb, d_buf, ea, eb = ws.views(e - s)
        logits_into(un_a, h_a[s:e].to(torch.float32), la)
        logits_into(un_b, h_b[s:e].to(torch.float32), lb)
        ids = next_ids[s:e] if next_ids is not None else None
        parts.append(kl_from_logits_(la, lb, ids, d_buf, ea, eb))
    if not parts:
        empty = torch.zeros(0)
        return KLStats(empty, empty, empty, empty if next_ids is not None else None)
    return KLStats(
        torch.cat([p.kl_forward for p in parts]),
        torch.cat([p.kl_reverse for p in parts]),
        torch.cat([p.js for p in parts]),
        torch.cat([p.logratio for p in parts]) if next_ids is not None else None,  # type: ignore[misc]
    )
