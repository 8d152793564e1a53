"""Let a subpackage that shares its name with a public function be called like that function.

Why: the public API is ``driftkit.capture(cfg)`` and ``driftkit.compare(paths)``, but ``capture``
and ``compare`` are also subpackages. Once any code imports one of them (``import
driftkit.capture.engine``), Python binds the attribute ``driftkit.capture`` to the *package*,
shadowing the lazily exported function, and the next ``driftkit.capture(...)`` raises "'module'
object is not callable". Making the package object callable (forwarding to the function) keeps
the documented calls working any number of times, in every import order.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def make_callable(module_name: str, func: Callable[..., Any]) -> None:
    """Turn the already imported module ``module_name`` into one whose call runs ``func``."""

    class _CallableModule(types.ModuleType):
        __call__ = staticmethod(func)  # type: ignore[assignment]

    sys.modules[module_name].__class__ = _CallableModule
