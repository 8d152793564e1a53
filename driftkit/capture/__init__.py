"""The capture engine (see :mod:`driftkit.capture.engine`)."""
from driftkit.capture.config import CaptureConfig
from driftkit.capture.engine import CaptureEngine, build_samples, capture

__all__ = ["CaptureConfig", "CaptureEngine", "build_samples", "capture"]
