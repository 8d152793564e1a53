"""Plugin discovery for the four plugin kinds (probes, analyses, trainers, benchmarks).

Why entry points for the bundled plugins too: the core must never import a plugin by name. The
bundled ones are declared as entry points of the ``driftkit`` distribution itself, so they are found
exactly like a third-party package's plugins, and ``driftkit plugins`` can say where each came from.
A plugin can also be given as ``path/to/file.py:ClassName`` on the command line.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from driftkit.errors import DriftkitError

#: plugin kind -> entry-point group
GROUPS: dict[str, str] = {
    "probe": "driftkit.probes",
    "analysis": "driftkit.analyses",
    "trainer": "driftkit.trainers",
    "benchmark": "driftkit.benchmarks",
}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin was found, before it is imported."""

    kind: str
    name: str
    target: str  # "module:attr" or "file.py:Class"
    source: str  # "bundled", the distribution name, or "file"


def _base_class(kind: str) -> type:
    # Imported lazily: base classes pull in torch/h5py, discovery should stay cheap.
    if kind == "probe":
        from driftkit.registry.probe import Probe

        return Probe
    if kind == "analysis":
        from driftkit.registry.analysis import Analysis

        return Analysis
    if kind == "trainer":
        from driftkit.registry.trainer import Trainer

        return Trainer
    if kind == "benchmark":
        from driftkit.registry.benchmark import Benchmark

        return Benchmark
    raise ValueError(f"unknown plugin kind {kind!r}; expected one of {sorted(GROUPS)}")


def available(kind: str) -> dict[str, PluginInfo]:
    """All plugins of ``kind`` declared through entry points, by name."""
    if kind not in GROUPS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {sorted(GROUPS)}")
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=GROUPS[kind]):
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", None) or "?"
        source = "bundled" if dist_name.replace("_", "-") == "driftkit" else dist_name
        # A third-party plugin never silently replaces a bundled one of the same name.
        if ep.name in found and found[ep.name].source == "bundled":
            continue
        found[ep.name] = PluginInfo(kind, ep.name, ep.value, source)
    return dict(sorted(found.items()))


def _load_from_file(spec: str, kind: str) -> type:
    path_str, _, cls_name = spec.rpartition(":")
    path = Path(path_str)
    if not path.is_file():
        raise DriftkitError(
            f"The {kind} plugin file {path} does not exist. Give an existing Python file as "
            f"'path/to/file.py:ClassName'."
        )
    mod_name = f"driftkit_user_{kind}_{path.stem}_{abs(hash(path.resolve()))}"
    spec_obj = importlib.util.spec_from_file_location(mod_name, path)
    if spec_obj is None or spec_obj.loader is None:
        raise DriftkitError(f"Cannot import {path} as a Python module; check that it is a .py file.")
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[mod_name] = module
    try:
        spec_obj.loader.exec_module(module)
    except Exception as exc:  # user code: report, don't crash with a traceback
        raise DriftkitError(f"Importing the {kind} plugin file {path} failed: {exc!r}. Fix the file and retry.") from exc
    if not hasattr(module, cls_name):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise DriftkitError(f"{path} has no class {cls_name!r}. It defines: {', '.join(names) or 'nothing'}.")
    return getattr(module, cls_name)


def load(kind: str, spec: str) -> type:
    """Resolve a plugin class from a registered name or ``file.py:Class``.

    Raises :class:`DriftkitError` listing the available names when ``spec`` is unknown.
    """
    base = _base_class(kind)
    if ":" in spec and (spec.split(":")[0].endswith(".py") or "/" in spec):
        cls = _load_from_file(spec, kind)
    else:
        plugins = available(kind)
        if spec not in plugins:
            raise DriftkitError(
                f"Unknown {kind} {spec!r}. Available: {', '.join(plugins) or 'none'}; or pass a file "
                f"as 'path/to/file.py:ClassName'. Run 'driftkit plugins' to see all."
            )
        module_name, _, attr = plugins[spec].target.partition(":")
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise DriftkitError(f"{spec} is not a {base.__name__} subclass; a {kind} plugin must derive from driftkit.{base.__name__}.")
    return cls


def all_plugins() -> list[PluginInfo]:
    """Every discoverable plugin of every kind (for ``driftkit plugins``)."""
    out: list[PluginInfo] = []
    for kind in GROUPS:
        out.extend(available(kind).values())
    return out
