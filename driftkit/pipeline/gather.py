"""Gather a run's outputs into the study's data: scores, transfer, what every analysis contributed,
drift over training, timings.

Why this shape: the pipeline names no analysis. Each compare step's report holds the results of
whatever analyses the experiment asked for; every analysis turns its own result into the study's
JSON (:meth:`~driftkit.registry.analysis.Analysis.study_entry`), its drift-table rows and its
headline drift numbers. Representations come from the raw-text compare, distributions from each
tuned model's own answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from driftkit.registry.analysis import Analysis
from driftkit.report.wording import DOMAINS, ordered_domains

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.pipeline.runner import Ctx

#: the study's JSON section for each compare step's analyses
SECTIONS = {"raw": "representations", "gen": "distributions"}


@dataclass
class Ran:
    """One analysis that ran in the study: its section, its instance and its result per tuned model."""

    section: str
    analysis: Analysis
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.analysis.name


def mean(xs: list[Any]) -> float | None:
    """Mean of the finite values, None when there are none."""
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def _instances(specs: list[str], options: dict[str, dict[str, Any]]) -> dict[str, Analysis]:
    """The experiment's analyses as instances, by name (``file.py:Class`` specs included)."""
    from driftkit.comparing.runner import resolve_analyses

    insts, _ = resolve_analyses(list(specs), {})
    named = {a.name: a for a in insts}
    for name, opts in options.items():  # the options the compare step ran them with
        if name in named:
            named[name] = type(named[name])(**opts)
    return named


def analysis_results(ctx: Ctx) -> list[Ran]:
    """Every analysis result of the run's compare steps, grouped by analysis, in the experiment's order."""
    ex = ctx.ex
    bodies: dict[str, list[tuple[str, dict[str, Any]]]] = {"raw": [], "gen": []}
    raw = json.loads(ctx.path(ctx.outputs("compare.raw")["report"]).read_text())
    pairs = raw["pairs"] if "pairs" in raw else [raw]
    bodies["raw"] = list(zip(ex.tuned_names, pairs))
    for n in ex.tuned_names:
        bodies["gen"].append((n, json.loads(ctx.path(ctx.outputs(f"compare.gen.{n}")["report"]).read_text())))
    specs = {"raw": ex.compare["raw_analyses"], "gen": ex.compare["gen_analyses"]}
    ran: dict[tuple[str, str], Ran] = {}
    for kind in ("raw", "gen"):
        insts = _instances(specs[kind], ex.compare.get("options") or {})
        for model, body in bodies[kind]:
            for name, result in body.get("analyses", {}).items():
                if name not in insts:
                    continue
                entry = ran.setdefault((kind, name), Ran(SECTIONS[kind], insts[name]))
                entry.results[model] = result
    return list(ran.values())


def skipped_analyses(ctx: Ctx) -> dict[str, dict[str, dict[str, str]]]:
    """What the compare steps skipped: ``{section: {tuned model: {analysis: why}}}``, models with none left out.

    Why: a study of pooled captures (``[capture] store = "pooled"``) cannot run token CKA; compare
    skips it and says why in its report, and the study must say so too rather than just lack a section.
    """
    ex = ctx.ex
    raw = json.loads(ctx.path(ctx.outputs("compare.raw")["report"]).read_text())
    bodies = {"raw": list(zip(ex.tuned_names, raw["pairs"] if "pairs" in raw else [raw]))}
    bodies["gen"] = [
        (n, json.loads(ctx.path(ctx.outputs(f"compare.gen.{n}")["report"]).read_text())) for n in ex.tuned_names
    ]
    out: dict[str, dict[str, dict[str, str]]] = {section: {} for section in SECTIONS.values()}
    for kind, pairs in bodies.items():
        for model, body in pairs:
            if body.get("skipped"):
                out[SECTIONS[kind]][model] = dict(body["skipped"])
    return out


def _scores(ctx: Ctx, names: list[str]) -> dict[str, dict[str, Any]]:
    from driftkit.scores import primary_scores, read_scores

    out: dict[str, dict[str, Any]] = {}
    for n in names:
        doc = read_scores(ctx.path(ctx.outputs(f"bench.{n}")["scores"]))
        out[n] = {
            b: {"value": r["value"], "domain": r["domain"], "metric": r.get("metric"), "n": r.get("n")}
            for b, r in primary_scores(doc).items()
        }
    return out


def drift_table(ran: list[Ran], tuned: list[str]) -> list[dict[str, Any]]:
    """The drift summary: one row per (analysis, measure) with each tuned model's value."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ran:
        for model in tuned:
            if model not in r.results:
                continue
            for label, value, spec in r.analysis.study_rows(r.results[model]):
                row = rows.setdefault(
                    (r.name, label), {"analysis": r.name, "measure": label, "format": spec, "values": {}}
                )
                row["values"][model] = value
    return list(rows.values())


def drift_vs_transfer(ran: list[Ran], tuned: list[str], scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (model, domain): the mean score change next to every analysis's per-domain drift."""
    by_model: dict[str, dict[str, dict[str, float]]] = {n: {} for n in tuned}
    for r in ran:
        for model, res in r.results.items():
            by_model.setdefault(model, {}).update(r.analysis.drift_by_domain(res))
    found = {d for m in by_model.values() for per in m.values() for d in per}
    rows = []
    for n in tuned:
        for d in ordered_domains(set(DOMAINS) | found):
            dR = None
            if scores:
                base = scores["base"]
                dR = mean(
                    [
                        scores[n][b]["value"] - base[b]["value"]
                        for b in base
                        if base[b]["domain"] == d and b in scores[n]
                    ]
                )
            rows.append(
                {
                    "model": n,
                    "domain": d,
                    "score_change": dR,
                    **{m: per.get(d) for m, per in by_model.get(n, {}).items()},
                }
            )
    return rows


def gather(ctx: Ctx) -> tuple[dict[str, Any], list[Ran]]:
    """The study's JSON-able data and the analyses that ran (for findings and figures)."""
    ex, man = ctx.ex, ctx.manifest
    tuned = ex.tuned_names
    names = ["base", *tuned]
    data: dict[str, Any] = {
        "schema": "driftkit.study/1",
        "experiment": ex.name,
        "base": ex.base,
        "models": names,
        "trainers": {t.name: t.trainer for t in ex.train},
    }
    scores: dict[str, Any] = {}
    if man.step("bench.base"):
        scores = data["scores"] = _scores(ctx, names)
        data["transfer"] = json.loads(ctx.path(ctx.outputs("transfer")["transfer"]).read_text())
    ran = analysis_results(ctx)
    for section in SECTIONS.values():
        data[section] = {n: {} for n in tuned}
    for r in ran:
        for model, result in r.results.items():
            data[r.section][model].update(r.analysis.study_entry(result))
    data["drift_table"] = drift_table(ran, tuned)
    data["drift_measures"] = {n: {} for n in tuned}
    for r in ran:
        for model, result in r.results.items():
            data["drift_measures"][model].update(r.analysis.drift_measures(result))
    data["drift"] = {}
    for t in ex.train:
        st = man.step(f"drift.{t.name}")
        if st:
            data["drift"][t.name] = json.loads(ctx.path(st["outputs"]["drift"]).read_text())["points"]
    data["drift_vs_transfer"] = drift_vs_transfer(ran, tuned, scores)
    data["skipped"] = skipped_analyses(ctx)
    data["expect"] = list(ex.study.get("expect", []))
    data["expect_why"] = ex.study.get("expect_why")
    data["drift_headline"] = ex.drift.get("headline")
    # finished steps only: the report step itself is still running while this is gathered
    data["steps"] = {
        sid: {"seconds": e.get("seconds"), "executions": e.get("executions")}
        for sid, e in man.data["steps"].items()
        if e.get("seconds") is not None
    }
    return data, ran
