"""Streaming linear CKA (biased and debiased) in feature space.

Why feature space: the textbook CKA builds two N x N Gram matrices, which for a capture of 200,000
tokens would need 320 GB. Linear CKA only needs cross-covariances, so we accumulate d x d matrices
over token chunks and never hold more than one chunk: memory O(d^2), independent of N, one pass.

Why a pilot mean: LLM residual streams have a few "massive activation" dimensions whose mean is
hundreds or thousands of times their spread. Accumulating raw ``sum x x^T`` and subtracting
``n * mean mean^T`` at the end would cancel catastrophically. We subtract the first chunk's mean
(the pilot) from every row in float64 before accumulating; the remaining offset is tiny, so the
final centering is well conditioned. Every formula below is written for the shifted data; linear
CKA (biased and debiased) is invariant to a constant shift of either representation.

Debiased CKA uses the unbiased HSIC estimator (Song et al. 2012) in the feature-space form of
Kornblith et al. 2019 / Nguyen et al. 2021::

    hsic_u(X, Y) ~ ||Xc^T Yc||_F^2 - n/(n-2) * sum_i |xc_i|^2 |yc_i|^2 + |Xc|_F^2 |Yc|_F^2 / ((n-1)(n-2))

(up to the factor 1/(n(n-3)), which cancels in the ratio). ``sum_i |xc_i|^2 |yc_i|^2`` involves
the *final* centered rows, which a one-pass algorithm never sees; we expand it exactly into sums that
can be accumulated (see :meth:`StreamingCKA._row_norm_product`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_F64 = torch.float64


@dataclass(frozen=True)
class CKAResult:
    """Linear CKA of two representations of the same ``n`` rows."""

    linear_cka: float
    debiased_cka: float
    n: int


class _Side:
    """Accumulators that depend on one representation only."""

    def __init__(self, d: int, device: torch.device) -> None:
        self.pilot: torch.Tensor | None = None
        self.s = torch.zeros(d, dtype=_F64, device=device)  # sum of shifted rows
        self.sq = torch.zeros(d, d, dtype=_F64, device=device)  # sum x x^T
        self.a_sum = torch.zeros((), dtype=_F64, device=device)  # sum |x|^2
        self.a2_sum = torch.zeros((), dtype=_F64, device=device)  # sum |x|^4
        self.a_x = torch.zeros(d, dtype=_F64, device=device)  # sum |x|^2 x

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(_F64)
        if self.pilot is None:
            self.pilot = x.mean(0)
        return x - self.pilot

    def update(self, x: torch.Tensor, a: torch.Tensor) -> None:
        self.s += x.sum(0)
        self.sq += x.T @ x
        self.a_sum += a.sum()
        self.a2_sum += a @ a
        self.a_x += a @ x


class StreamingCKA:
    """Accumulate linear CKA between two representations over row chunks.

    ``update(x, y)`` takes matching rows (same tokens) of both representations, any float dtype;
    ``result()`` may be called at any time. Memory: about ``(d_x + d_y)^2`` float64 numbers.
    """

    def __init__(self, d_x: int, d_y: int, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.x = _Side(d_x, self.device)
        self.y = _Side(d_y, self.device)
        self.xy = torch.zeros(d_x, d_y, dtype=_F64, device=self.device)  # sum x y^T
        self.ab_sum = torch.zeros((), dtype=_F64, device=self.device)  # sum |x|^2 |y|^2
        self.a_y = torch.zeros(d_y, dtype=_F64, device=self.device)  # sum |x|^2 y
        self.b_x = torch.zeros(d_x, dtype=_F64, device=self.device)  # sum |y|^2 x
        self.n = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs matching rows, got {x.shape[0]} and {y.shape[0]}")
        if x.shape[0] == 0:
            return
        x = self.x.shift(x.to(self.device))
        y = self.y.shift(y.to(self.device))
        a = (x * x).sum(1)
        b = (y * y).sum(1)
        self.x.update(x, a)
        self.y.update(y, b)
        self.xy += x.T @ y
        self.ab_sum += a @ b
        self.a_y += a @ y
        self.b_x += b @ x
        self.n += x.shape[0]

    # -- finalisation ----------------------------------------------------------------------------
    def _centered_cross(self, sxy: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        return sxy - torch.outer(sx, sy) / self.n

    def _row_norm_product(
        self,
        ab: torch.Tensor,
        a_sum: torch.Tensor,
        b_sum: torch.Tensor,
        a_y: torch.Tensor,
        b_x: torch.Tensor,
        sxy: torch.Tensor,
        mx: torch.Tensor,
        my: torch.Tensor,
    ) -> torch.Tensor:
        """``sum_i |x_i - mx|^2 |y_i - my|^2`` from one-pass sums.

        With a_i = |x_i|^2, u_i = x_i.mx, M = |mx|^2 (and b, v, N for y), each factor is
        ``a_i - 2 u_i + M``; multiplying out and summing gives only sums we accumulated.
        """
        n = self.n
        M = mx @ mx
        N = my @ my
        return ab - 2 * (my @ a_y) - 2 * (mx @ b_x) + 4 * (mx @ sxy @ my) + N * a_sum + M * b_sum - 3 * n * M * N

    def result(self) -> CKAResult:
        n = self.n
        if n < 4:
            raise ValueError(f"debiased CKA needs at least 4 rows, got {n}")
        X, Y = self.x, self.y
        mx, my = X.s / n, Y.s / n
        cxy = self._centered_cross(self.xy, X.s, Y.s)
        cxx = self._centered_cross(X.sq, X.s, X.s)
        cyy = self._centered_cross(Y.sq, Y.s, Y.s)
        hxy, hxx, hyy = (cxy * cxy).sum(), (cxx * cxx).sum(), (cyy * cyy).sum()
        biased = float(hxy / torch.sqrt(hxx * hyy))

        ssx = X.a_sum - n * (mx @ mx)  # sum |x_i - mx|^2
        ssy = Y.a_sum - n * (my @ my)
        qxy = self._row_norm_product(self.ab_sum, X.a_sum, Y.a_sum, self.a_y, self.b_x, self.xy, mx, my)
        qxx = self._row_norm_product(X.a2_sum, X.a_sum, X.a_sum, X.a_x, X.a_x, X.sq, mx, mx)
        qyy = self._row_norm_product(Y.a2_sum, Y.a_sum, Y.a_sum, Y.a_x, Y.a_x, Y.sq, my, my)
        k1, k2 = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
        dxy = hxy - k1 * qxy + k2 * ssx * ssy
        dxx = hxx - k1 * qxx + k2 * ssx * ssx
        dyy = hyy - k1 * qyy + k2 * ssy * ssy
        denom = dxx * dyy
        debiased = float(dxy / torch.sqrt(denom)) if denom > 0 else math.nan
        return CKAResult(linear_cka=biased, debiased_cka=debiased, n=n)


def linear_cka(x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> CKAResult:
    """Linear CKA of two in-memory (n, d) arrays via the streaming kernel (convenience)."""
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    acc = StreamingCKA(x.shape[1], y.shape[1])
    for s in range(0, x.shape[0], chunk):
        acc.update(x[s : s + chunk], y[s : s + chunk])
    return acc.result()
