"""Similarity kernels against direct float64 references (gram-space CKA on explicitly z-scored data,
an explicit SVD for Procrustes, brute-force k-NN by argsort over the full similarity matrix)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from driftkit.metrics.similarity import (
    Float64Stats,
    SimilarityAccumulator,
    StandardizedStats,
    dominant_features,
    knn_indices,
    layer_similarity,
    mutual_knn,
)


def _zscore(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0)
    sd = xc.std(0)
    keep = sd > 0
    return xc[:, keep] / sd[keep]


def _gram_cka(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Biased (HSIC with H K H) and debiased (Song et al. 2012 unbiased HSIC) CKA in gram space."""
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    h = np.eye(n) - 1.0 / n

    def hb(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h))

    def hu(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.copy(), b.copy()
        np.fill_diagonal(a, 0)
        np.fill_diagonal(b, 0)
        return float((a * b.T).sum() + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2 * (a @ b).sum() / (n - 2)) / (
            n * (n - 3)
        )

    return hb(k, l_) / math.sqrt(hb(k, k) * hb(l_, l_)), hu(k, l_) / math.sqrt(hu(k, k) * hu(l_, l_))


def _acc(x: np.ndarray, y: np.ndarray, chunk: int = 37, fourth: bool = True) -> SimilarityAccumulator:
    acc = SimilarityAccumulator(x.shape[1], y.shape[1], fourth=fourth)
    for s in range(0, x.shape[0], chunk):
        acc.update(torch.from_numpy(x[s : s + chunk]), torch.from_numpy(y[s : s + chunk]))
    return acc


def _procrustes_ref(x: np.ndarray, y: np.ndarray) -> float:
    """Materialise the centred, Frobenius-normalised matrices, solve for the best rotation with
    scipy, and take the angle between X~ and Y~ Q (cos = <X~, Y~ Q>_F)."""
    xt = x - x.mean(0)
    yt = y - y.mean(0)
    xt, yt = xt / np.linalg.norm(xt), yt / np.linalg.norm(yt)
    q, _ = scipy.linalg.orthogonal_procrustes(yt, xt)
    return math.acos(min(1.0, float((xt * (yt @ q)).sum())))


@pytest.fixture
def rogue() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A representation with one massive feature (mean 300, sd 100: ~all the variance), B = A with
    the bulk features perturbed, C = A with a small perturbation; float64."""
    rng = np.random.default_rng(0)
    n, d = 300, 12
    x = rng.normal(size=(n, d))
    x[:, 3] = 300 + 100 * rng.normal(size=n)
    y = x.copy()
    y[:, [i for i in range(d) if i != 3]] += 1.5 * rng.normal(size=(n, d - 1))
    z = x + 0.01 * rng.normal(size=(n, d))
    return x, y, z


def test_standardized_cka_equals_gram_formula_on_zscored_data(rogue) -> None:
    x, y, _ = rogue
    y = y @ np.random.default_rng(1).normal(size=(12, 9))  # different width too
    r = layer_similarity(_acc(x, y).stats)
    ref_b, ref_u = _gram_cka(_zscore(x), _zscore(y))
    assert r.standardized_cka == pytest.approx(ref_b, abs=1e-9)
    assert r.standardized_cka_debiased == pytest.approx(ref_u, abs=1e-9)
    raw_b, _ = _gram_cka(x - x.mean(0), y - y.mean(0))
    assert r.linear_cka == pytest.approx(raw_b, abs=1e-9)


def test_chunking_and_offset_do_not_change_standardized_cka() -> None:
    """Fourth-moment sums merged across chunks about the exact mean: a large common offset (the
    massive-activation case) and any chunk size give the same debiased standardized CKA."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 6)) + 5000.0
    y = x + rng.normal(size=(200, 6))
    ref = _gram_cka(_zscore(x), _zscore(y))[1]
    for chunk in (1, 7, 64, 200):
        assert layer_similarity(_acc(x, y, chunk).stats).standardized_cka_debiased == pytest.approx(ref, abs=1e-9)


def test_procrustes_equals_direct_svd(rogue) -> None:
    x, y, _ = rogue
    rng = np.random.default_rng(3)
    for a, b in ((x, y), (x, x @ np.linalg.qr(rng.normal(size=(12, 12)))[0] + rng.normal(size=(300, 12)))):
        r = layer_similarity(_acc(a, b).stats)
        assert r.procrustes == pytest.approx(_procrustes_ref(a, b), abs=1e-7)
        assert r.procrustes_standardized == pytest.approx(_procrustes_ref(_zscore(a), _zscore(b)), abs=1e-7)
    # a rotated and scaled copy is at distance 0 (up to the arccos floor of float64 rounding)
    q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    assert layer_similarity(_acc(x, 3.0 * x @ q + 7.0).stats).procrustes < 1e-6


def test_identical_inputs_give_exactly_ideal_values(rogue) -> None:
    x, _, _ = rogue
    acc = _acc(x.astype(np.float32), x.astype(np.float32))
    r = layer_similarity(acc.stats, identical=acc.identical)
    assert (r.linear_cka, r.standardized_cka, r.standardized_cka_debiased) == (1.0, 1.0, 1.0)
    assert (r.procrustes, r.procrustes_standardized) == (0.0, 0.0)
    assert mutual_knn(torch.from_numpy(x), torch.from_numpy(x), 10) == 1.0
    other = _acc(x, x + 1e-3)
    assert not other.identical


def test_rogue_dimension_hides_drift_from_raw_cka_not_standardized(rogue) -> None:
    x, y, z = rogue
    big, small = layer_similarity(_acc(x, y).stats), layer_similarity(_acc(x, z).stats)
    # raw CKA cannot tell the large bulk perturbation from the tiny one
    assert big.linear_cka > 0.999 and small.linear_cka > 0.999
    # standardized CKA (and standardized Procrustes) can
    assert big.standardized_cka < 0.8 < 0.999 < small.standardized_cka
    assert big.procrustes_standardized > 10 * small.procrustes_standardized
    share, feats = dominant_features(torch.diagonal(_acc(x, y).stats.sxx), 3)
    assert feats[0] == 3 and share > 0.99


def test_constant_feature_is_left_out() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 5))
    x[:, 2] = 7.0
    y = x + 0.3 * rng.normal(size=(50, 5))
    y[:, 2] = 7.0
    r = layer_similarity(_acc(x, y).stats)
    ref = _gram_cka(_zscore(x), _zscore(y))
    assert r.standardized_cka == pytest.approx(ref[0], abs=1e-9)
    assert r.standardized_cka_debiased == pytest.approx(ref[1], abs=1e-9)


def test_float16_rows() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 16)).astype(np.float16)
    x[:, 0] = (60 + 20 * rng.normal(size=400)).astype(np.float16)
    y = (x.astype(np.float32) + 0.5 * rng.normal(size=(400, 16))).astype(np.float16)
    acc = SimilarityAccumulator(16, 16)
    for s in range(0, 400, 64):
        acc.update(torch.from_numpy(x[s : s + 64]), torch.from_numpy(y[s : s + 64]))
    r = layer_similarity(acc.stats)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    ref = _gram_cka(_zscore(x64), _zscore(y64))
    assert r.standardized_cka == pytest.approx(ref[0], abs=1e-9)
    assert r.standardized_cka_debiased == pytest.approx(ref[1], abs=1e-9)
    assert r.procrustes == pytest.approx(_procrustes_ref(x64, y64), abs=1e-7)


def test_fourth_moments_are_optional() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 4))
    y = x + rng.normal(size=(60, 4))
    acc = _acc(x, y, fourth=False)
    assert not isinstance(acc.stats, StandardizedStats)
    r = layer_similarity(acc.stats)
    assert r.standardized_cka_debiased is None
    assert r.standardized_cka == pytest.approx(_gram_cka(_zscore(x), _zscore(y))[0], abs=1e-9)


def _knn_brute(f: np.ndarray, k: int) -> np.ndarray:
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # an inf entry normalises to NaN, as in knn_indices
        f = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)  # rows of zeros: similarity 0
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def test_mutual_knn_equals_brute_force() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(80, 10))
    b = a + 0.8 * rng.normal(size=(80, 10))
    for k in (1, 5, 10, 79):
        ka, kb = _knn_brute(a, k), _knn_brute(b, k)
        ref = np.mean([len(set(ka[i]) & set(kb[i])) / k for i in range(80)])
        assert mutual_knn(torch.from_numpy(a), torch.from_numpy(b), k) == pytest.approx(ref, abs=1e-12)
        assert np.array_equal(knn_indices(torch.from_numpy(a), k, block=7).numpy(), ka)
    with pytest.raises(ValueError, match="k <= n - 1"):
        mutual_knn(torch.from_numpy(a), torch.from_numpy(b), 80)


def test_knn_in_row_blocks_from_read_only_means(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default blocks follow from the sample count (here 23 rows of 300, so 14 blocks, the last
    partial) and give the argsort's neighbours, ties included; a read-only numpy array (the shared
    per-sample means) is read without a copy and without torch's non-writable warning."""
    from driftkit.metrics import similarity as S

    rng = np.random.default_rng(3)
    a = rng.normal(size=(300, 16))
    a[[40, 41, 250]] = a[7]  # sample 7's three nearest neighbours tie: the lower indices come first
    ref = _knn_brute(a, 6)
    monkeypatch.setattr(S, "KNN_BLOCK_ELEMENTS", 300 * 23)
    means = a.copy()
    means.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = knn_indices(means, 6).numpy()
    assert np.array_equal(got, ref)
    assert got[7, :3].tolist() == [40, 41, 250]
    assert np.array_equal(knn_indices(torch.from_numpy(a), 6, block=300).numpy(), ref)


def test_knn_many_ties_take_the_lowest_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The k nearest are picked by the k-th smallest value, not by sorting whole rows. Rows drawn
    from +-e_i and zero rows have similarities of exactly -1, 0 or 1, so nearly every row's k-th
    neighbour ties with dozens of others: the lowest indices fill the places, in the stable
    argsort's order, in blocks and whole. A row with NaN similarities is sorted in full instead."""
    from driftkit.metrics import similarity as S

    rng = np.random.default_rng(5)
    basis = np.vstack([np.eye(4), -np.eye(4), np.zeros((1, 4))])
    a = basis[rng.integers(0, 9, size=300)]
    monkeypatch.setattr(S, "KNN_BLOCK_ELEMENTS", 300 * 23)
    for k in (1, 5, 40, 299):
        ref = _knn_brute(a, k)
        assert np.array_equal(knn_indices(torch.from_numpy(a), k).numpy(), ref), k
        assert np.array_equal(knn_indices(torch.from_numpy(a), k, block=300).numpy(), ref), k
    # four entries tie for the last two places: the lowest indices take them, without a full sort
    assert S._nearest_k(torch.tensor([[0.0, 0.0, 0.0, -1.0, 0.0]], dtype=torch.float64), 3).tolist() == [[3, 0, 1]]
    nan_row = torch.tensor([[0.5, math.nan, 0.1, 0.3]], dtype=torch.float64)
    assert S._nearest_k(nan_row, 3).tolist() == [[2, 3, 0]]
    assert S._nearest_k(nan_row, 4) is None  # the NaN would have to be among them
    with_inf = np.array([[1.0, 0.0], [math.inf, 1.0], [1.0, 1.0]])  # row 1 normalises to NaN
    assert np.array_equal(knn_indices(torch.from_numpy(with_inf), 2).numpy(), _knn_brute(with_inf, 2))


def test_knn_ties_are_broken_by_lower_index() -> None:
    # samples 1..4 are copies of one vector: sample 0's neighbours tie, and the lower indices win
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    nn = knn_indices(f, 2)
    assert nn[0].tolist() == [1, 2]
    assert nn[1].tolist() == [2, 3]
    assert nn[4].tolist() == [1, 2]
    assert torch.equal(knn_indices(f, 2), nn)  # deterministic


def test_dominant_features_ties_and_share() -> None:
    share, feats = dominant_features(torch.tensor([1.0, 5.0, 5.0, 1.0, 8.0], dtype=torch.float64), 3)
    assert feats == [4, 1, 2]
    assert share == pytest.approx(18 / 20)


def test_fourth_moments_switched_on_before_any_row_only() -> None:
    """``with_fourth`` upgrades an accumulator nobody has fed (similarity asks after cka), and
    refuses once rows were added without the fourth moments (they could not be completed)."""
    rng = np.random.default_rng(8)
    x, y = torch.from_numpy(rng.normal(size=(40, 5))), torch.from_numpy(rng.normal(size=(40, 5)))
    acc = SimilarityAccumulator(5, 5, fourth=False)
    acc.with_fourth()
    assert acc.stats_class is StandardizedStats
    for s in range(0, 40, 16):
        acc.update(x[s : s + 16], y[s : s + 16])
    ref = _acc(x.numpy(), y.numpy(), 16)
    assert acc.n == 40 and torch.equal(acc.stats.sxy, ref.stats.sxy) and torch.equal(acc.stats.mxy, ref.stats.mxy)
    late = SimilarityAccumulator(5, 5, fourth=False)
    late.update(x, y)
    with pytest.raises(RuntimeError, match="after rows were added"):
        late.with_fourth()


def test_standardized_sums_switched_to_float64_before_any_row_only() -> None:
    """The standardized measures need float64 products (Float64Stats): a similarity accumulator has
    them by default, ``with_standardized`` upgrades one raw CKA made (cka asks first), and refuses
    once rows were added with float32 difference products allowed."""
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(size=(40, 5)))
    y = x + 1e-3 * torch.from_numpy(rng.normal(size=(40, 5)))
    assert SimilarityAccumulator(5, 5, fourth=False).stats_class is Float64Stats
    assert not Float64Stats.DIFFERENCE_PRODUCTS and not StandardizedStats.DIFFERENCE_PRODUCTS
    acc = SimilarityAccumulator(5, 5, fourth=False, standardized=False)
    acc.with_standardized()
    assert acc.stats_class is Float64Stats
    acc.with_fourth()
    assert acc.stats_class is StandardizedStats
    acc.with_standardized()  # already float64: kept
    assert acc.stats_class is StandardizedStats
    late = SimilarityAccumulator(5, 5, fourth=False, standardized=False)
    late.update(x, y)
    with pytest.raises(RuntimeError, match="after rows were added"):
        late.with_standardized()
