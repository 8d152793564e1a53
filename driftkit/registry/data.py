"""Bundled data sets (``bundled:NAME``), declared by the packages that ship them.

Why through entry points: the core reads prompt sets and hands trainers their data, but must not know
which files a plugin package ships or where they lie. A package declares each set as an entry point
of the group ``driftkit.data`` whose object is a :class:`DataSet` (its name, files and kind); the
core finds it by name like a plugin. A third-party package ships its own sets the same way.

The prefix is ``bundled:``. The former ``probes:`` still works for a while, with a
``DeprecationWarning`` (it misled: the same prefix also named the trainers' math data).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from driftkit.errors import DriftkitDeprecation, DriftkitError

GROUP = "driftkit.data"
PREFIX = "bundled:"
DEPRECATED_PREFIX = "probes:"


@dataclass(frozen=True)
class DataSet:
    """A data set shipped inside a package.

    Parameters
    ----------
    kind
        What reads it: ``"prompts"`` (``{"id", "domain", "text"|"messages"}`` lines, read by
        :func:`driftkit.prompts.load_prompts`) or ``"math"`` (``{"problem", "answer", ...}`` lines, read
        by the trainers and the held-out benchmark).
    files
        JSONL files, concatenated in order.
    description
        One line for listings and error messages.
    """

    kind: str
    files: tuple[Path, ...]
    description: str = ""


def data_sets(kind: str | None = None) -> dict[str, DataSet]:
    """Every declared data set (of ``kind``, when given) by name."""
    found: dict[str, DataSet] = {}
    for ep in entry_points(group=GROUP):
        ds = ep.load()
        if isinstance(ds, DataSet) and (kind is None or ds.kind == kind):
            found.setdefault(ep.name, ds)
    return found


def bundled_name(spec: str) -> str | None:
    """The set name in ``bundled:NAME`` (or the deprecated ``probes:NAME``), else ``None``.

    The deprecated prefix warns with a :class:`~driftkit.errors.DriftkitDeprecation` (a
    ``DeprecationWarning``) that names the replacement.
    """
    if spec.startswith(PREFIX):
        return spec[len(PREFIX) :]
    if spec.startswith(DEPRECATED_PREFIX):
        rest = spec[len(DEPRECATED_PREFIX) :]
        warnings.warn(
            f"The data prefix 'probes:' is deprecated; write '{PREFIX}{rest}' instead of '{spec}'.",
            DriftkitDeprecation,
            stacklevel=3,
        )
        return rest
    return None


def bundled(name: str, kind: str) -> DataSet:
    """The bundled set ``name`` of ``kind``; an unknown name is a :class:`DriftkitError` listing the sets."""
    sets = data_sets(kind)
    if name not in sets:
        known = ", ".join(PREFIX + n for n in sets) or "none are installed"
        raise DriftkitError(f"Unknown bundled data set '{PREFIX}{name}'. Bundled {kind} sets: {known}.")
    missing = [str(f) for f in sets[name].files if not Path(f).is_file()]
    if missing:
        raise DriftkitError(
            f"The bundled data file(s) {', '.join(missing)} of '{PREFIX}{name}' are missing; reinstall driftkit."
        )
    return sets[name]
