"""Benchmark suites: named, ordered lists of benchmarks with their generation budgets, defined in data.

Why data and not code: the core runs whatever benchmarks a suite names and must not know any of them.
A package declares a TOML file of suites as an entry point of the group ``driftkit.suites`` (the
bundled benchmarks declare ``suites.toml`` beside them); a third-party package adds its own suites
the same way. The file format::

    [suite.quick]
    description = "..."
    benchmarks = ["math_heldout", "gpqa", "ifeval"]
    max_new_tokens = { math_heldout = 48, gpqa = 32 }   # optional, per benchmark
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from driftkit.errors import DriftkitError, opt
from driftkit.parsing import load_toml

GROUP = "driftkit.suites"

#: a suite: benchmark name -> its generation budget in the suite (None: the benchmark's own default)
Suite = dict[str, "int | None"]


def read_suites(path: str | Path) -> dict[str, Suite]:
    """The suites of one TOML file (format in the module docstring); a malformed one is a DriftkitError."""
    doc = load_toml(path, "Suite file")
    out: dict[str, Suite] = {}
    for name, table in (doc.get("suite") or {}).items():
        names = table.get("benchmarks") if isinstance(table, dict) else None
        budgets = table.get("max_new_tokens", {}) if isinstance(table, dict) else {}
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(budgets, dict):
            raise DriftkitError(
                f'Suite file {path}: [suite.{name}] needs benchmarks = ["name", ...] and optionally '
                f"max_new_tokens = {{name = tokens}}."
            )
        stray = [b for b in budgets if b not in names]
        if stray:
            raise DriftkitError(
                f"Suite file {path}: [suite.{name}] sets max_new_tokens for {', '.join(stray)}, not in its benchmarks."
            )
        out[name] = {n: (int(budgets[n]) if n in budgets else None) for n in names}
    return out


def suites() -> dict[str, Suite]:
    """Every declared suite by name (the first declaration of a name wins, bundled ones first)."""
    found: dict[str, Suite] = {}
    eps = sorted(entry_points(group=GROUP), key=lambda ep: ep.dist is None or ep.dist.name != "driftkit")
    for ep in eps:
        for name, suite in read_suites(ep.load()).items():
            found.setdefault(name, suite)
    return found


def resolve_suite(name: str) -> Suite:
    """The suite ``name``; an unknown one is a DriftkitError listing the known suites."""
    known = suites()
    if name not in known:
        raise DriftkitError(
            f"Unknown suite {name!r}; available suites: {', '.join(known) or 'none'}. "
            f"Or list benchmarks with {opt('benchmarks', 'a,b')}."
        )
    return dict(known[name])
