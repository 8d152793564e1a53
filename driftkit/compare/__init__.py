"""Pairing captures, comparability checks and running analyses (:func:`compare`).

Why the module is callable: the public API is ``driftkit.compare(paths, ...)``, but once any code
imports this subpackage (``driftkit.compare.pair``), Python binds the attribute ``driftkit.compare``
to the *package*, shadowing the lazily exported function. Making the package itself callable
(forwarding to :func:`compare`) keeps ``driftkit.compare([...])`` working in every import order.
"""
import sys
import types
from typing import Any

from driftkit.compare.pair import CapturePair, CompareOptions, check_comparable
from driftkit.compare.runner import SCHEMA, compare

__all__ = ["CapturePair", "CompareOptions", "SCHEMA", "check_comparable", "compare"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
