"""Terminal report: what a researcher should grasp in ten seconds.

Layout: the captures compared, notes (skipped sites/analyses), then each analysis's own compact
view (sparklines over layers, per-domain tables, the biggest movers); with more than two captures
a side-by-side table of every analysis's headline numbers closes the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from driftkit.registry.analysis import fmt
from driftkit.report.report import positions_label

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.report.report import Report

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], lo: float | None = None, hi: float | None = None) -> str:
    """Unicode block sparkline; None/NaN show as a space. ``lo``/``hi`` fix the scale."""
    finite = [v for v in values if v is not None and v == v]
    if not finite:
        return ""
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    out = []
    for v in values:
        if v is None or v != v:
            out.append(" ")
        elif span <= 0:
            out.append(BLOCKS[0])
        else:
            k = int(round((min(max(v, lo), hi) - lo) / span * (len(BLOCKS) - 1)))
            out.append(BLOCKS[k])
    return "".join(out)


def bar(fraction: float, width: int = 20) -> str:
    """A horizontal bar of ``width`` cells for a fraction in [0, 1]."""
    fraction = 0.0 if fraction is None or fraction != fraction else min(max(fraction, 0.0), 1.0)
    full = int(round(fraction * width))
    return "█" * full + "·" * (width - full)


def _captures_table(report: Report) -> Table:
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("")
    t.add_column("capture")
    t.add_column("model")
    t.add_column("samples", justify="right")
    t.add_column("tokens", justify="right")
    for i, c in enumerate(report.body.get("captures", [])):
        t.add_row(
            "A (ref)" if i == 0 else "B" if len(report.body["captures"]) == 2 else f"B{i}",
            Text(c["label"]),
            Text(str(c.get("model", "?"))),
            f"{c.get('n_samples', 0):,}",
            f"{c.get('n_tokens', 0):,}",
        )
    return t


def _side_by_side(report: Report) -> Table:
    labels = [c["label"] for c in report.body["captures"][1:]]
    t = Table(
        title=f"side by side (each vs {report.body['captures'][0]['label']})", title_justify="left", header_style="bold"
    )
    t.add_column("analysis")
    t.add_column("metric")
    for lab in labels:
        t.add_column(lab, justify="right")
    for name, per_label in report.body["analyses"].items():
        metrics: list[str] = []
        for summ in per_label.values():
            metrics += [m for m in summ if m not in metrics]
        for m in metrics:
            t.add_row(Text(name), Text(m), *[fmt(per_label.get(lab, {}).get(m)) for lab in labels])
    return t


def render_report(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    body = report.body
    opts = body.get("options", {})
    sel = f"positions={positions_label(body)}"
    if opts.get("domains"):
        sel += f", domains={','.join(opts['domains'])}"
    if opts.get("layers") not in (None, "all"):
        sel += f", layers={opts['layers']}"
    if opts.get("max_tokens"):
        sel += f", max_tokens={opts['max_tokens']:,} (seed {opts.get('seed', 0)})"
    console.rule(f"[bold]driftkit compare[/] · {body['n_samples']:,} samples · {body['n_tokens']:,} tokens · {sel}")
    console.print(_captures_table(report))
    pairs = report.pairs
    for p in pairs:
        if len(pairs) > 1:
            console.rule(f"[bold]{p['b']}[/] vs {p['a']}")
        for note in p.get("notes", []):
            console.print(Text(f"note: {note}", style="yellow"))
        for name, result in p["analyses"].items():
            an = report.analysis(name)
            view: Any
            if an is not None:
                view = an.render(result)
                title = an.title or name
            else:
                view = Text(str({k: v for k, v in result.items() if k == "summary"}))
                title = name
            secs = p.get("seconds", {}).get(name)
            subtitle = f"{secs:.1f} s" if isinstance(secs, (int, float)) else None
            console.print(
                Panel(
                    view if not isinstance(view, list) else Group(*view),
                    title=f"[bold]{title}[/]",
                    title_align="left",
                    subtitle=subtitle,
                    subtitle_align="right",
                    expand=True,
                )
            )
    if len(pairs) > 1:
        console.print(_side_by_side(report))
