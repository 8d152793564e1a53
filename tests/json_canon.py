"""JSON-comparable form of compare results, for tests that check two runs give the same numbers."""

from __future__ import annotations

import math
from typing import Any


def canon(x: Any, drop: tuple[str, ...] = ("seconds",)) -> Any:
    """``x`` with NaN made comparable (NaN == NaN) and the keys in ``drop`` (timings) left out;
    floats are otherwise compared bit for bit."""
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, dict):
        return {k: canon(v, drop) for k, v in x.items() if k not in drop}
    if isinstance(x, (list, tuple)):
        return [canon(v, drop) for v in x]
    return x
