"""driftkit: measure how fine-tuning moves a language model.

The public API is imported lazily so ``import driftkit`` stays fast (no torch until needed).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CaptureConfig": ("driftkit.capturing", "CaptureConfig"),
    "capture": ("driftkit.capturing", "capture"),
    "CaptureReader": ("driftkit.store.reader", "CaptureReader"),
    "load_model": ("driftkit.models", "load_model"),
    "load_prompts": ("driftkit.prompts", "load_prompts"),
    "Probe": ("driftkit.registry.probe", "Probe"),
    "Site": ("driftkit.registry.probe", "Site"),
    "Output": ("driftkit.registry.probe", "Output"),
    "DriftkitError": ("driftkit.errors", "DriftkitError"),
    "compare": ("driftkit.comparing.runner", "compare"),
    "Report": ("driftkit.report.report", "Report"),
    "Analysis": ("driftkit.registry.analysis", "Analysis"),
    # the plugin author's public names (docs/plugins.md)
    "Option": ("driftkit.registry.options", "Option"),
    "Trainer": ("driftkit.registry.trainer", "Trainer"),
    "TrainContext": ("driftkit.registry.trainer", "TrainContext"),
    "TrainResult": ("driftkit.registry.trainer", "TrainResult"),
    "Benchmark": ("driftkit.registry.benchmark", "Benchmark"),
    "Figure": ("driftkit.registry.analysis", "Figure"),
    "ModelLayout": ("driftkit.registry.probe", "ModelLayout"),
    "StaticArray": ("driftkit.registry.probe", "StaticArray"),
    "Batch": ("driftkit.registry.probe", "Batch"),
    "first_tensor": ("driftkit.registry.probe", "first_tensor"),
    "parse_layers": ("driftkit.registry.probe", "parse_layers"),
    "register_plugin": ("driftkit.registry", "register"),
    # results as Python objects with to_frame()/to_json() (docs/python.md)
    "read_scores": ("driftkit.scores", "read_scores"),
    "Scores": ("driftkit.scores", "Scores"),
    "transferability": ("driftkit.scores", "transfer"),
    "TransferResult": ("driftkit.metrics.transfer", "TransferResult"),
    "load_study": ("driftkit.results", "load_study"),
    "StudyResult": ("driftkit.results", "StudyResult"),
    "load_plugin": ("driftkit.registry", "load"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'driftkit' has no attribute {name!r}")
