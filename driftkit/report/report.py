"""The :class:`Report` of a comparison: JSON (``driftkit.report/1``), pandas, terminal and HTML.

The JSON body is the source of truth; the terminal and HTML views are rendered from it by the
analyses that produced it, so a report loaded back from JSON renders the same
(:meth:`Report.from_json`, which looks the analyses up by name in the registry).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from driftkit.atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.console import Console

    from driftkit.registry.analysis import Analysis


def jsonable(x: Any) -> Any:
    """Strict-JSON form: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def positions_label(body: Mapping[str, Any]) -> str:
    """The positions a report's numbers come from, as the header shows them: ``response (auto)`` when
    ``--positions auto`` resolved to response tokens, one value per pair if pairs differ."""
    pairs = body.get("pairs") or [body]
    used = list(
        dict.fromkeys(str(p.get("positions") or body.get("options", {}).get("positions", "all")) for p in pairs)
    )
    label = "/".join(used)
    return f"{label} (auto)" if body.get("options", {}).get("positions") == "auto" else label


class Report:
    """Result of :func:`driftkit.compare`.

    ``body`` follows DESIGN.md section 5. With two captures, ``body["analyses"][name]`` is that
    analysis's result. With more, ``body["pairs"]`` holds one such body per (A, other) pair and
    ``body["analyses"][name][label]`` the headline numbers of each pair side by side.
    """

    def __init__(self, body: dict[str, Any], analyses: Mapping[str, Analysis] | None = None) -> None:
        self.body = body
        self._analyses = dict(analyses or {})

    @classmethod
    def build(
        cls,
        schema: str,
        captures: list[dict[str, Any]],
        options: dict[str, Any],
        pairs: list[dict[str, Any]],
        analyses: Mapping[str, Analysis],
    ) -> Report:
        from driftkit import __version__

        head: dict[str, Any] = {
            "schema": schema,
            "driftkit_version": __version__,
            "captures": captures,
            "options": options,
            "n_samples": pairs[0]["n_samples"],
            "n_tokens": pairs[0]["n_tokens"],
        }
        if len(pairs) == 1:
            p = pairs[0]
            body = {
                **head,
                "positions": p.get("positions"),
                "notes": p["notes"],
                "skipped": p.get("skipped", {}),
                "seconds": p["seconds"],
                "analyses": p["analyses"],
            }
        else:
            side: dict[str, dict[str, Any]] = {}
            for p in pairs:
                for name, result in p["analyses"].items():
                    an = analyses.get(name)
                    side.setdefault(name, {})[p["b"]] = an.summary(result) if an is not None else {}
            body = {**head, "analyses": side, "pairs": pairs}
        return cls(jsonable(body), analyses)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> Report:
        """Load a report written by :meth:`to_json` (analyses resolved by name for rendering)."""
        if isinstance(path_or_text, Path) or not str(path_or_text).lstrip().startswith("{"):
            text = Path(path_or_text).read_text()
        else:
            text = str(path_or_text)
        body = json.loads(text)
        from driftkit import registry

        names = set()
        for p in cls(body).pairs:
            names.update(p["analyses"])
        analyses: dict[str, Any] = {}
        for n in names:
            try:
                analyses[n] = registry.load("analysis", n)()
            except Exception:  # noqa: BLE001 - an unknown plugin still loads as data
                pass
        return cls(body, analyses)

    # -- data views ------------------------------------------------------------------------------
    @property
    def pairs(self) -> list[dict[str, Any]]:
        """One body per (A, other) pair, also for a two-capture report."""
        if "pairs" in self.body:
            return self.body["pairs"]
        caps = self.body["captures"]
        return [
            {
                "a": caps[0]["label"],
                "b": caps[1]["label"],
                "n_samples": self.body["n_samples"],
                "n_tokens": self.body["n_tokens"],
                "notes": self.body.get("notes", []),
                "skipped": self.body.get("skipped", {}),
                "seconds": self.body.get("seconds", {}),
                "analyses": self.body["analyses"],
            }
        ]

    def analysis(self, name: str) -> Analysis | None:
        return self._analyses.get(name)

    def to_dict(self) -> dict[str, Any]:
        return self.body

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The report as strict JSON; written atomically to ``path`` when given."""
        text = json.dumps(self.body, indent=indent, allow_nan=False) + "\n"
        if path is not None:
            atomic_write(path, text)
        return text

    def to_frame(self) -> pd.DataFrame:
        """Long-format table: one row per number, columns ``a, b, analysis, scope, item, metric,
        value`` (scope is ``summary``, ``domain`` or ``layer``), ready for pivoting in a notebook."""
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for p in self.pairs:
            for name, result in p["analyses"].items():
                for scope, item, metric, value in _flatten(result):
                    rows.append(
                        {
                            "a": p["a"],
                            "b": p["b"],
                            "analysis": name,
                            "scope": scope,
                            "item": item,
                            "metric": metric,
                            "value": value,
                        }
                    )
        return pd.DataFrame(rows, columns=["a", "b", "analysis", "scope", "item", "metric", "value"])

    # -- views -----------------------------------------------------------------------------------
    def show(self, console: Console | None = None) -> None:
        """Print the terminal report (rich)."""
        from driftkit.report.terminal import render_report

        render_report(self, console)

    def to_html(self, path: str | Path | None = None) -> str:
        """A single self-contained HTML file with tables and inline SVG figures."""
        from driftkit.report.html import render_html

        html = render_html(self)
        if path is not None:
            atomic_write(path, html)
        return html

    def _repr_html_(self) -> str:  # notebooks show the HTML report inline
        return self.to_html()

    def __repr__(self) -> str:
        caps = ", ".join(c["label"] for c in self.body.get("captures", []))
        names = sorted({n for p in self.pairs for n in p["analyses"]})
        return f"<Report {caps}: {', '.join(names)}>"


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flatten(result: Mapping[str, Any]):
    """(scope, item, metric, value) for the numeric leaves of an analysis result."""
    for key, val in result.items():
        if key == "summary" and isinstance(val, dict):
            for m, x in val.items():
                if _num(x) or x is None:
                    yield "summary", "all", m, x
        elif key == "per_domain" and isinstance(val, dict):
            for dom, d in val.items():
                if isinstance(d, dict):
                    for m, x in d.items():
                        if _num(x):
                            yield "domain", dom, m, x
        elif key == "layers" and isinstance(val, list):
            for e in val:
                if isinstance(e, dict):
                    item = e.get("layer")
                    for m, x in e.items():
                        if m != "layer" and _num(x):
                            yield "layer", item, m, x
        elif _num(val):
            yield "summary", "all", key, val
