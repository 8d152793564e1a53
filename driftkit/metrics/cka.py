"""Streaming linear CKA (biased and debiased) in feature space.

Why feature space: the textbook CKA builds two N x N Gram matrices, which for a capture of 200,000
tokens would need 320 GB. Linear CKA only needs cross-covariances, so we accumulate d x d matrices
over token chunks and never hold more than one chunk: memory O(d^2), independent of N, one pass.

Why per-chunk centring with exact merging (Chan et al. 1979): LLM residual streams have a few
"massive activation" dimensions whose mean is hundreds or thousands of times their spread, and
attention-sink rows far out of the bulk. Accumulating raw ``sum x x^T`` and subtracting
``n * mean mean^T`` at the end cancels catastrophically, and so does a pilot mean taken from a first
chunk that happens to hold a sink row (measured: 5.6e-6 off in debiased CKA). Instead each chunk's
sums are taken about *its own* mean in float64, and merged into the running sums by re-centring both
sets exactly to the combined mean: with ``delta`` = (a set's mean) - (combined mean), every
accumulator has a closed shift formula (:func:`_shift`), because a set's centred rows sum to zero.
The final sums are then about the exact overall mean and no final centring is needed.

Why float32 products at small drift (:func:`difference_products`): the three d x d products are
most of a chunk's cost. Taken as ``X^T X``, ``X^T D`` and ``D^T D`` for the drift ``D = Y - X``,
float32's error in them reaches CKA only times ``(|D| / |X|)^2``, the order of ``1 - CKA``, so
``1 - CKA`` stays right to a millionth of itself (measured: at most 5e-7 of it; float64 products
do better still, 1e-15 absolute) where RL checkpoints drift least, at about 60% of the time of
float64 products. Large drift, chunks ruled by one long row, and the standardized measures
(:mod:`driftkit.metrics.similarity`) take float64 products.

Debiased CKA uses the unbiased HSIC estimator (Song et al. 2012) in the feature-space form of
Kornblith et al. 2019 / Nguyen et al. 2021::

    hsic_u(X, Y) ~ ||Xc^T Yc||_F^2 - n/(n-2) * sum_i |xc_i|^2 |yc_i|^2 + |Xc|_F^2 |Yc|_F^2 / ((n-1)(n-2))

(up to the factor 1/(n(n-3)), which cancels in the ratio). ``sum_i |xc_i|^2 |yc_i|^2`` involves
the *final* centered rows, which a one-pass algorithm never sees; each chunk keeps it about its own
mean and the merge re-centres it exactly (see :meth:`_Stats._shift`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from driftkit.metrics.products import gram, rowdot
from driftkit.store.buffers import ChunkBuffers

_F64 = torch.float64


@dataclass(frozen=True)
class CKAResult:
    """Linear CKA of two representations of the same ``n`` rows."""

    linear_cka: float
    debiased_cka: float
    n: int


def _norm_product_shift(
    ab: torch.Tensor,
    a1: torch.Tensor,
    b1: torch.Tensor,
    qy: torch.Tensor,
    qx: torch.Tensor,
    cross: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
    nx: torch.Tensor,
    ny: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """``sum |x_i + dx|^2 |y_i + dy|^2`` from sums about the mean (``sum x_i = sum y_i = 0``): with
    ``a = |x|^2``, ``alpha = x.dx`` (and ``b``, ``beta`` for y), the product
    ``(a + 2 alpha + |dx|^2)(b + 2 beta + |dy|^2)`` sums to the terms below (``cross = dx^T Sxy dy``)."""
    return ab + 2 * (dy @ qy) + 2 * (dx @ qx) + 4 * cross + ny * a1 + nx * b1 + n * nx * ny


_SCRATCH = threading.local()
#: largest centred chunk kept for reuse (bytes); larger chunks get a fresh allocation
_SCRATCH_MAX = 64 * 2**20


def _scratch(slot: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A reusable buffer shaped like ``like`` (of ``dtype``, default ``like``'s) for the chunk's centred
    rows (``slot`` 0: x, 1: y; 2, 3: the float32 copies of :func:`difference_products`), or a
    fresh tensor when ``like`` is larger than :data:`_SCRATCH_MAX` (a thread's
    :class:`~driftkit.store.buffers.ChunkBuffers`).

    Why: centring a 4096 x 576 float64 chunk into a fresh tensor took 9.3 ms, into a reused buffer
    0.9 ms; the difference is the page faults of a new 19 MB block on every chunk (the allocator
    returns blocks that large to the system). Per thread, so ``--jobs`` workers and threads each
    have their own; the buffers live as long as the thread (at most 4 x 64 MB; 57 MB for a
    4,096 x 576 chunk)."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = ChunkBuffers(max_bytes=_SCRATCH_MAX)
    return bufs.take(str(slot), tuple(like.shape), dtype or like.dtype, like.device)


#: largest ``|D|_F^2 / |X|_F^2`` (``D = Y - X``, rows centred) of a chunk whose d x d products are
#: float32 difference products (:func:`difference_products`); larger drift takes float64 products
DIFFERENCE_MAX = 0.25


def _float32_products_exact(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` run in IEEE float32. Under
    ``torch.set_float32_matmul_precision("high" / "medium")`` (TF32 on CUDA, bf16 on oneDNN CPUs)
    a product keeps ~3 significant digits, too few for :func:`difference_products`."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    if device.type == "cuda":
        return not torch.backends.cuda.matmul.allow_tf32
    return device.type != "cpu" or torch.backends.mkldnn.matmul.fp32_precision in ("none", "ieee")


def difference_products(
    x: torch.Tensor, y: torch.Tensor, a1: torch.Tensor, b1: torch.Tensor, aa: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(X^T X, X^T Y, Y^T Y)`` (float64) of a chunk's centred float64 rows from float32 products of
    ``X`` and the drift ``D = Y - X``, or None where that would not be precise enough (then take them
    in float64). ``a1 = |X|_F^2``, ``b1 = |Y|_F^2`` and ``aa = sum_i |x_i|^4`` are the chunk's float64
    row-norm sums. **Overwrites** ``y`` with ``D`` when it returns the products.

    With ``S = X^T X``, ``M = X^T D`` and ``G = D^T D``, each a float32 product (summed in float64):
    ``X^T Y = S + M`` and ``Y^T Y = S + (M + M^T) + G``.

    Why float32 is enough: CKA is 1 at ``Y = X`` and at most 1 around it, and in this form the
    first-order effect of an error in ``S`` (symmetric) or ``M`` cancels between ``X^T Y`` and
    ``Y^T Y``, at ``D = 0`` and to first order in ``D`` (likewise for debiased CKA, whose row-norm
    sums stay float64). What is left is float32's relative precision times ``(|D| / |X|)^2``, the
    order of ``1 - CKA`` itself, so the error is smallest where RL checkpoints drift least. Two
    float32 products of ``X`` and ``Y`` would not cancel: they err by ~1e-7 of CKA whatever the drift.
    Measured against float64 products: on real SmolLM2-135M layers (9,002 tokens) 1e-14 to 8e-12
    off at ``1 - CKA`` ~ 3e-5..4e-4 (at most 5e-8 of ``1 - CKA``); on synthetic residual-like rows
    (tests/test_metrics_cka.py) at most 5e-7 of ``1 - CKA``.

    Where not (None):
    - ``|D|_F^2 > DIFFERENCE_MAX |X|_F^2``: the error grows with the drift (4e-8 of CKA at
      ``|D|^2 = 2 |X|^2``), and large drift has nothing small to protect;
    - a few long rows (an attention sink far out of the bulk) make up over half of ``|S|_F^2``:
      debiased CKA subtracts the rows' own terms (``aa``) from ``|S|_F^2``, and float32's error in
      ``S`` swamps what is left (one row 3,000x the spread: 1 - debiased CKA 16% off);
    - float32 products that are not IEEE float32 (:func:`_float32_products_exact`), or rows of
      different widths.

    Why: a float32 product costs half a float64 one, so the three d x d products of a 4,096 x 576
    chunk take about 60% of the time of :func:`gram`, :func:`gram` and ``X^T Y`` in float64 (57-62
    against 96 ms at 2 threads, 98-100 against 172 ms at 1 thread; AMD EPYC, AVX2)."""
    if x.shape[1] != y.shape[1] or not _float32_products_exact(x.device):
        return None
    # |D|^2 = |X|^2 + |Y|^2 - 2 <X, Y>: cancels when D is small, but it only picks the path
    if float(a1 + b1 - 2 * torch.dot(x.reshape(-1), y.reshape(-1))) > DIFFERENCE_MAX * float(a1):
        return None
    x32 = _scratch(2, x, torch.float32).copy_(x)
    sxx = gram(x32).to(_F64)  # exactly symmetric (gram mirrors), so its error is too
    if 2 * float(aa) > float(torch.dot(sxx.view(-1), sxx.view(-1))):
        return None
    d = y.sub_(x)
    d32 = _scratch(3, d, torch.float32).copy_(d)
    m = (x32.T @ d32).to(_F64)
    return sxx, sxx + m, sxx + (m + m.T) + gram(d32).to(_F64)  # Y^T Y exactly symmetric, like S


class _Stats:
    """Sums of one chunk (or of the rows seen so far) about their own means, float64.

    For rows ``x_i, y_i`` centred about the means ``mx, my``, with ``a_i = |x_i|^2``, ``b_i = |y_i|^2``:
    ``sxx = X^T X``, ``syy``, ``sxy = X^T Y``, ``a1 = sum a``, ``b1``, ``aa = sum a^2``, ``bb``,
    ``ab = sum a b``, ``px = sum a x``, ``py = sum b y``, ``qx = sum b x``, ``qy = sum a y``.
    """

    #: the sums :meth:`merge` adds (a subclass that keeps more sums extends it)
    SUMS: tuple[str, ...] = ("sxx", "syy", "sxy", "a1", "b1", "aa", "bb", "ab", "px", "py", "qx", "qy")
    #: whether small drift takes float32 difference products (:func:`difference_products`); their
    #: error is bounded in the Frobenius geometry of the raw rows, which is raw CKA's own
    DIFFERENCE_PRODUCTS = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.n = x.shape[0]
        # column means as a sum by matrix-vector product, then / n (0.5 ms on a 4096 x 576 float64
        # chunk against 2.2 ms for mean(0), which reduces along the strided dimension). Summing
        # first, like mean(0), keeps a constant column's mean exact where its sum is (a weighted
        # sum with weights 1/n would not), so its centred rows are exactly 0.
        ones = torch.ones((1, self.n), dtype=x.dtype, device=x.device)
        self.mx, self.my = (ones @ x).view(-1) / self.n, (ones @ y).view(-1) / self.n
        # Identical rows (a layer the fine-tuning left alone, or a model against itself): every sum
        # is computed once and shared, so CKA is exactly 1 by construction, whatever order BLAS sums
        # in (gram's panels and the plain cross-product may differ in the last bit). Equal means
        # first: a real pair differs there, and the whole-chunk comparison is skipped.
        same = torch.equal(self.mx, self.my) and torch.equal(x, y)
        x = torch.sub(x, self.mx, out=_scratch(0, x))
        y = x if same else torch.sub(y, self.my, out=_scratch(1, y))
        # Row norms as batched dot products (no (n, d) temporary) and the four norm-weighted sums as
        # two (2, n) x (n, d) products (one read of each chunk, not four): besides the three d x d
        # products (below), this is all the O(n d) work of a chunk.
        a = rowdot(x, x)
        b = a if same else rowdot(y, y)
        self.a1, self.b1 = a.sum(), b.sum()
        self.aa, self.bb, self.ab = a @ a, b @ b, a @ b
        ab = torch.stack([a, b])
        (self.px, self.qx), (self.qy, self.py) = ab @ x, ab @ y
        self._more_sums(x, y)
        if same:
            self.sxx = self.syy = self.sxy = gram(x)  # upper-triangle panels (:func:`gram`)
        elif not self._difference_products(x, y):
            self.sxx, self.syy, self.sxy = gram(x), gram(y), x.T @ y

    def _difference_products(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """Set ``sxx``, ``sxy`` and ``syy`` by :func:`difference_products` where this class allows it
        (:attr:`DIFFERENCE_PRODUCTS`) and they are precise enough; False where not (nothing set)."""
        products = difference_products(x, y, self.a1, self.b1, self.aa) if self.DIFFERENCE_PRODUCTS else None
        if products is None:
            return False
        self.sxx, self.sxy, self.syy = products
        return True

    def _more_sums(self, xc: torch.Tensor, yc: torch.Tensor) -> None:
        """Sums a subclass keeps beyond these, from the chunk's centred rows (nothing here)."""

    def _shift(self, dx: torch.Tensor, dy: torch.Tensor) -> None:
        """Re-express the sums about ``mean + (dx, dy)`` -> rows become ``x_i + dx`` (exact algebra:
        expand ``|x + dx|^2 = a + 2 x.dx + |dx|^2`` and use ``sum x_i = 0``)."""
        n = self.n
        nx, ny = dx @ dx, dy @ dy
        sxx_dx, syy_dy = self.sxx @ dx, self.syy @ dy
        sxy_dy, syx_dx = self.sxy @ dy, self.sxy.T @ dx
        # row-norm terms first: they use the old second moments. One expression for all three, so
        # identical representations give bit-identical sums (and CKA exactly 1).
        self.aa = _norm_product_shift(self.aa, self.a1, self.a1, self.px, self.px, dx @ sxx_dx, dx, dx, nx, nx, n)
        self.bb = _norm_product_shift(self.bb, self.b1, self.b1, self.py, self.py, dy @ syy_dy, dy, dy, ny, ny, n)
        self.ab = _norm_product_shift(self.ab, self.a1, self.b1, self.qy, self.qx, dx @ sxy_dy, dx, dy, nx, ny, n)
        self.px = self.px + self.a1 * dx + 2 * sxx_dx + n * nx * dx
        self.py = self.py + self.b1 * dy + 2 * syy_dy + n * ny * dy
        self.qx = self.qx + self.b1 * dx + 2 * sxy_dy + n * ny * dx
        self.qy = self.qy + self.a1 * dy + 2 * syx_dx + n * nx * dy
        self.a1 = self.a1 + n * nx
        self.b1 = self.b1 + n * ny
        # one fused rank-1 update each (not outer, scale, add: three d x d passes and two temporaries;
        # a merge of two 4096 x 576 chunks took 5.0 -> 3.5 ms at 2 threads). Out of place: identical rows
        # share one tensor for all three.
        self.sxx = torch.addr(self.sxx, dx, dx, alpha=n)
        self.syy = torch.addr(self.syy, dy, dy, alpha=n)
        self.sxy = torch.addr(self.sxy, dx, dy, alpha=n)

    def merge(self, other: _Stats) -> None:
        """Combine with another set's sums, both re-centred to the combined mean (in place)."""
        n = self.n + other.n
        mx = self.mx + (other.mx - self.mx) * (other.n / n)
        my = self.my + (other.my - self.my) * (other.n / n)
        self._shift(self.mx - mx, self.my - my)
        other._shift(other.mx - mx, other.my - my)
        for k in self.SUMS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.n, self.mx, self.my = n, mx, my


class StreamingCKA:
    """Accumulate linear CKA between two representations over row chunks.

    ``update(x, y)`` takes matching rows (same tokens) of both representations, any float dtype;
    ``result()`` may be called at any time. Memory: about ``(d_x + d_y)^2`` float64 numbers.
    """

    def __init__(
        self, d_x: int, d_y: int, device: str | torch.device = "cpu", stats_class: type[_Stats] | None = None
    ) -> None:
        self.device = torch.device(device)
        self.d_x, self.d_y = d_x, d_y
        self.stats: _Stats | None = None
        #: the class of the per-chunk sums (a subclass keeps more, e.g. standardized CKA's fourth moments)
        self.stats_class = stats_class or _Stats

    @property
    def n(self) -> int:
        return 0 if self.stats is None else self.stats.n

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs matching rows, got {x.shape[0]} and {y.shape[0]}")
        if x.shape[0] == 0:
            return
        chunk = self.stats_class(x.to(self.device, _F64), y.to(self.device, _F64))
        if self.stats is None:
            self.stats = chunk
        else:
            self.stats.merge(chunk)

    def result(self) -> CKAResult:
        n = self.n
        if n < 4 or self.stats is None:
            raise ValueError(f"debiased CKA needs at least 4 rows, got {n}")
        st = self.stats
        hxy, hxx, hyy = (st.sxy * st.sxy).sum(), (st.sxx * st.sxx).sum(), (st.syy * st.syy).sum()
        biased, debiased = cka_from_sums(hxy, hxx, hyy, st.ab, st.aa, st.bb, st.a1, st.b1, n)
        return CKAResult(linear_cka=biased, debiased_cka=debiased, n=n)


def cka_from_sums(
    hxy: torch.Tensor,
    hxx: torch.Tensor,
    hyy: torch.Tensor,
    ab: torch.Tensor,
    aa: torch.Tensor,
    bb: torch.Tensor,
    a1: torch.Tensor,
    b1: torch.Tensor,
    n: int,
) -> tuple[float, float]:
    """(biased, debiased) linear CKA from the feature-space sums: ``hxy = |Xc^T Yc|_F^2`` (and
    ``hxx``, ``hyy``), the row-norm sums ``ab = sum |x_i|^2 |y_i|^2``, ``aa``, ``bb`` and
    ``a1 = |Xc|_F^2``, ``b1``. Shared by :class:`StreamingCKA` and standardized CKA
    (:mod:`driftkit.metrics.similarity`), which feeds the same sums of z-scored features."""
    k1, k2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    dxy = hxy - k1 * ab + k2 * a1 * b1
    dxx = hxx - k1 * aa + k2 * a1 * a1
    dyy = hyy - k1 * bb + k2 * b1 * b1
    # Identical representations (same sums bit for bit) give exactly 1, not 1 - 1 ulp; otherwise
    # Cauchy-Schwarz bounds the biased estimate by 1 and rounding must not push it past.
    if bool(hxy == hxx) and bool(hxx == hyy):
        biased = 1.0
    else:
        biased = min(1.0, float(hxy / torch.sqrt(hxx * hyy)))
    denom = dxx * dyy
    if bool(dxy == dxx) and bool(dxx == dyy) and denom > 0:
        debiased = 1.0
    else:
        debiased = float(dxy / torch.sqrt(denom)) if denom > 0 else math.nan
    return biased, debiased


def linear_cka(x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> CKAResult:
    """Linear CKA of two in-memory (n, d) arrays via the streaming kernel (convenience)."""
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    acc = StreamingCKA(x.shape[1], y.shape[1])
    for s in range(0, x.shape[0], chunk):
        acc.update(x[s : s + chunk], y[s : s + chunk])
    return acc.result()
