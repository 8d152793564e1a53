"""The study's findings: one-line sentences, each generated from measured values of this run.

Why generated: none is canned, so the report says honestly when a small model does not show the
expected pattern. The core writes the sentences about what it owns (scores, the transferability
index, comparisons of tuned models on the analyses' headline drift numbers, drift over training);
every analysis writes its own (:meth:`~driftkit.registry.analysis.Analysis.findings`).
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING, Any

from driftkit.report.wording import DOMAINS, NO_CHANGE, domain_name, negligible

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.pipeline.gather import Ran


def model_labels(data: dict[str, Any]) -> dict[str, str]:
    """Each tuned model's name in sentences: ``name (trainer)`` when the trainer's name differs."""
    trainers = data.get("trainers", {})
    return {n: n + (f" ({trainers[n]})" if n in trainers and trainers[n] != n else "") for n in data["models"][1:]}


def _mean(xs: list[Any]) -> float | None:
    from driftkit.pipeline.gather import mean

    return mean(xs)


def score_findings(data: dict[str, Any], label: dict[str, str]) -> list[str]:
    """Per tuned model: mean score per domain before -> after, and the transferability index."""
    scores = data.get("scores") or {}
    if not scores:
        return []
    tr = (data.get("transfer") or {}).get("models", {})
    why = (data.get("transfer") or {}).get("error")
    out = []
    for n in label:
        parts = []
        for d in DOMAINS:
            bs = [b for b, r in scores["base"].items() if r["domain"] == d]
            a = _mean([scores["base"][b]["value"] for b in bs])
            b_ = _mean([scores[n][b]["value"] for b in bs if b in scores[n]])
            if a is not None and b_ is not None:
                parts.append(f"{domain_name(d)} {a:.1f} -> {b_:.1f} ({b_ - a:+.1f})")
        ti = tr.get(n, {}).get("ti") or {}
        ti_txt = ", ".join(f"TI_{g} = {ti[g]:.1f}" for g in ("other", "non") if ti.get(g) is not None) or (
            f"TI undefined ({why})" if why else "TI undefined (no change on math)"
        )
        out.append(f"{label[n]}: mean scores {'; '.join(parts)}; {ti_txt}.")
    return out


def _verdict(a: str, b: str, measures: dict[str, dict[str, float]]) -> tuple[list[str], list[str]]:
    """The drift measures both models have, and those on which ``a`` drifts more than ``b``."""
    common = [k for k in measures.get(a, {}) if k in measures.get(b, {})]
    return common, [k for k in common if measures[a][k] > measures[b][k]]


def expectation_findings(data: dict[str, Any], label: dict[str, str]) -> list[str]:
    """The experiment's expectations ("A > B": A drifts more), checked on every headline drift measure;
    without expectations, every pair of tuned models compared the same way."""
    measures = data.get("drift_measures") or {}
    out = []
    for e in data.get("expect") or []:
        a, _, b = (x.strip() for x in e.partition(">"))
        checks, held = _verdict(a, b, measures)
        if checks:
            verdict = (
                "holds on every drift measure"
                if len(held) == len(checks)
                else ("does not hold on any drift measure" if not held else f"holds for {', '.join(held)} only")
            )
            why = data.get("expect_why") or "The expected pattern"
            out.append(f"{why} ({a} drifts more than {b}) {verdict} in this run ({len(held)}/{len(checks)} measures).")
    if data.get("expect"):
        return out
    for a, b in combinations(label, 2):
        checks, held = _verdict(a, b, measures)
        if not checks:
            continue
        if len(held) * 2 < len(checks):
            a, b = b, a
            held = [k for k in checks if k not in held and measures[a][k] != measures[b][k]]
        out.append(
            f"{label[a]} drifts more than {label[b]} on {len(held)} of {len(checks)} drift measures "
            f"({', '.join(held) or 'none'})."
        )
    return out


def drift_findings(data: dict[str, Any], label: dict[str, str]) -> list[str]:
    """Drift over training: the step by which half of the final change of the headline measure is reached."""
    key = data.get("drift_headline")
    out = []
    for n, pts in (data.get("drift") or {}).items():
        if len(pts) < 3 or not key or pts[0].get(key) is None:
            continue
        change = [abs(p[key] - pts[0][key]) if p.get(key) is not None else 0.0 for p in pts]
        steps = [p["step"] for p in pts]
        if negligible(change[-1]):
            out.append(f"{label.get(n, n)}: {key} over training: {NO_CHANGE} by step {steps[-1]}.")
            continue
        half = next(s for s, c in zip(steps, change) if c >= 0.5 * change[-1])
        out.append(f"{label.get(n, n)}: half of the final {key} drift is reached by step {half} of {steps[-1]}.")
    return out


def findings(data: dict[str, Any], ran: list[Ran]) -> list[str]:
    """Every finding of the study, in reading order: scores, each analysis's, comparisons, training."""
    label = model_labels(data)
    out = score_findings(data, label)
    for r in ran:
        out += r.analysis.findings({label.get(m, m): res for m, res in r.results.items()})
    out += expectation_findings(data, label)
    out += drift_findings(data, label)
    return out
