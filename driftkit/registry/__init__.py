"""Plugin discovery for the four plugin kinds (probes, analyses, trainers, benchmarks).

Why entry points for the bundled plugins too: the core must never import a plugin by name. The
bundled ones are declared as entry points of the ``driftkit`` distribution itself, so they are found
exactly like a third-party package's plugins, and ``driftkit plugins`` can say where each came from.
A plugin can also be given as ``path/to/file.py:ClassName`` or ``package.module:ClassName`` on the
command line; it is then selectable by its ``name`` for the rest of the run (:func:`register`).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

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


#: plugins given by file or module in this process, by kind and name (see :func:`register`)
_SESSION: dict[str, dict[str, type]] = {kind: {} for kind in GROUPS}


def register(cls: type, kind: str | None = None) -> type:
    """Make plugin class ``cls`` selectable by its ``name`` in this process.

    :func:`load` calls this for every plugin it imports from a file or module, so
    ``--analysis my.py:MyAnalysis --analyses kl,my_analysis`` works; call it yourself to use a class
    defined in a notebook by name. A registered name never replaces an installed plugin of the same
    name: :func:`load` looks installed names up first. Returns ``cls`` (usable as a decorator).
    """
    kind = kind or kind_of(cls)
    name = getattr(cls, "name", "")
    if not name:
        raise DriftkitError(f"{cls.__name__} sets no 'name'; a {kind} plugin needs a short name to be selected by.")
    _SESSION[kind][name] = cls
    return cls


def kind_of(cls: type) -> str:
    for kind in GROUPS:
        if isinstance(cls, type) and issubclass(cls, _base_class(kind)):
            return kind
    raise DriftkitError(
        f"{getattr(cls, '__name__', cls)!r} is not a plugin class; derive it from driftkit.Probe, driftkit.Analysis, "
        f"driftkit.Trainer or driftkit.Benchmark."
    )


def load(kind: str, spec: str) -> type:
    """Resolve a plugin class of ``kind`` from ``spec``.

    ``spec`` is a registered name (bundled, installed through an entry point, or :func:`register`-ed),
    ``path/to/file.py:Class`` (relative to the current folder or absolute) or ``package.module:Class``.
    A class given by file or module is registered under its ``name`` for the rest of the process.
    Raises :class:`DriftkitError` listing the available names when ``spec`` is unknown.
    """
    from driftkit.registry.imports import import_object

    base = _base_class(kind)
    spec = str(spec).strip()
    if ":" in spec:
        cls = import_object(spec, f"{kind} plugin")
        by_path = True
    else:
        by_path = False
        plugins = available(kind)
        if spec in plugins:
            module_name, _, attr = plugins[spec].target.partition(":")
            module = importlib.import_module(module_name)
            cls = getattr(module, attr)
        elif spec in _SESSION[kind]:
            cls = _SESSION[kind][spec]
        else:
            names = sorted(set(plugins) | set(_SESSION[kind]))
            near = difflib.get_close_matches(spec, names, n=1)
            raise DriftkitError(
                f"Unknown {kind} {spec!r}{f' (did you mean {near[0]!r}?)' if near else ''}. Available: "
                f"{', '.join(names) or 'none'}; or pass a file as 'path/to/file.py:ClassName' or a module as "
                f"'package.module:ClassName'. Run 'driftkit plugins' to see all."
            )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        article = "an" if base.__name__[0] in "AEIOU" else "a"
        raise DriftkitError(
            f"{spec} is not {article} {base.__name__} subclass; {article} {kind} plugin must derive from "
            f"driftkit.{base.__name__}."
        )
    if by_path and getattr(cls, "name", "") and cls.name not in available(kind):
        register(cls, kind)
    return cls


def all_plugins() -> list[PluginInfo]:
    """Every discoverable plugin of every kind (for ``driftkit plugins``)."""
    out: list[PluginInfo] = []
    for kind in GROUPS:
        out.extend(available(kind).values())
    return out
