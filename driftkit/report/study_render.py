"""The study as HTML (one self-contained file) and as rich terminal tables.

Rendered from the study's data alone (plus its figures), so ``driftkit run`` can print a finished
study back from ``study.json``; the drift table lists whatever rows the analyses contributed.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from driftkit.report.html import table
from driftkit.report.wording import DOMAINS, fmt

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.pipeline.study import Study

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;\
margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}\
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}.findings li{margin:.3em 0}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}svg{max-width:100%;height:auto}\
.muted{color:#777;font-size:.85em}"""


def score_rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Scores per benchmark (grouped by domain) and the transferability index, one row per model."""
    scores = data.get("scores") or {}
    if not scores:
        return [], []
    base = scores["base"]
    benches = sorted(base, key=lambda b: (DOMAINS.index(base[b]["domain"]) if base[b]["domain"] in DOMAINS else 9, b))
    header = ["model", *[f"{b} ({base[b]['domain']})" for b in benches], "TI other", "TI non"]
    tr = (data.get("transfer") or {}).get("models", {})
    rows = []
    for m in data["models"]:
        ti = (tr.get(m) or {}).get("ti") or {}
        tis = [fmt(ti.get(g), ".1f") if m != "base" else "-" for g in ("other", "non")]
        rows.append([m, *[fmt(scores[m].get(b, {}).get("value"), ".1f") for b in benches], *tis])
    return header, rows


def drift_rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The analyses' drift rows as (header, one row per tuned model)."""
    rows = data.get("drift_table") or []
    header = ["model", *[r["measure"] for r in rows]]
    return header, [[n, *[fmt(r["values"].get(n), r["format"]) for r in rows]] for n in data["models"][1:]]


def render_html(study: Study) -> str:
    d = study.data
    name = html.escape(d["experiment"])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>driftkit study: {name}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>driftkit study: {name}</h1>",
        f"<p class='muted'>base <b>{html.escape(str(d['base']))}</b>; "
        f"tuned: {html.escape(', '.join(d['models'][1:]))}</p>",
        "<h2>Findings</h2><ul class='findings'>"
        + "".join(f"<li>{html.escape(f)}</li>" for f in study.findings)
        + "</ul>",
    ]
    h, rows = score_rows(d)
    if rows:
        parts.append("<h2>Scores and transferability</h2>" + table(h, rows))
    parts.append("<h2>Drift summary</h2>" + table(*drift_rows(d)))
    for f in study.figures:
        cap = html.escape(f.caption or f.title)
        parts.append(f"<h2>{html.escape(f.title)}</h2><figure>{f.svg}<figcaption>{cap}</figcaption></figure>")
    parts += study.sections
    dvt = d.get("drift_vs_transfer", [])
    keys = list(dict.fromkeys(k for r in dvt for k in r if k not in ("model", "domain", "score_change")))
    if dvt:
        rows = [
            [r["model"], r["domain"], fmt(r["score_change"], ".1f"), *[fmt(r.get(k), ".3f") for k in keys]] for r in dvt
        ]
        parts.append("<h2>Drift vs transfer</h2>" + table(["model", "domain", "score change", *keys], rows))
    steps = d.get("steps", {})
    run_rows = [[k, fmt(v.get("seconds"), ".1f"), v.get("executions")] for k, v in steps.items()]
    parts.append("<h2>Run</h2>" + table(["step", "seconds", "executions"], run_rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_terminal(study: Study, console: Any) -> None:
    from rich.panel import Panel
    from rich.table import Table

    d = study.data
    h, rows = score_rows(d)
    if rows:
        t = Table(title="scores and transferability index", title_justify="left")
        for c in h:
            t.add_column(c, justify="left" if c == "model" else "right")
        for r in rows:
            t.add_row(*map(str, r))
        console.print(t)
    h, rows = drift_rows(d)
    # metrics as rows, models as columns: stays readable in an 80-column terminal
    t = Table(title="drift from the base", title_justify="left")
    t.add_column("measure")
    for r in rows:
        t.add_column(str(r[0]), justify="right")
    for j, name in enumerate(h[1:], start=1):
        t.add_row(name, *[str(r[j]) for r in rows])
    console.print(t)
    console.print(
        Panel("\n".join(f"• {f}" for f in study.findings) or "(no findings)", title="findings", title_align="left")
    )
