"""Streaming CKA vs the gram-space formulas (Kornblith et al. 2019; Song et al. 2012)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cka_spy import count_difference_products

from driftkit.metrics import cka
from driftkit.metrics.cka import StreamingCKA, linear_cka


def _gram_biased(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, lg = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((k * lg).sum() / np.sqrt((k * k).sum() * (lg * lg).sum()))


def _hsic_unbiased(k: np.ndarray, lg: np.ndarray) -> float:
    n = k.shape[0]
    k, lg = k.copy(), lg.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(lg, 0.0)
    one = np.ones(n)
    return float(
        (
            (k * lg).sum()
            + (one @ k @ one) * (one @ lg @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ lg @ one)
        )
        / (n * (n - 3))
    )


def _gram_debiased(x: np.ndarray, y: np.ndarray) -> float:
    # The U-statistic is invariant to a constant shift, but with offsets ~1e4 the raw gram entries
    # (~1e8) cancel catastrophically even in float64, so the reference centres first (as Kornblith
    # et al.'s reference code does). test_debiased_reference_is_shift_invariant checks the invariance.
    x, y = x - x.mean(0), y - y.mean(0)
    k, lg = x @ x.T, y @ y.T
    return _hsic_unbiased(k, lg) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(lg, lg))


def _stream(x: np.ndarray, y: np.ndarray, chunk: int):
    acc = StreamingCKA(x.shape[1], y.shape[1])
    for s in range(0, len(x), chunk):
        acc.update(torch.from_numpy(x[s : s + chunk]), torch.from_numpy(y[s : s + chunk]))
    return acc.result()


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_cka_matches_gram_space_random(chunk: int) -> None:
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=(n, 12))
    y = x @ rng.normal(size=(12, 9)) + 0.7 * rng.normal(size=(n, 9)) + 3.0
    r = _stream(x, y, chunk)
    assert r.n == n
    assert r.linear_cka == pytest.approx(_gram_biased(x, y), abs=1e-10)
    assert r.debiased_cka == pytest.approx(_gram_debiased(x, y), abs=1e-10)


def test_cka_massive_activation_dims_float32_storage() -> None:
    """A few dimensions with offsets ~1e4 x their spread, stored as float32 (like LLM residuals)."""
    rng = np.random.default_rng(1)
    n, d = 400, 16
    base = rng.normal(size=(n, d))
    x = base.copy()
    x[:, [2, 9]] += np.array([3000.0, -8000.0])
    y = base @ rng.normal(size=(d, d)) * 0.5 + rng.normal(size=(n, d))
    y[:, 5] += 20000.0
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    # the reference sees exactly the stored float32 values, in float64
    xr, yr = x32.astype(np.float64), y32.astype(np.float64)
    acc = StreamingCKA(d, d)
    for s in range(0, n, 50):
        acc.update(torch.from_numpy(x32[s : s + 50]), torch.from_numpy(y32[s : s + 50]))
    r = acc.result()
    assert r.linear_cka == pytest.approx(_gram_biased(xr, yr), abs=1e-9)
    assert r.debiased_cka == pytest.approx(_gram_debiased(xr, yr), abs=1e-9)
    # sanity: the offsets matter numerically but not for CKA
    assert abs(r.linear_cka) < 1.0


def test_cka_orthogonal_and_isotropic_invariance() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 20)) + rng.normal(size=20) * 5
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    r = linear_cka(torch.from_numpy(x), torch.from_numpy(3.7 * x @ q), chunk=128)
    assert r.linear_cka == pytest.approx(1.0, abs=1e-12)
    assert r.debiased_cka == pytest.approx(1.0, abs=1e-12)


def test_cka_independent_is_near_zero_debiased() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(500, 10)), rng.normal(size=(500, 10))
    r = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    # the biased estimator is inflated by d/n; the debiased one is centred on zero
    assert abs(r.debiased_cka) < 0.01 < r.linear_cka


def test_cka_rejects_mismatched_rows() -> None:
    acc = StreamingCKA(3, 3)
    with pytest.raises(ValueError):
        acc.update(torch.zeros(4, 3), torch.zeros(5, 3))


def test_debiased_reference_is_shift_invariant() -> None:
    """The unbiased HSIC U-statistic itself (no centering) is shift invariant on well-scaled data."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 5))
    y = x @ rng.normal(size=(5, 4)) + rng.normal(size=(60, 4))
    raw = _hsic_unbiased(x @ x.T, y @ y.T)
    xs, ys = x + 4.0, y - 2.5
    assert _hsic_unbiased(xs @ xs.T, ys @ ys.T) == pytest.approx(raw, rel=1e-9)
    assert _stream(xs, ys, 16).debiased_cka == pytest.approx(_gram_debiased(x, y), abs=1e-12)


def test_cka_sink_row_in_first_chunk() -> None:
    """First chunk: one attention-sink row at 1e5 x the spread plus a few normal rows, then many
    normal chunks. A pilot mean from that chunk was 5.6e-6 off; merged centred sums must hold 1e-6."""
    rng = np.random.default_rng(5)
    n, d = 600, 12
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=(n, d))
    x[0] += 1e5 * rng.normal(size=d)
    y[0] += 1e5 * rng.normal(size=d)
    acc = StreamingCKA(d, d)
    acc.update(torch.from_numpy(x[:5]), torch.from_numpy(y[:5]))
    for s in range(5, n, 23):
        acc.update(torch.from_numpy(x[s : s + 23]), torch.from_numpy(y[s : s + 23]))
    r = acc.result()
    assert r.n == n
    assert r.linear_cka == pytest.approx(_gram_biased(x, y), abs=1e-6)
    assert r.debiased_cka == pytest.approx(_gram_debiased(x, y), abs=1e-6)
    # without the sink the debiased value is a different number: the row really matters
    assert abs(_gram_debiased(x[1:], y[1:]) - r.debiased_cka) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cka_identical_is_exactly_one(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.normal(size=(257, 24)) * 3 + 40).to(dtype)
    x[0] *= 100
    r = linear_cka(x, x.clone(), chunk=32)
    assert r.linear_cka == 1.0 and r.debiased_cka == 1.0


def test_cka_identical_is_exactly_one_with_gram_panels() -> None:
    """Wide enough for the Gram matrices' panel products (driftkit.metrics.products.gram), which may
    sum in another order than the plain cross-product: identical chunks share their sums instead."""
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(size=(300, 520)) * 3 + 40).float()
    x[:, 0] += 1e3  # a massive-activation dimension
    r = linear_cka(x, x.clone(), chunk=64)
    assert r.linear_cka == 1.0 and r.debiased_cka == 1.0


def test_cka_chunks_identical_in_part_match_the_gram_space_formula() -> None:
    """Chunks that are identical in both representations (the shared-sums path) merged with chunks
    that are not give the gram-space values."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 300))
    y = x.copy()
    y[100:] += 0.3 * rng.normal(size=(100, 300))  # rows 0..99 stay identical
    r = _stream(x, y, 50)
    # the drifting chunks (|D|^2 = 0.09 |X|^2) take the float32 difference products, whose error is
    # at most float32's precision times that ratio (5e-9; test_cka_small_drift_... below)
    assert r.linear_cka == pytest.approx(_gram_biased(x, y), abs=1e-9)
    assert r.debiased_cka == pytest.approx(_gram_debiased(x, y), abs=1e-9)
    assert r.debiased_cka < 0.999


def _llm_like(n: int, d: int, s: float, seed: int, sink: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Residual-stream-like rows (a decaying spectrum, a massive-activation dimension, a rogue
    dimension, a row ``sink`` times longer than the rest) and a copy drifted by ``s`` (noise plus a
    linear map)."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(10.0, 0.1, d)
    x = rng.normal(size=(n, d)) * scale
    x[:, 3] += 500.0  # mean far above its spread
    x[:, 7] *= 40.0  # spread far above the rest
    x[0] *= sink  # far out of the bulk
    drift = rng.normal(size=(n, d)) * scale + (x - x.mean(0)) @ rng.normal(size=(d, d)) / d
    return x, x + s * drift


def _gram_space(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(biased, debiased) CKA from the centred N x N Gram matrices (float64); the biased one as
    :func:`_gram_biased`, with the centring applied to the rows rather than as H K H (n^3)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, lg = xc @ xc.T, yc @ yc.T
    return float((k * lg).sum() / np.sqrt((k * k).sum() * (lg * lg).sum())), _gram_debiased(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s", [1e-2, 1e-1, 0.3])
def test_cka_small_drift_float32_difference_products(monkeypatch, dtype: torch.dtype, s: float) -> None:
    """Small drift (an RL checkpoint's) takes the float32 products of X and D = Y - X and still
    matches the float64 gram-space formula to 1e-5 of 1 - CKA (measured: at most 5e-7 of it): the
    error is float32's precision times about (|D| / |X|)^2, the order of 1 - CKA itself, where two
    float32 products of X and Y would be off by ~1e-7 of CKA whatever the drift."""
    n, d, chunk = 1536, 288, 512  # wide enough for gram's panels
    x, y = _llm_like(n, d, s, seed=9)
    xs, ys = torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)
    ref = _gram_space(xs.double().numpy(), ys.double().numpy())  # the stored values, in float64
    taken = count_difference_products(monkeypatch)
    acc = StreamingCKA(d, d)
    for i in range(0, n, chunk):
        acc.update(xs[i : i + chunk], ys[i : i + chunk])
    r = acc.result()
    assert taken == [True] * (n // chunk)
    for got, want in zip((r.linear_cka, r.debiased_cka), ref):
        assert 1e-8 < 1.0 - want < 1e-3  # small drift, but drift
        assert abs(got - want) <= 1e-5 * (1.0 - want)


def test_cka_chunk_ruled_by_a_sink_row_stays_float64(monkeypatch) -> None:
    """A chunk whose sink row (3,000x the spread) makes up most of |X^T X|_F^2 takes the float64
    products even at small drift: debiased CKA subtracts the rows' own terms from that sum, and
    float32's error in it would swamp the rest (it made 1 - debiased CKA 16% off). The other chunks
    still take float32, and the result agrees with float64 throughout to 1e-5 of 1 - CKA."""
    x, y = _llm_like(1536, 288, 0.1, seed=9, sink=3000.0)
    xs, ys = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    taken = count_difference_products(monkeypatch)
    r = linear_cka(xs, ys, chunk=512)
    assert taken == [False, True, True]
    monkeypatch.setattr(cka, "DIFFERENCE_MAX", -1.0)
    exact = linear_cka(xs, ys, chunk=512)
    for got, want in ((r.linear_cka, exact.linear_cka), (r.debiased_cka, exact.debiased_cka)):
        assert 0.0 < 1.0 - want < 1e-3
        assert abs(got - want) <= 1e-5 * (1.0 - want)


def test_cka_large_drift_stays_float64(monkeypatch) -> None:
    """Drift past DIFFERENCE_MAX (here a rotation: |D|^2 ~ 2 |X|^2) takes the float64 products: the
    same numbers bit for bit as with the float32 path switched off."""
    x, _ = _llm_like(600, 288, 0.0, seed=10)
    q, _ = np.linalg.qr(np.random.default_rng(11).normal(size=(288, 288)))
    xs, ys = torch.from_numpy(x), torch.from_numpy(x @ q)
    taken = count_difference_products(monkeypatch)
    r = linear_cka(xs, ys, chunk=200)
    assert taken == [False] * 3
    monkeypatch.setattr(cka, "DIFFERENCE_MAX", -1.0)
    assert linear_cka(xs, ys, chunk=200) == r
    assert r.linear_cka == pytest.approx(1.0, abs=1e-12)  # CKA is rotation invariant


def test_cka_reduced_precision_matmul_stays_float64(monkeypatch) -> None:
    """Under torch.set_float32_matmul_precision("medium") (bf16 products on oneDNN CPUs, TF32 on
    CUDA) a float32 product keeps ~3 digits: small drift then takes the float64 products."""
    x, y = _llm_like(600, 288, 1e-2, seed=12)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    exact = linear_cka(xs, ys, chunk=200)
    taken = count_difference_products(monkeypatch)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        r = linear_cka(xs, ys, chunk=200)
    finally:
        torch.set_float32_matmul_precision(before)
    assert taken == [False] * 3
    monkeypatch.setattr(cka, "DIFFERENCE_MAX", -1.0)
    assert r == linear_cka(xs, ys, chunk=200)
    assert r.linear_cka == pytest.approx(exact.linear_cka, abs=1e-9)
