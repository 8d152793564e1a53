"""Exact full-vocabulary KL, reverse KL and Jensen-Shannon divergence per position.

Why rebuild logits: captures store ``final/hidden`` (T, d) and the unembedding (V, d) instead of
(T, V) logits, 40-80x smaller. At compare time we rebuild both models' logits for a chunk of
positions with one matmul each and reduce them to per-position numbers immediately, so nothing of
size T x V ever exists.

Why this formulation (precision): RL-tuned checkpoints drift by KL ~1e-4 nats, and the divergences
must match a float64 reference to 1e-3 relative there. Differences of entropy-sized float32 sums
(``H ~ 5`` nats, rounding ~1e-6) cannot resolve 1e-4, so every quantity is built from the per-entry
log-ratio, whose terms are O(drift) and vanish at zero drift:

    D = l_B - l_A              (raw float32 logits; exact by Sterbenz when close: equal rows give D = 0)
    u = D - E_A[D]             (removes the arbitrary offset between the two models' logits)
    C = log1p(E_A[expm1(u)])   (= log Z_B - log Z_A - E_A[D] without cancellation)
    r = u - C = log p_B - log p_A
    KL(P_A || P_B) = C - E_A[u]        KL(P_B || P_A) = E_B[r],   p_B s_A = exp((l_A - max) + r)
    JS = 1/2 sum [p_B (r - f(r)) - p_A f(r)],   f(r) = log((1 + e^r) / 2) = log1p(expm1(r) / 2)

Measured on a 32k vocabulary (tests/test_metrics_kl.py): max relative error vs float64 below 1.5e-4
at KL 1e-4..1e-2 for KL, JS and the log-ratio; identical rows give exactly 0.

Why it stays cheap: on CPU, element-wise passes over a (n, V) block cost about as much as a memory
copy each, and a fresh allocation of a big block costs a page fault per 4 kB. With ``V = 49,152``
the two logit matmuls are the floor, so we (1) reuse preallocated buffers (:class:`KLWorkspace`),
(2) keep A's probabilities unnormalised (``e_A = exp(l_A - max)``, ``s_A = sum e_A``) and fold the
normaliser into per-row scalars, (3) turn every weighted sum into a batched dot product (``bmm``
of a row with a row, laid out as a streaming GEMM: :func:`rowdot`), which reads its inputs once and
allocates nothing, and (4) take JS as ``(KL(P_B || P_A) - E_B[f] - E_A[f]) / 2`` (no ``r - f`` block).
Per (227, 49,152) block that is ~78 ms of CPU beside ~165 ms for one logit matmul (it was ~140 ms
before (3)'s GEMM layout and (4); docs/compare.md, Performance).

Masked vocabulary (``-inf`` logits) and log-ratios past float32's ``exp`` range (|r| > ~88) make
``C`` non-finite; those rows (rare, a handful) are recomputed in float64 by :func:`_fallback64`:
entries masked in both models contribute 0 (the log-ratio of a token masked in both is 0); where only
A is masked, B puts mass A forbids and KL(P_B || P_A) = +inf by definition (likewise KL(P_A || P_B)
where only B is masked); JS is always finite. A row holding NaN or +inf, or no finite entry, raises
:class:`NonFiniteLogits` (a :class:`DriftkitError`) naming the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from driftkit.errors import DriftkitError
from driftkit.metrics.products import rowdot
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


def rows_for_budget(vocab: int, max_rows: int, bytes_per_entry: int = 20, budget: int = 512 * 2**20) -> int:
    """Rows per logits block so that the (rows, V) buffers stay within ``budget`` bytes: 512 rows
    for a 49k vocabulary, ~100 for Gemma's 256k. Bounds memory instead of chunking the vocabulary."""
    return int(max(8, min(max_rows, budget // (bytes_per_entry * max(vocab, 1)))))


#: bytes of one float32 (rows, V) row slice the per-position kernels work on at a time, per torch
#: thread (measured per 512 x 49,152 block: 1 thread 184 ms at 2 MB, 190 at 4; 2 threads 139 ms at
#: 2 MB, 116 at 4, 122 at 8)
SLICE_BYTES = 2 * 2**20
#: thread count beyond which slices stop growing: the shared scratch (four slice-sized arrays, outside
#: LOGITS_BUDGET) stays within 4 x 16 MiB on a many-core machine
SLICE_MAX_THREADS = 8


def row_slices(n: int, vocab: int) -> list[tuple[int, int]]:
    """Row ranges of an (n, V) block for the per-position kernels: the compare engine's shared KL and
    ranks, and any analysis that runs :func:`kl_from_logits_` over blocks of its own (``logit_lens``).

    Why slice: each kernel makes 5 to 15 element-wise passes over its rows. Over a whole
    (227, 49,152) block (45 MB per array) every pass streams from memory; over 10-row slices (2 MB
    per array; the kernel's 6 arrays fit in L3, and every slice reuses the same scratch rows) the
    later passes hit cache. Measured on one core: KL 81 -> 61 ms and ranks 25 -> 15 ms per block.
    Every quantity is per row, so the numbers are the same, except that the KL kernel picks its
    formula for B's probabilities per slice rather than per block where a row has logits far below
    its maximum (masked vocabulary): the rows beside it then differ by float32 rounding."""
    step = _slice_step(vocab)
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def slice_rows(n: int, vocab: int) -> int:
    """Rows of the largest of :func:`row_slices` ``(n, vocab)`` (0 when ``n`` is 0): what the
    kernels' scratch arrays must hold, allocated once and reused by every slice."""
    return min(n, _slice_step(vocab))


def _slice_step(vocab: int) -> int:
    per_array = SLICE_BYTES * min(torch.get_num_threads(), SLICE_MAX_THREADS)
    return max(1, per_array // (4 * max(vocab, 1)))


def kl_on_row_slices(
    la: torch.Tensor,
    lb: torch.Tensor,
    next_ids: torch.Tensor | None,
    scratch: list[torch.Tensor],
    row_offset: int = 0,
) -> KLStats:
    """:func:`kl_from_logits_` over the cache-sized :func:`row_slices` of two (n, V) float32 logit
    blocks, every slice in the same ``scratch`` rows (three arrays of at least one slice's rows; a
    fourth keeps ``la`` and ``lb`` intact, as ``em_buf``, otherwise they are overwritten), the
    per-position results joined. The one driver of the sliced kernel: the compare engine's shared
    ``kl`` and ``logit_lens``'s own blocks. :class:`NonFiniteLogits` names the row plus
    ``row_offset``."""
    parts = []
    for s, e in row_slices(la.shape[0], la.shape[1]):
        d, ea, eb, *em = (b[: e - s] for b in scratch)
        ids = None if next_ids is None else next_ids[s:e]
        parts.append(kl_from_logits_(la[s:e], lb[s:e], ids, d, ea, eb, row_offset + s, em[0] if em else None))
    if len(parts) == 1:
        return parts[0]
    return KLStats(
        *(
            None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])
            for f in ("kl_forward", "kl_reverse", "js", "logratio")
        )
    )


class KLWorkspace:
    """Preallocated (n, V) float32 buffers reused across chunks (five blocks)."""

    def __init__(self, rows: int, vocab: int, device: str | torch.device = "cpu") -> None:
        self.rows, self.vocab = rows, vocab
        self._bufs = [torch.empty(rows, vocab, dtype=torch.float32, device=device) for _ in range(5)]

    def views(self, n: int) -> list[torch.Tensor]:
        if n > self.rows:
            raise ValueError(f"workspace holds {self.rows} rows, asked for {n}")
        return [b[:n] for b in self._bufs]


class NonFiniteLogits(DriftkitError):
    """A row of logits holds NaN or +inf (or no finite entry): the divergences are undefined there.

    ``row`` is the index of the offending position in the input of :func:`kl_from_logits_` or
    :func:`kl_from_hidden`; analyses translate it into a sample id and a position in the sample."""

    def __init__(self, message: str, row: int) -> None:
        super().__init__(message)
        self.row = row


def _check_rows(la: torch.Tensor, lb: torch.Tensor, rows: torch.Tensor, row_offset: int) -> None:
    """Raise :class:`NonFiniteLogits` for the first of ``rows`` (fallback rows only, few) whose logits
    cannot define a distribution."""
    for name, x in (("A", la), ("B", lb)):
        bad = torch.isnan(x).any(1) | torch.isposinf(x).any(1) | torch.isneginf(x).all(1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            row = int(rows[i]) + row_offset
            what = (
                "NaN" if bool(torch.isnan(x[i]).any()) else "+inf" if bool(torch.isposinf(x[i]).any()) else "no finite"
            )
            raise NonFiniteLogits(
                f"Model {name}'s logits at row {row} hold {what} value(s), so its next-token distribution is "
                "undefined there. The capture's final/hidden or final/unembed is corrupt or the model overflowed "
                "(float16 captures of large activations); re-capture that checkpoint in bfloat16 or float32.",
                row,
            )


def _fallback64(la: torch.Tensor, lb: torch.Tensor, ids: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """float64 divergences for the few rows the fast path cannot take: masked (-inf) entries, or a
    log-ratio beyond float32's exp range. Shared -inf entries contribute 0; B's mass where A has -inf
    makes KL(P_B||P_A) = +inf (and A's mass where B has -inf makes KL(P_A||P_B) = +inf), as the
    definition says; JS stays finite (such an entry contributes p log 2 / 2)."""
    a, b = la.double(), lb.double()
    lpa, lpb = torch.log_softmax(a, 1), torch.log_softmax(b, 1)
    na, nb = torch.isneginf(a), torch.isneginf(b)
    sup = ~na & ~nb
    zero = torch.zeros((), dtype=torch.float64)
    r = torch.where(sup, lpb - lpa, zero)
    pa, pb = lpa.exp(), lpb.exp()
    inf = torch.tensor(math.inf, dtype=torch.float64)
    kl_f = (pb * r).sum(1) + torch.where((na & ~nb).any(1), inf, zero)
    kl_r = -(pa * r).sum(1) + torch.where((nb & ~na).any(1), inf, zero)
    # f(r) = log((1 + e^r) / 2): log1p form near 0 (exact 0 at r = 0), asymptotic form for large r
    f = torch.where(r < 30, torch.log1p(torch.expm1(r.clamp(max=30)) / 2), r - LOG2 + torch.log1p(torch.exp(-r)))
    one_sided = torch.where(na & ~nb, pb, zero) + torch.where(nb & ~na, pa, zero)  # m = p / 2 there
    js = 0.5 * (pb * (r - f) - pa * f).sum(1) + 0.5 * LOG2 * one_sided.sum(1)
    lr = None
    if ids is not None:
        full = torch.where(na & nb, zero, lpb - lpa)
        lr = full.gather(1, ids.view(-1, 1).to(torch.int64)).view(-1)
    return kl_f, kl_r, js, lr


def kl_from_logits_(
    la: torch.Tensor,
    lb: torch.Tensor,
    next_ids: torch.Tensor | None = None,
    d_buf: torch.Tensor | None = None,
    ea_buf: torch.Tensor | None = None,
    eb_buf: torch.Tensor | None = None,
    row_offset: int = 0,
    em_buf: torch.Tensor | None = None,
) -> KLStats:
    """Divergences between the rows of two (n, V) float32 logit blocks. **Overwrites** ``la`` and
    ``lb`` (and the optional scratch buffers); pass clones if you need them afterwards.

    With ``em_buf`` (a fourth (n, V) float32 scratch buffer) ``la`` and ``lb`` are left intact and the
    results are bit-identical: the kernel keeps ``la - max`` nowhere and writes its last block into
    ``em_buf`` instead of ``lb``. The compare engine shares one KL pass per block this way between
    every analysis that wants it, without copying the logits (:meth:`LogitsChunk.kl`).

    Raises :class:`NonFiniteLogits` (a :class:`DriftkitError`) naming the row (plus ``row_offset``)

    Long because it is one fused kernel: every step reuses the previous step's buffers in place, which is what keeps
    it within one pass over the logits (see the module docstring).
    when a row holds NaN or +inf or has no finite entry."""
    f32 = torch.float32
    if la.dtype != f32 or lb.dtype != f32:
        la, lb = la.to(f32), lb.to(f32)
    u = torch.empty_like(la) if d_buf is None else d_buf
    ea = torch.empty_like(la) if ea_buf is None else ea_buf
    w = torch.empty_like(lb) if eb_buf is None else eb_buf
    torch.sub(lb, la, out=u)  # D on the raw logits: exact (Sterbenz) when close, so equal rows give 0
    ma = la.amax(1, keepdim=True)  # NaN propagates, the fallback check below names it
    keep = em_buf is not None  # la, lb read-only: la - ma is recomputed where needed (the same floats)
    if keep:
        torch.sub(la, ma, out=ea).exp_()
    else:
        la.sub_(ma)
        torch.exp(la, out=ea)
    sa = ea.sum(1)
    dbar = rowdot(ea, u) / sa
    u.sub_(dbar.unsqueeze(1))  # u = D - E_A[D]: removes the (arbitrary) offset between the logits
    torch.expm1(u, out=w)
    c = torch.log1p(rowdot(ea, w) / sa)  # log Z_B - log Z_A - dbar, with no cancellation
    # Rows the fast path cannot take: masked entries (D = +-inf or NaN) and log-ratios past exp's
    # range (C = inf). Their logits are kept (a few rows) before the buffers are overwritten.
    bad = (~torch.isfinite(c)).nonzero().view(-1)
    slow = None
    if bad.numel():
        la_s, lb_s = la[bad] - ma[bad] if keep else la[bad], lb[bad] - ma[bad]  # same shift (equal rows stay equal)
        _check_rows(la_s, lb[bad], bad, row_offset)
        slow = _fallback64(la_s, lb_s, next_ids[bad] if next_ids is not None else None)
    s_eu = rowdot(ea, u)
    kl_r = c - s_eu / sa  # KL(A||B) = C - E_A[u]
    r = u.sub_(c.unsqueeze(1))  # r = log p_B - log p_A (rounded once per entry, as the float64 check wants)
    logratio = None
    if next_ids is not None:
        logratio = r.gather(1, next_ids.view(-1, 1).to(torch.int64)).view(-1)
    # expm1(r) / 2 from expm1(u) with a multiply and an add instead of another expm1:
    # expm1(r) = expm1(u) e^-C + expm1(-C); exactly 0 where u = 0 and C = 0. Not one addcmul with
    # the per-row columns: broadcast over the rows it ran 3x slower on a CPU (276 vs 86 us per
    # (21, 49,152) slice at 2 threads) than the two in-place passes.
    em2 = torch.mul(w, (0.5 * torch.exp(-c)).unsqueeze(1), out=em_buf if keep else lb)
    em2.add_((0.5 * torch.expm1(-c)).unsqueeze(1))
    # p_B s_A = e_A e^r = e_A (1 + 2 em2); where e_A underflows (l_A - max < -87) that loses B's mass
    # there, so then p_B s_A = exp((l_A - max) + r) (never overflows: it is <= s_A).
    # (min(la - ma) = min(la) - ma exactly: rounding a subtraction is monotone)
    if float((la.amin(1, keepdim=True) - ma).amin() if keep else la.amin()) > -80.0:
        pb = torch.addcmul(ea, ea, em2, value=2.0, out=w)
    else:
        pb = (torch.sub(la, ma, out=w).add_(r) if keep else torch.add(la, r, out=w)).exp_()
    kl_f = rowdot(pb, r) / sa  # KL(B||A) = E_B[r]
    # JS = 1/2 sum [p_B (r - f(r)) - p_A f(r)], f(r) = log((1 + e^r) / 2) = log(m / p_A): f is O(r) and
    # vanishes at r = 0, unlike a difference of entropy-sized sums.
    f = em2.log1p_()
    js = 0.5 * (kl_f - (rowdot(pb, f) + rowdot(ea, f)) / sa)
    if slow is not None:
        for t, v in zip((kl_f, kl_r, js, logratio), slow):
            if t is not None and v is not None:
                t[bad] = v.to(f32)
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
    ws = (
        workspace
        if workspace is not None and workspace.vocab == vocab
        else KLWorkspace(min(chunk, max(n, 1)), vocab, h_a.device)
    )
    step = ws.rows
    parts: list[KLStats] = []
    for s in range(0, n, step):
        e = min(n, s + step)
        la, lb, d_buf, ea, eb = ws.views(e - s)
        logits_into(un_a, h_a[s:e].to(torch.float32), la)
        logits_into(un_b, h_b[s:e].to(torch.float32), lb)
        ids = next_ids[s:e] if next_ids is not None else None
        parts.append(kl_from_logits_(la, lb, ids, d_buf, ea, eb, row_offset=s))
    if not parts:
        empty = torch.zeros(0)
        return KLStats(empty, empty, empty, empty if next_ids is not None else None)
    return KLStats(
        torch.cat([p.kl_forward for p in parts]),
        torch.cat([p.kl_reverse for p in parts]),
        torch.cat([p.js for p in parts]),
        torch.cat([p.logratio for p in parts]) if next_ids is not None else None,  # type: ignore[misc]
    )
