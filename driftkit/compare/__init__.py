"""Pairing captures, comparability checks and running analyses (:func:`compare`).

The package is callable (``driftkit.compare([...])`` forwards to :func:`compare`), so the public
call works whatever was imported first; see :mod:`driftkit.callable_module`.
"""

from driftkit.callable_module import make_callable
from driftkit.compare.pair import CapturePair, CompareOptions, check_comparable
from driftkit.compare.runner import SCHEMA, compare

__all__ = ["CapturePair", "CompareOptions", "SCHEMA", "check_comparable", "compare"]

make_callable(__name__, compare)
