"""Shared wording of study findings: domain names, "no measurable change", number formats.

Why a module: every analysis writes its own findings (the study names no analysis), and the
sentences of all of them should read alike, with the same names for the prompt domains of
DESIGN.md section 3 and the same rule for when a number is too small to be a change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

#: the prompt domains of the bundled prompt sets, in reading order, with their names in sentences
DOMAINS = ("math", "other", "non")
DOMAIN_NAMES = {"math": "math", "other": "other reasoning", "non": "non-reasoning"}
#: below this a drift number is rounding noise of float16 storage, not a change
NEGLIGIBLE = 1e-9
NO_CHANGE = "no measurable change"


def domain_name(d: str) -> str:
    """The domain as a sentence names it (``non`` -> ``non-reasoning``; free-text domains as given)."""
    return DOMAIN_NAMES.get(d, d)


def ordered_domains(domains: Iterable[str]) -> list[str]:
    """The bundled domains in their reading order first, then any others sorted."""
    given = set(domains)
    return [d for d in DOMAINS if d in given] + sorted(given - set(DOMAINS))


def negligible(x: Any) -> bool:
    """True for None, NaN and magnitudes below :data:`NEGLIGIBLE`."""
    return x is None or not math.isfinite(float(x)) or abs(float(x)) < NEGLIGIBLE


def fmt(x: Any, spec: str = ".2f") -> str:
    """``format(x, spec)``, or ``n/a`` for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)
