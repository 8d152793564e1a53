"""Matplotlib figures as inline SVG strings (the HTML report is one self-contained file).

Why SVG: vector figures stay sharp at any zoom, embed as text without base64, and keep the file
small. The Agg backend is forced so figures render on headless machines.
"""

from __future__ import annotations

import io
from typing import Any

#: a colour-blind-safe cycle (Okabe-Ito) used by every bundled figure, one colour per compared capture
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def new_figure(width: float = 6.4, height: float = 3.2, ncols: int = 1, nrows: int = 1, **kw: Any):
    """A figure and its axes with the report's style (no global pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def to_svg(fig: Any) -> str:
    """Render a matplotlib figure to an SVG document string (without the XML prolog)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # no timestamp: reproducible files
    svg = buf.getvalue()
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def layer_ticks(ax: Any, labels: list[Any], max_ticks: int = 16) -> None:
    """X ticks at layer positions, thinned so long models stay readable."""
    step = max(1, -(-len(labels) // max_ticks))
    pos = list(range(0, len(labels), step))
    ax.set_xticks(pos)
    ax.set_xticklabels([str(labels[i]) for i in pos], fontsize=8)
