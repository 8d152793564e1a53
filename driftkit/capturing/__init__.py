"""The capture engine (see :mod:`driftkit.capturing.engine`); the public call is ``driftkit.capture``.

Why the package is not named ``capture``: a subpackage shares the attribute namespace of its parent,
so a package ``driftkit.capture`` would replace the function ``driftkit.capture`` as soon as anything
imported it, and the documented call would break after its first use.
"""

from driftkit.capturing.config import CaptureConfig
from driftkit.capturing.engine import CaptureEngine, build_samples, capture

__all__ = ["CaptureConfig", "CaptureEngine", "build_samples", "capture"]
