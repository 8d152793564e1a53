"""The capture engine (see :mod:`driftkit.capture.engine`).

The package is callable (``driftkit.capture(cfg)`` forwards to :func:`capture`), so the public call
works any number of times whatever was imported first; see :mod:`driftkit.callable_module`.
"""

from driftkit.callable_module import make_callable
from driftkit.capture.config import CaptureConfig
from driftkit.capture.engine import CaptureEngine, build_samples, capture

__all__ = ["CaptureConfig", "CaptureEngine", "build_samples", "capture"]

make_callable(__name__, capture)
