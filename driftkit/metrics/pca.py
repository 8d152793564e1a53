"""The paper's PCA-shift statistic (Huan et al. 2025, section 4) and principal subspace angles.

PCA shift, per domain (DESIGN.md section 4): for each layer (embedding output and every decoder
layer), mean-pool each sample over its tokens, fit PCA(2) on the *base* model's pooled features,
project both models' pooled features on the base's PC1/PC2 *without centering* and average over
samples (m_A, m_B). The layer's points are ``A = (0, m_A2)`` and ``B = (m_B1 - m_A1, m_B2)``; the
points are averaged over layers and the shift is the distance between the two centroids.

Differences from the paper's script, on purpose: pooling is mask-aware (the original averaged over
left-padding tokens too, so the statistic depended on the batch's longest prompt), and pooling is
streamed from the capture file instead of re-running the models; domains with fewer than 3 samples
are skipped (two points always lie on one line, so PC2 is arbitrary). The PCA's axes are
scikit-learn's (its solvers' scipy calls, made directly, see :func:`_fit_components`), but component
signs are fixed by driftkit (:func:`fix_signs`: each component's entry of largest magnitude is
positive), because scikit-learn >= 1.5 and <= 1.4 choose them differently and the paper's
statistic averages points over layers, so per-layer sign choices move it.
``mean_layer_distance`` (mean over layers of each layer's ``|B - A|``) is sign-invariant.

Beyond the paper: principal angles (scipy) between A's and B's top-k PCA subspaces of the pooled
features per layer, a rotation measure that does not depend on PC signs or on the centroid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class SamplePooler:
    """Streaming per-sample mean of token rows: O(n_samples x d) memory, float64 sums."""

    def __init__(self, n_samples: int, d: int) -> None:
        self.sums = torch.zeros(n_samples, d, dtype=torch.float64)
        self.counts = torch.zeros(n_samples, dtype=torch.int64)
        self._finished: tuple[np.ndarray, np.ndarray] | None = None  # set by finish_means

    def update(self, sample_idx: np.ndarray | torch.Tensor, rows: torch.Tensor) -> None:
        if self._finished is not None:
            raise RuntimeError("SamplePooler.update after finish_means: its sums are means now")
        idx = torch.as_tensor(np.asarray(sample_idx), dtype=torch.int64)
        # One intra-op thread: a 2-D index_add_ is one tiny add per row, and with several threads each
        # one is a parallel region; on a busy 2-core machine that measured 68 ms vs 0.2 ms for 800 x 576
        # rows. The sums are the same (rows are added in order either way).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.sums.index_add_(0, idx, rows.to(torch.float64))
        finally:
            torch.set_num_threads(threads)
        self.counts.index_add_(0, idx, torch.ones_like(idx))

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_samples, d) means (NaN rows for samples without tokens) and (n_samples,) counts.

        One (n_samples, d) allocation, the result: the empty rows are set in place. A ``where`` over
        a quotient and a NaN block made three, and these arrays are what grows with the number of
        samples (3,600 samples x 576 float64 = 16.6 MB each, per capture and layer)."""
        if self._finished is not None:
            return self._finished
        return self._means_into(torch.empty_like(self.sums)).numpy(), self.counts.numpy()

    def _means_into(self, out: torch.Tensor) -> torch.Tensor:
        """The sums over the counts written into ``out`` (the sums themselves may be ``out``), NaN
        rows where a sample has no token."""
        torch.div(self.sums, self.counts.to(torch.float64).unsqueeze(1).clamp_min(1), out=out)
        out[self.counts == 0] = float("nan")
        return out

    def finish_means(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`means` computed in the sums' own memory, once, as read-only arrays (the same
        numbers: the same division). For sums several consumers read after the last row is added
        (the compare engine's per-layer store): no (n_samples, d) copy per consumer, and writing to
        the shared arrays raises instead of changing another consumer's input."""
        if self._finished is None:
            m, c = self._means_into(self.sums).numpy(), self.counts.numpy()
            m.flags.writeable = c.flags.writeable = False
            self._finished = (m, c)
        return self._finished


def rows_kept(mask: np.ndarray) -> slice | np.ndarray:
    """What to index per-sample arrays with to keep ``mask``'s rows: ``mask`` itself, or
    ``slice(None)`` when it keeps every row. Why: boolean indexing always copies, and the shared
    per-sample means (:meth:`SamplePooler.finish_means`) are what grows with the sample count; with
    every sample selected (the usual case) a consumer then reads them without a (samples x d) copy."""
    return slice(None) if mask.all() else mask


#: fewest samples a domain needs for the PCA shift (PCA(2) of 2 points has an arbitrary PC2)
MIN_SAMPLES = 3


def fix_signs(components: np.ndarray) -> np.ndarray:
    """Components with each row's entry of largest magnitude made positive (first such entry on an
    exact tie), so results do not depend on the library's (version-dependent) sign convention."""
    comps = np.array(components, dtype=np.float64, copy=True)
    if comps.size == 0:
        return comps
    idx = np.abs(comps).argmax(1)
    signs = np.sign(comps[np.arange(comps.shape[0]), idx])
    signs[signs == 0] = 1.0
    return comps * signs[:, None]


def layer_distance(point: dict[str, float]) -> float:
    """One layer's distance between B's and A's point, ``|(pc1_shift, pc2_b - pc2_a)|``: unlike the
    centroid distance it does not depend on the components' signs."""
    return float(np.hypot(point["pc1_shift"], point["pc2_b"] - point["pc2_a"]))


@dataclass
class PCAShift:
    """Result of :func:`pca_shift` for one domain."""

    distance: float
    centroid_a: tuple[float, float]
    centroid_b: tuple[float, float]
    #: per layer: {"pc1_shift": m_B1 - m_A1, "pc2_a": m_A2, "pc2_b": m_B2}
    layers: list[dict[str, float]] = field(default_factory=list)
    n_samples: int = 0
    #: mean over layers of :func:`layer_distance` (sign-invariant)
    mean_layer_distance: float = 0.0


#: below this many samples the full SVD is as fast as ARPACK (and has no convergence to check)
ARPACK_MIN_SAMPLES = 32


def _fit_components(x: np.ndarray, n_components: int) -> np.ndarray:
    """The top ``n_components`` principal axes of ``x`` (n, d): scikit-learn's ``PCA.components_``
    (``svd_solver="arpack", random_state=0`` above :data:`ARPACK_MIN_SAMPLES`, ``"full"`` otherwise),
    computed here without importing scikit-learn, bit for bit the same.

    Why not scikit-learn itself: importing ``sklearn.decomposition`` cost ~1.1 s per comparison
    (it pulls in scipy.stats and pandas) and its input validation ~1 ms per fit; the numbers are
    those of the two calls it makes, repeated here: centre ``x`` (``x - x.mean(0)`` on a copy), then
    ``scipy.sparse.linalg.svds(xc, k, tol=0, v0)`` with sklearn's start vector (uniform on [-1, 1]
    from ``RandomState(0)``, length ``min(n, d)``), rows reversed (svds returns ascending singular
    values), or ``scipy.linalg.svd(xc, full_matrices=False)``; then sklearn's ``svd_flip`` sign rule
    (:func:`fix_signs`). Tests compare against scikit-learn's PCA on both paths.

    Why ARPACK for larger inputs: only 2 to 4 components are wanted, and the full SVD of a
    (samples x 576) matrix computes all of them: ARPACK (Lanczos to machine precision, fixed start
    vector) gave the same axes to 1e-14 in 4.5 ms instead of 11.7 ms at 150 samples and 7 ms
    instead of 50 ms at 450, which was a tenth of a whole comparison's time. The full SVD remains
    for small inputs and whenever ARPACK cannot serve (a rank-deficient matrix, no convergence).

    Why not ``torch.linalg.eigh`` of the smaller Gram/covariance matrix (measured, one thread, on
    the 155 fits of the x5 SmolLM2 comparison): the same axes to 2.7e-13 (not bit for bit), faster
    for few samples (0.9 ms vs 2.6 ms at 90 x 576, 2.3 ms vs 2.9 ms at 150 x 576) but 27 ms vs
    8 ms at 450 x 576 (the Gram product and a full eigendecomposition), 1.59 s vs 0.36 s over the
    comparison; and squaring the matrix squares its condition, so a small eigengap next to a massive
    activation feature costs digits that the SVD keeps."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):  # sklearn's validation: float32 stays, the rest -> float64
        x = x.astype(np.float64)
    xc = x - x.mean(axis=0)
    if min(x.shape) > max(ARPACK_MIN_SAMPLES, n_components + 1):
        from scipy.sparse.linalg import svds

        v0 = np.random.RandomState(0).uniform(-1, 1, min(x.shape))  # sklearn's _init_arpack_v0(size, 0)
        try:
            comps = svds(xc, k=n_components, tol=0.0, v0=v0)[2][::-1]
            if np.isfinite(comps).all():
                return fix_signs(comps).astype(xc.dtype, copy=False)
        except Exception:  # noqa: BLE001 - ArpackNoConvergence/ArpackError: the exact full SVD serves
            pass
    from scipy.linalg import svd

    return fix_signs(svd(xc, full_matrices=False)[2][:n_components]).astype(xc.dtype, copy=False)


def _one_blas_thread():
    """The SVDs here are of (samples x d) matrices, milliseconds on one core; with several BLAS
    threads on a busy machine OpenBLAS spin-waits and they took 20x longer (measured: 0.8 s vs
    0.04 s for 90 x 576), so BLAS is limited to one thread around them."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """One threadpoolctl controller for the process: building one scans every loaded library (~20 ms),
    which per layer and domain added seconds to a comparison. Made after the modules whose BLAS the
    fits use are imported (numpy's for the centring and svds' products, scipy's for the SVD and
    ARPACK's LAPACK), so both OpenBLAS copies are among the libraries it limits."""
    import scipy.linalg  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def layer_point(fa: np.ndarray, fb: np.ndarray) -> dict[str, float]:
    """One layer's PCA-shift coordinates from (n_samples, d) pooled features of A and B (same
    samples): fit PCA(2) on A, project both without centering, average over samples."""
    if fa.shape[0] < 2:
        raise ValueError(f"PCA shift needs at least 2 samples, got {fa.shape[0]}")
    with _one_blas_thread():
        comps = fix_signs(_fit_components(fa, 2))  # (2, d)
    m_a = (fa @ comps.T).mean(0)
    m_b = (fb @ comps.T).mean(0)
    return {"pc1_shift": float(m_b[0] - m_a[0]), "pc2_a": float(m_a[1]), "pc2_b": float(m_b[1])}


def shift_from_points(layers: list[dict[str, float]], n_samples: int = 0) -> PCAShift:
    """Average the per-layer points ``A = (0, pc2_a)``, ``B = (pc1_shift, pc2_b)`` over layers and
    take the distance between the two centroids."""
    if not layers:
        raise ValueError("PCA shift needs at least one layer")
    ca = np.array([0.0, float(np.mean([p["pc2_a"] for p in layers]))])
    cb = np.array([float(np.mean([p["pc1_shift"] for p in layers])), float(np.mean([p["pc2_b"] for p in layers]))])
    return PCAShift(
        distance=float(np.linalg.norm(cb - ca)),
        centroid_a=(float(ca[0]), float(ca[1])),
        centroid_b=(float(cb[0]), float(cb[1])),
        layers=list(layers),
        n_samples=n_samples,
        mean_layer_distance=float(np.mean([layer_distance(p) for p in layers])),
    )


def pca_shift(pooled_a: list[np.ndarray], pooled_b: list[np.ndarray]) -> PCAShift:
    """PCA shift between two models from per-layer (n_samples, d) pooled features (same samples,
    same order). Needs at least 2 samples (PCA(2) of one point is undefined); the analysis skips
    domains with fewer than :data:`MIN_SAMPLES`."""
    if len(pooled_a) != len(pooled_b) or not pooled_a:
        raise ValueError("pca_shift needs the same non-empty list of layers for both models")
    return shift_from_points([layer_point(fa, fb) for fa, fb in zip(pooled_a, pooled_b)], pooled_a[0].shape[0])


def principal_angles(fa: np.ndarray, fb: np.ndarray, k: int = 4) -> np.ndarray:
    """Principal angles in degrees (ascending) between the top-k PCA subspaces of two (n, d)
    feature sets. ``k`` is capped at ``min(n - 1, d)``."""
    from scipy.linalg import subspace_angles

    k = int(min(k, fa.shape[0] - 1, fb.shape[0] - 1, fa.shape[1]))
    if k < 1:
        return np.zeros(0)
    with _one_blas_thread():
        ua = _fit_components(fa, k).T
        ub = _fit_components(fb, k).T
        return np.sort(np.degrees(subspace_angles(ua, ub)))
