"""The study's figures: the core draws what it owns (scores, drift over training, drift against
transfer); every analysis that ran draws its own through
:meth:`~driftkit.registry.analysis.Analysis.figures`, one call with all tuned models' results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from driftkit.registry.analysis import Figure
from driftkit.report.figures import COLORS, new_figure, to_svg
from driftkit.report.wording import DOMAINS, domain_name

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.pipeline.gather import Ran

MARKERS = {"math": "o", "other": "s", "non": "^"}


def _colors(models: list[str]) -> dict[str, str]:
    return {m: COLORS[i % len(COLORS)] for i, m in enumerate(models)}


def scores_figure(data: dict[str, Any]) -> Figure | None:
    """Mean benchmark score per domain, one bar per model."""
    from driftkit.pipeline.gather import mean

    scores = data.get("scores") or {}
    if not scores:
        return None
    models = data["models"]
    color = _colors(models)
    fig, ax = new_figure(6.4, 3.0)
    ax = ax[0, 0]
    w = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = [mean([r["value"] for r in scores[m].values() if r["domain"] == d]) or 0 for d in DOMAINS]
        ax.bar(np.arange(len(DOMAINS)) + i * w, vals, w, label=m, color=color[m])
    ax.set_xticks(np.arange(len(DOMAINS)) + w * (len(models) - 1) / 2, [domain_name(d) for d in DOMAINS])
    ax.set_ylabel("mean score (0-100)")
    ax.legend(fontsize=8)
    return Figure("Scores", to_svg(fig), "Benchmark scores per domain (mean over each domain's benchmarks).")


def drift_figure(data: dict[str, Any]) -> Figure | None:
    """Each drift measure's change from the base against training step, next to the first drift benchmark."""
    drift = data.get("drift") or {}
    if not drift:
        return None
    fig, axes = new_figure(4.8 * len(drift), 3.0, ncols=len(drift))
    for j, (n, pts) in enumerate(drift.items()):
        ax = axes[0, j]
        steps = [p["step"] for p in pts]
        keys = [
            k for k, v in pts[0].items() if k not in ("step", "checkpoint", "score") and isinstance(v, (int, float))
        ]
        for i, k in enumerate(keys):
            ax.plot(
                steps,
                [abs(p[k] - pts[0][k]) if p.get(k) is not None else np.nan for p in pts],
                "-o",
                ms=3,
                label=f"{k} (change from base)",
                color=COLORS[i % len(COLORS)],
            )
        ax.set_xlabel("training step")
        ax.set_title(f"drift over training: {n}", fontsize=9)
        sc = [next(iter((p.get("score") or {}).values()), None) for p in pts]
        if any(s is not None for s in sc):
            ax2 = ax.twinx()
            ax2.plot(steps, [s if s is not None else np.nan for s in sc], "--", color="black", label="score")
            ax2.set_ylabel("score (0-100)")
            ax2.legend(fontsize=7, loc="upper right")
        ax.legend(fontsize=7, loc="upper left")
    return Figure(
        "Drift over training",
        to_svg(fig),
        "Drift against training step (intermediate checkpoints), next to the drift benchmark's score.",
    )


def drift_vs_transfer_figure(data: dict[str, Any]) -> Figure | None:
    """One panel per per-domain drift measure: drift (x) against the domain's mean score change (y)."""
    rows = [r for r in data.get("drift_vs_transfer", []) if r["score_change"] is not None]
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("model", "domain", "score_change")))
    if not rows or not keys:
        return None
    color = _colors(data["models"])
    fig, axes = new_figure(4.8 * len(keys), 3.0, ncols=len(keys))
    for j, key in enumerate(keys):
        ax = axes[0, j]
        for r in rows:
            if r.get(key) is None:
                continue
            ax.scatter(r[key], r["score_change"], color=color[r["model"]], marker=MARKERS.get(r["domain"], "D"), s=30)
            ax.annotate(
                f"{r['model']}/{r['domain']}",
                (r[key], r["score_change"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel(key)
        ax.set_ylabel("mean score change")
    return Figure(
        "Drift vs transfer",
        to_svg(fig),
        "Drift vs transfer: each point is one (model, domain); y is the mean score change on that domain's benchmarks.",
    )


def figures(data: dict[str, Any], ran: list[Ran]) -> list[Figure]:
    """Every figure of the study, in reading order."""
    out = [scores_figure(data)]
    for r in ran:
        out += r.analysis.figures(r.results)
    out += [drift_figure(data), drift_vs_transfer_figure(data)]
    return [f for f in out if f is not None]
