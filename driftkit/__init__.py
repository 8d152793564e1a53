"""driftkit: measure how fine-tuning moves a language model.

The public API is imported lazily so ``import driftkit`` stays fast (no torch until needed).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CaptureConfig": ("driftkit.capture", "CaptureConfig"),
    "capture": ("driftkit.capture", "capture"),
    "CaptureReader": ("driftkit.store.reader", "CaptureReader"),
    "load_model": ("driftkit.models", "load_model"),
    "load_prompts": ("driftkit.prompts", "load_prompts"),
    "Probe": ("driftkit.registry.probe", "Probe"),
    "Site": ("driftkit.registry.probe", "Site"),
    "Output": ("driftkit.registry.probe", "Output"),
    "DriftkitError": ("driftkit.errors", "DriftkitError"),
    "compare": ("driftkit.compare.runner", "compare"),
    "Report": ("driftkit.report.report", "Report"),
    "Analysis": ("driftkit.registry.analysis", "Analysis"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'driftkit' has no attribute {name!r}")
