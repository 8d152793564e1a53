"""Streaming CKA vs the gram-space formulas (Kornblith et al. 2019; Song et al. 2012)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    assert r.linear_cka == pytest.approx(_gram_biased(x, y), abs=1e-10)
    assert r.debiased_cka == pytest.approx(_gram_debiased(x, y), abs=1e-10)
    assert r.debiased_cka < 0.999
