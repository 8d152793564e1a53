"""Which path CKA's chunks took, for tests of the float32 difference products."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from driftkit.metrics import cka


def count_difference_products(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record what each chunk's :meth:`~driftkit.metrics.cka._Stats._difference_products` returns
    from now on (True: float32 difference products, False: float64 products), in order."""
    taken: list[bool] = []
    inner = cka._Stats._difference_products

    def spy(self: Any, x: torch.Tensor, y: torch.Tensor) -> bool:
        taken.append(inner(self, x, y))
        return taken[-1]

    monkeypatch.setattr(cka._Stats, "_difference_products", spy)
    return taken
