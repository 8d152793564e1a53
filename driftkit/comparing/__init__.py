"""Pairing captures, comparability checks and running analyses; the public call is ``driftkit.compare``.

Named ``comparing`` rather than ``compare`` so that importing it never shadows the function
``driftkit.compare`` (see :mod:`driftkit.capturing` for the same reason).
"""

from driftkit.comparing.pair import CapturePair, CompareOptions, check_comparable
from driftkit.comparing.runner import SCHEMA, compare

__all__ = ["CapturePair", "CompareOptions", "SCHEMA", "check_comparable", "compare"]
