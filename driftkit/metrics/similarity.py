"""Similarity beyond raw linear CKA: standardized CKA, angular Procrustes, mutual k-NN, dominant features.

Why: an LLM's residual stream has a few "rogue" / massive-activation features whose variance is
orders of magnitude above the rest (Timkey & van Schijndel 2021; Sun et al. 2024). Linear CKA is a
ratio of Frobenius norms of cross-covariances, so those few features decide it: two checkpoints
whose bulk representation moved a lot still read CKA 0.999. The measures here each see past them
in a different way, and the dominant-feature diagnostic says when raw CKA cannot be read at all.

All layer measures come from the one streaming pass of :class:`~driftkit.metrics.cka.StreamingCKA`
(d x d float64 sums about the exact mean, merged chunk by chunk with Chan's formulas):

- **Standardized CKA**: linear CKA after z-scoring every feature. Z-scoring centred data is a
  diagonal rescaling ``Z = Xc D`` with ``D = diag(1/sd_j)``, so ``Zx^T Zy = Dx Sxy Dy`` comes from
  the accumulated ``Sxy = Xc^T Yc`` at the end: no second pass. The debiased form also needs the
  row norms of the z-scored rows, ``sum_i |zx_i|^2 |zy_i|^2 = wx^T M wy`` with ``w_j = 1/var_j`` and
  ``M_jk = sum_i xc_ij^2 yc_ik^2``: a fourth-moment matrix, kept about the exact mean by the same
  merging (:class:`StandardizedStats`, seven more d x d sums; off with ``fourth=False``).
  Constant features (variance exactly 0) have no z-score and are left out.
- **Angular Procrustes distance** (Williams et al. 2021, "Generalized shape metrics on neural
  representations"; Ding et al. 2021): with ``X~ = Xc / |Xc|_F`` and ``Y~ = Yc / |Yc|_F``,
  ``min_Q |X~ - Y~ Q|_F^2 = 2 - 2 |X~^T Y~|_*`` over orthogonal Q (the optimal Q comes from the
  SVD of ``X~^T Y~``), and the angular form is ``arccos(|X~^T Y~|_*) = arccos(|Sxy|_* / sqrt(tr Sxx
  tr Syy))`` in radians, in [0, pi/2]: 0 = same representation up to rotation, translation and
  scale. The nuclear norm is the sum of ``torch.linalg.svdvals`` of the d x d matrix in float64.
- **Mutual k-NN alignment** (Huh et al. 2024, "The Platonic Representation Hypothesis",
  minyoungg/platonic-rep ``AlignmentMetrics.mutual_knn``): on per-sample vectors, L2-normalised,
  each sample's k nearest neighbours by cosine similarity, itself excluded, in A-space and in
  B-space; the score is the mean over samples of ``|knn_A(i) & knn_B(i)| / k`` (1 = same
  neighbourhoods). platonic-rep also clamps features at a 0.95 quantile before the metric; that is a
  preprocessing choice of their pipeline and is not applied here. Ties in similarity are broken by
  the lower sample index (platonic-rep's unstable argsort leaves them to the sort).
- **Dominant features**: the share of the total variance held by the top-k features, and which.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from driftkit.metrics.cka import StreamingCKA, _Stats, cka_from_sums
from driftkit.metrics.products import gram

_F64 = torch.float64


def _shift_fourth(
    m: torch.Tensor,
    t21: torch.Tensor,
    t12: torch.Tensor,
    s2u: torch.Tensor,
    s2v: torch.Tensor,
    suv: torch.Tensor,
    du: torch.Tensor,
    dv: torch.Tensor,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fourth- and third-moment sums of centred rows ``u_i, v_i`` (``sum u_i = sum v_i = 0``)
    re-expressed about a mean moved by ``(du, dv)``, i.e. for rows ``u_i + du, v_i + dv``::

        M_jk   = sum u_j^2 v_k^2   T21_jk = sum u_j^2 v_k   T12_jk = sum u_j v_k^2

    Expanding ``(u_j + du_j)^2 (v_k + dv_k)^2`` and dropping the terms linear in a centred row gives
    the closed forms below (``s2u = sum u_j^2``, ``suv = sum u_j v_k``, all taken before the shift)."""
    du_, dv_ = du[:, None], dv[None, :]
    du2, dv2 = du_ * du_, dv_ * dv_
    m2 = m + 2 * t21 * dv_ + s2u[:, None] * dv2 + 2 * du_ * t12 + 4 * du_ * dv_ * suv + du2 * s2v[None, :]
    m2 = m2 + n * du2 * dv2
    t21b = t21 + s2u[:, None] * dv_ + 2 * du_ * suv + n * du2 * dv_
    t12b = t12 + du_ * s2v[None, :] + 2 * suv * dv_ + n * du_ * dv2
    return m2, t21b, t12b


class Float64Stats(_Stats):
    """:class:`~driftkit.metrics.cka._Stats` with every d x d product in float64, for the
    standardized measures (standardized CKA and Procrustes).

    Why not raw CKA's float32 difference products (:func:`~driftkit.metrics.cka.difference_products`):
    their error is float32's precision times the drift of the whole rows,
    ``|D|^2 / |X|^2``. Z-scoring divides each feature by its own spread, so what bounds the error
    there is the largest drift of a single feature against its spread, and a rogue dimension hides
    that from the whole rows' figure, which is the case these measures exist for. Measured on the
    perturbed SmolLM2-135M captures of ``perf/compare_scale.py``: from layer 11 on, the whole rows
    drift by 2e-4 of their squared norm while single features drift by up to 12x their spread."""

    DIFFERENCE_PRODUCTS = False


class StandardizedStats(Float64Stats):
    """:class:`Float64Stats` plus the sums debiased standardized CKA needs.

    For centred rows, with ``x2 = x * x``: ``mxy = x2^T y2``, ``txy = x2^T y``, ``uxy = x^T y2``;
    ``mxx = x2^T x2``, ``txx = x2^T x`` (its ``T12`` is ``txx^T``); ``myy``, ``tyy`` likewise."""

    SUMS = _Stats.SUMS + ("mxy", "txy", "uxy", "mxx", "txx", "myy", "tyy")

    def _more_sums(self, xc: torch.Tensor, yc: torch.Tensor) -> None:
        x2 = xc * xc
        self.mxx, self.txx = gram(x2), x2.T @ xc
        if yc is xc:  # identical rows (the base class shares them): the same sums, so exactly 1
            self.mxy = self.myy = self.mxx
            self.txy = self.tyy = self.txx
            self.uxy = self.txx.T  # sum x_j x_k^2
            return
        y2 = yc * yc
        self.mxy, self.txy, self.uxy = x2.T @ y2, x2.T @ yc, xc.T @ y2
        self.myy, self.tyy = gram(y2), y2.T @ yc

    def _shift(self, dx: torch.Tensor, dy: torch.Tensor) -> None:
        n = self.n
        s2x, s2y = torch.diagonal(self.sxx), torch.diagonal(self.syy)
        self.mxy, self.txy, self.uxy = _shift_fourth(self.mxy, self.txy, self.uxy, s2x, s2y, self.sxy, dx, dy, n)
        self.mxx, self.txx, _ = _shift_fourth(self.mxx, self.txx, self.txx.T, s2x, s2x, self.sxx, dx, dx, n)
        self.myy, self.tyy, _ = _shift_fourth(self.myy, self.tyy, self.tyy.T, s2y, s2y, self.syy, dy, dy, n)
        super()._shift(dx, dy)  # the second moments last: the formulas above use their old values


class SimilarityAccumulator(StreamingCKA):
    """:class:`StreamingCKA` that also knows whether every chunk of A and B was bit-identical, so
    identical captures give exactly the ideal values (CKA 1, Procrustes 0), not 1 - 1 ulp.

    ``cka`` and ``similarity`` share one per layer through the compare engine's per-layer store
    (:mod:`driftkit.comparing.layer_sums`), so the d x d sums are added once between them."""

    def __init__(
        self, d_x: int, d_y: int, device: str | torch.device = "cpu", fourth: bool = True, standardized: bool = True
    ) -> None:
        cls = StandardizedStats if fourth else Float64Stats if standardized else _Stats
        super().__init__(d_x, d_y, device, cls)
        self.identical = d_x == d_y

    def with_fourth(self) -> None:
        """Keep the fourth moments too (debiased standardized CKA). Only before any row is added:
        sums already taken without them cannot be completed."""
        self._upgrade(StandardizedStats, "the fourth moments were")

    def with_standardized(self) -> None:
        """Take every product in float64 (:class:`Float64Stats`), as the standardized measures need.
        Only before any row is added, like :meth:`with_fourth`."""
        self._upgrade(Float64Stats, "float64 products were")

    def _upgrade(self, cls: type[_Stats], what: str) -> None:
        """Switch to ``cls`` unless the class in use already is one (StandardizedStats is a
        Float64Stats)."""
        if issubclass(self.stats_class, cls):
            return
        if self.n:
            raise RuntimeError(f"{what} asked for after rows were added without them")
        self.stats_class = cls

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.identical and x.shape[0]:
            self.identical = bool(torch.equal(x, y))
        super().update(x, y)


@dataclass(frozen=True)
class LayerSimilarity:
    """The d x d measures of one layer (see the module docstring for definitions)."""

    linear_cka: float
    standardized_cka: float
    standardized_cka_debiased: float | None  # None when the fourth moments were not accumulated
    procrustes: float  # radians, arccos of the normalised nuclear norm
    procrustes_standardized: float  # the same on z-scored features
    n: int


def _svdvals(m: torch.Tensor) -> torch.Tensor:
    """Singular values in float64 on one intra-op thread: on a busy 2-core machine the threaded
    LAPACK path measured 0.65-20 s for a 576 x 576 matrix, one thread 0.1 s (same values)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.svdvals(m.to(_F64))
    finally:
        torch.set_num_threads(threads)


def _nuclear_cos(sxy: torch.Tensor, sxx: torch.Tensor, syy: torch.Tensor) -> float:
    """``|Sxy|_* / sqrt(tr Sxx tr Syy)`` clipped to [0, 1] (Cauchy-Schwarz bounds it by 1)."""
    denom = torch.sqrt(torch.trace(sxx) * torch.trace(syy))
    if not bool(denom > 0):
        return math.nan
    return min(1.0, float(_svdvals(sxy).sum() / denom))


def layer_similarity(stats: _Stats, identical: bool = False) -> LayerSimilarity:
    """Standardized CKA (biased, and debiased when ``stats`` keeps the fourth moments), raw linear
    CKA and angular Procrustes (raw and standardized) from one layer's accumulated sums."""
    n = stats.n
    if n < 4:
        raise ValueError(f"similarity needs at least 4 rows, got {n}")
    sxx, syy, sxy = stats.sxx, stats.syy, stats.sxy
    vx, vy = torch.diagonal(sxx), torch.diagonal(syy)  # n * variance of each feature
    sx = torch.where(vx > 0, vx.clamp_min(1e-300).rsqrt(), torch.zeros_like(vx))
    sy = torch.where(vy > 0, vy.clamp_min(1e-300).rsqrt(), torch.zeros_like(vy))
    kxy, kxx, kyy = sx[:, None] * sxy * sy[None, :], sx[:, None] * sxx * sx[None, :], sy[:, None] * syy * sy[None, :]
    hxy, hxx, hyy = (kxy * kxy).sum(), (kxx * kxx).sum(), (kyy * kyy).sum()
    raw = (sxy * sxy).sum() / torch.sqrt((sxx * sxx).sum() * (syy * syy).sum())
    deb: float | None = None
    if isinstance(stats, StandardizedStats):
        wx, wy = sx * sx, sy * sy
        a1, b1 = (wx * vx).sum(), (wy * vy).sum()
        ab, aa, bb = wx @ stats.mxy @ wy, wx @ stats.mxx @ wx, wy @ stats.myy @ wy
        std, deb = cka_from_sums(hxy, hxx, hyy, ab, aa, bb, a1, b1, n)
    else:
        std = min(1.0, float(hxy / torch.sqrt(hxx * hyy)))
    if identical:
        return LayerSimilarity(1.0, 1.0, None if deb is None else 1.0, 0.0, 0.0, n)
    return LayerSimilarity(
        linear_cka=min(1.0, float(raw)),
        standardized_cka=std,
        standardized_cka_debiased=deb,
        procrustes=math.acos(_nuclear_cos(sxy, sxx, syy)),
        procrustes_standardized=math.acos(_nuclear_cos(kxy, kxx, kyy)),
        n=n,
    )


def dominant_features(stats_diag: torch.Tensor, k: int) -> tuple[float, list[int]]:
    """Share of the total variance in the ``k`` largest-variance features, and their indices
    (largest first; ties by lower index). ``stats_diag`` is the per-feature sum of squares about
    the mean (any positive multiple of the variances)."""
    v = stats_diag.to(_F64)
    total = float(v.sum())
    k = min(int(k), v.numel())
    order = torch.sort(-v, stable=True).indices[:k]
    share = float(v[order].sum() / total) if total > 0 else math.nan
    return share, [int(i) for i in order]


#: float64 similarities in one row block of the k-NN (2^20: 8 MB). The block's rows follow from the
#: sample count, so the k-NN's transient memory stays the same however many samples there are.
KNN_BLOCK_ELEMENTS = 1 << 20


def _read_only_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``x`` as a tensor without a copy. Why: the per-sample means are shared between analyses as
    read-only numpy arrays (:meth:`~driftkit.metrics.pca.SamplePooler.finish_means`), and torch wraps
    those with a warning that writing to them is undefined; the k-NN only reads its input."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(x)
    return torch.as_tensor(x)


def _nearest_k(sim: torch.Tensor, k: int) -> torch.Tensor | None:
    """Column indices of each row's ``k`` smallest entries of ``sim`` (negated similarities), in
    ascending (value, index) order: the first ``k`` of a stable sort, without sorting whole rows.

    Why: a stable sort of whole rows costs O(n log n) each and was most of the k-NN's time at
    thousands of samples: 657 ms for 3,600 x 576 features at 2 threads, 218 ms this way. Here
    ``topk`` finds the k-th smallest value; the entries below it are in, and of those equal to it the
    lowest-index ones fill the remaining places (ties go to the lower index, as in the stable sort);
    only the k chosen are then sorted. None when a row has fewer than k comparable entries (NaN):
    the caller sorts those blocks in full."""
    kth = torch.topk(sim, k, dim=1, largest=False, sorted=True).values[:, k - 1 : k]
    less = sim < kth
    ties = sim == kth
    need = k - less.sum(1, keepdim=True)  # places left for entries equal to the k-th value
    if not bool((ties.sum(1, keepdim=True) == need).all()):  # more ties than places: lowest indices
        ties &= ties.cumsum(1, dtype=torch.int32) <= need
    cols = less.logical_or_(ties).nonzero()[:, 1]  # row-major: each row's k columns, ascending
    if cols.numel() != sim.shape[0] * k:
        return None
    cols = cols.view(-1, k)
    return cols.gather(1, torch.sort(sim.gather(1, cols), dim=1, stable=True).indices)


def knn_indices(feats: torch.Tensor | np.ndarray, k: int, block: int | None = None) -> torch.Tensor:
    """(n, k) indices of each row's k nearest rows by cosine similarity, itself excluded; ties go
    to the lower index (the order of a stable sort of the negated similarities). Rows of zeros have
    similarity 0 to everything.

    Memory: the rows are normalised into one (n, d) copy, and the similarities are taken ``block``
    rows at a time (default: :data:`KNN_BLOCK_ELEMENTS` // n rows), negated in place, and the k
    nearest picked by :func:`_nearest_k`: one float64 (block, n) array (8 MB) and a few boolean and
    int32 ones of its shape. With a fixed 1,024-row block and a full sort there were four float64 or
    int64 arrays (the similarities, their negation, the sorted values and indices), 29 MB each at
    3,600 samples."""
    f = _read_only_tensor(feats).to(_F64)
    norms = f.norm(dim=1, keepdim=True)
    f = f / norms.clamp_min(1e-300)  # a new array: ``feats`` may be means other analyses share
    f[~(norms[:, 0] > 0)] = 0.0  # rows of zeros (and NaN rows) match nothing
    n = f.shape[0]
    block = max(1, KNN_BLOCK_ELEMENTS // max(n, 1)) if block is None else block
    out = torch.empty(n, k, dtype=torch.int64)
    for s in range(0, n, block):
        e = min(n, s + block)
        sim = torch.mm(f[s:e], f.T).neg_()  # ascending order of -similarity: nearest first
        rows = torch.arange(e - s)
        sim[rows, rows + s] = math.inf  # itself last
        nearest = _nearest_k(sim, k)
        out[s:e] = nearest if nearest is not None else torch.sort(sim, dim=1, stable=True).indices[:, :k]
        del sim
    return out


def mutual_knn(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray, k: int) -> float:
    """platonic-rep's mutual k-NN alignment of two (n, d) sets of per-sample vectors (same samples,
    same order): mean over samples of ``|knn_A(i) & knn_B(i)| / k``. ``k`` must be in [1, n - 1]."""
    n = feats_a.shape[0]
    if feats_b.shape[0] != n:
        raise ValueError(f"mutual k-NN needs the same samples, got {n} and {feats_b.shape[0]}")
    if not 1 <= k <= n - 1:
        raise ValueError(f"mutual k-NN needs 1 <= k <= n - 1, got k={k} for n={n}")
    ka, kb = knn_indices(feats_a, k), knn_indices(feats_b, k)
    # membership by sorting: the overlap of two k-sets is 2k minus the number of distinct entries
    both = torch.sort(torch.cat([ka, kb], dim=1), dim=1).values
    dup = (both[:, 1:] == both[:, :-1]).sum(1)
    return float(dup.to(_F64).mean() / k)
