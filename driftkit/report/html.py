"""Self-contained HTML report: one file, inline CSS and inline SVG figures, no network fetches.

Each analysis contributes figures that overlay every compared capture (so SFT and RL appear on the
same axes, as in the paper), followed by its summary and per-domain tables for each pair; per-layer
numbers are in a collapsible section. The full JSON body is embedded for machine reading.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from string import Template
from typing import TYPE_CHECKING, Any

from driftkit.registry.analysis import fmt
from driftkit.report.report import positions_label

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.report.report import Report

_PAGE = Template(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;\
max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1rem;margin:1rem 0 .3rem}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:right} th{background:#f4f6f8}
td:first-child,th:first-child{text-align:left}
.meta{color:#555;font-size:.9rem} .note{color:#8a5a00;font-size:.9rem}
figure{margin:.6rem 0 1.2rem} figcaption{color:#555;font-size:.85rem}
figure svg{max-width:100%;height:auto}
details summary{cursor:pointer;color:#0366d6}
</style></head><body>
<h1>driftkit compare</h1>
<p class="meta">$meta</p>
$captures
$notes
$side
$sections
<details><summary>report JSON (driftkit.report/1)</summary>\
<pre style="white-space:pre-wrap;font-size:.75rem">$json</pre></details>
</body></html>
"""
)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """The one HTML table builder of the reports: cells escaped, numbers through :func:`fmt`."""
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c if isinstance(c, str) else fmt(c))}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _result_tables(result: Mapping[str, Any]) -> str:
    out = []
    summary = result.get("summary")
    if isinstance(summary, dict) and summary:
        keys = [k for k, v in summary.items() if not isinstance(v, (dict, list))]
        out.append(table(keys, [[summary[k] for k in keys]]))
    per = result.get("per_domain")
    if isinstance(per, dict) and per:
        cols: list[str] = []
        for d in per.values():
            cols += [k for k, v in d.items() if k not in cols and not isinstance(v, (dict, list))]
        out.append(table(["domain", *cols], [[dom, *[d.get(c) for c in cols]] for dom, d in per.items()]))
    layers = result.get("layers")
    if isinstance(layers, list) and layers and isinstance(layers[0], dict):
        cols = [k for k, v in layers[0].items() if not isinstance(v, (dict, list))]
        rows = [[str(e.get(c)) if c in ("layer", "site") else e.get(c) for c in cols] for e in layers]
        out.append(f"<details><summary>per layer ({len(layers)})</summary>{table(cols, rows)}</details>")
    return "\n".join(out)


def render_html(report: Report) -> str:
    """Builds the self-contained page (long because it is one page template filled in order: header, captures, notes,
    each analysis's panel and figures)."""
    body = report.body
    caps = body.get("captures", [])
    title = "driftkit compare: " + " vs ".join(c["label"] for c in caps)
    meta = (
        f"{body['n_samples']:,} samples, {body['n_tokens']:,} tokens; positions={positions_label(body)}; "
        f"reference A = {html.escape(caps[0]['label'])}; driftkit {body.get('driftkit_version', '?')}"
    )
    cap_table = table(
        ["", "label", "model", "samples", "tokens", "weights sha256"],
        [
            [
                "A" if i == 0 else f"B{i}",
                c["label"],
                str(c.get("model")),
                f"{c.get('n_samples', 0):,}",
                f"{c.get('n_tokens', 0):,}",
                str(c.get("weights_sha256") or "")[:12],
            ]
            for i, c in enumerate(caps)
        ],
    )
    pairs = report.pairs
    notes = "".join(
        f"<p class='note'>{html.escape(p['b'])}: {html.escape(n)}</p>" for p in pairs for n in p.get("notes", [])
    )
    side = ""
    if len(pairs) > 1:
        labels = [c["label"] for c in caps[1:]]
        rows = []
        for name, per_label in body["analyses"].items():
            metrics: list[str] = []
            for s in per_label.values():
                metrics += [m for m in s if m not in metrics]
            rows += [[name, m, *[per_label.get(label, {}).get(m) for label in labels]] for m in metrics]
        side = "<h2>Side by side</h2>" + table(["analysis", "metric", *labels], rows)
    names: list[str] = []
    for p in pairs:
        names += [n for n in p["analyses"] if n not in names]
    sections = []
    for name in names:
        an = report.analysis(name)
        results = {p["b"]: p["analyses"][name] for p in pairs if name in p["analyses"]}
        parts = [f"<h2>{html.escape(an.title if an is not None and an.title else name)}</h2>"]
        if an is not None and an.description:
            parts.append(f"<p class='meta'>{html.escape(an.description)}</p>")
        if an is not None:
            for fig in an.figures(results):
                caption = " — " + html.escape(fig.caption) if fig.caption else ""
                cap = f"<figcaption>{html.escape(fig.title)}{caption}</figcaption>"
                parts.append(f"<figure>{fig.svg}{cap}</figure>")
            parts += an.html_sections(results)
        for label, result in results.items():
            parts.append(f"<h3>{html.escape(label)} vs {html.escape(caps[0]['label'])}</h3>")
            parts.append(_result_tables(result))
        sections.append("\n".join(parts))
    return _PAGE.substitute(
        title=html.escape(title),
        meta=meta,
        captures=cap_table,
        notes=notes,
        side=side,
        sections="\n".join(sections),
        json=html.escape(json.dumps(body, indent=1)),
    )
