"""The shared products (driftkit.metrics.products) against numpy's float64 products."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftkit.metrics.products import GRAM_MIN_PANEL, GRAM_PANELS, gram, rowdot


@pytest.mark.parametrize("d", [7, 2 * GRAM_MIN_PANEL - 1, 2 * GRAM_MIN_PANEL, 577, GRAM_PANELS * GRAM_MIN_PANEL + 3])
def test_gram_is_the_product(d: int) -> None:
    """Every panel split (none below two panels' width, uneven panels at 577) gives x^T x to float64
    rounding, the mirrored lower triangle included."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(301, d, generator=g, dtype=torch.float64) * torch.logspace(0, 3, d, dtype=torch.float64)
    got = gram(x)
    ref = x.numpy().T @ x.numpy()
    assert got.shape == (d, d)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-9 * np.abs(ref).max())


def test_gram_float32_and_a_strided_input() -> None:
    x64 = torch.randn(64, 3 * GRAM_MIN_PANEL, dtype=torch.float64)
    wide = torch.cat([x64, x64], 1)[:, ::2]  # a non-contiguous (strided) view
    np.testing.assert_allclose(gram(wide).numpy(), wide.numpy().T @ wide.numpy(), rtol=1e-12, atol=1e-10)
    x32 = x64.float()
    np.testing.assert_allclose(gram(x32).double().numpy(), x64.numpy().T @ x64.numpy(), rtol=1e-4, atol=1e-3)


def test_rowdot_is_the_row_wise_dot_product() -> None:
    a, b = torch.randn(5, 1000, dtype=torch.float64), torch.randn(5, 1000, dtype=torch.float64)
    np.testing.assert_allclose(rowdot(a, b).numpy(), np.einsum("ij,ij->i", a.numpy(), b.numpy()), rtol=1e-12)
