"""The study report: the paper's core picture for one run, as numbers, figures and sentences.

Every sentence in ``findings`` is generated from measured values of this run (none is canned), so
the report says honestly when a small model does not show the paper's pattern.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from driftkit.report.figures import COLORS, layer_ticks, new_figure, to_svg

if TYPE_CHECKING:
    from driftkit.pipeline.runner import Ctx

DOMAINS = ("math", "other", "non")
DOMAIN_NAMES = {"math": "math", "other": "other reasoning", "non": "non-reasoning"}


@dataclass
class Study:
    data: dict[str, Any]
    findings: list[str]
    figures: dict[str, str] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        from driftkit.report.report import atomic_write

        atomic_write(folder / "study.json", json.dumps({**self.data, "findings": self.findings}, indent=2, default=str))
        atomic_write(folder / "study.html", render_html(self))

    def show(self, console: Any) -> None:
        render_terminal(self, console)


# -- gathering --------------------------------------------------------------------------------------
def _pair_bodies(report: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Map each tuned model to its (base, model) report body (a report of 2 captures has no pairs[])."""
    if "pairs" in report:
        return {n: p for n, p in zip(names, report["pairs"])}
    return {names[0]: report}


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def gather(ctx: "Ctx") -> dict[str, Any]:
    ex = ctx.ex
    tuned = ex.tuned_names
    names = ["base", *tuned]
    man = ctx.manifest
    data: dict[str, Any] = {"schema": "driftkit.study/1", "experiment": ex.name, "base": ex.base, "models": names,
                            "trainers": {t.name: t.trainer for t in ex.train}}
    # scores
    scores: dict[str, dict[str, Any]] = {}
    if man.step("bench.base"):
        from driftkit.scores import primary_scores, read_scores

        for n in names:
            doc = read_scores(ctx.path(ctx.outputs(f"bench.{n}")["scores"]))
            scores[n] = {b: {"value": r["value"], "domain": r["domain"], "metric": r.get("metric"), "n": r.get("n")}
                         for b, r in primary_scores(doc).items()}
        data["scores"] = scores
        data["transfer"] = json.loads(ctx.path(ctx.outputs("transfer")["transfer"]).read_text())
    # representations
    raw = json.loads(ctx.path(ctx.outputs("compare.raw")["report"]).read_text())
    data["representations"] = {}
    for n, body in _pair_bodies(raw, tuned).items():
        an = body.get("analyses", {})
        entry: dict[str, Any] = {}
        if "cka" in an:
            entry["cka_layers"] = [{"layer": x["layer"], "linear_cka": x["linear_cka"], "debiased_cka": x.get("debiased_cka")} for x in an["cka"]["layers"]]
        if "pca_shift" in an:
            pca = an["pca_shift"]
            entry["pca_distance"] = {d: v["distance"] for d, v in pca["per_domain"].items()}
            entry["pca_points"] = {d: v.get("points", []) for d, v in pca["per_domain"].items()}
            entry["principal_angles"] = [{"layer": x["layer"], "mean_angle_deg": x.get("mean_angle_deg")} for x in pca.get("layers", [])]
        data["representations"][n] = entry
    # distributions
    data["distributions"] = {}
    for n in tuned:
        rep = json.loads(ctx.path(ctx.outputs(f"compare.gen.{n}")["report"]).read_text())
        an = rep.get("analyses", {})
        entry = {}
        if "kl" in an:
            entry["kl"] = an["kl"]["summary"]
            entry["kl_per_domain"] = an["kl"].get("per_domain", {})
        if "token_rank" in an:
            entry["rank"] = an["token_rank"]["summary"]
            entry["rank_per_domain"] = an["token_rank"].get("per_domain", {})
            entry["top_shifted_tokens"] = an["token_rank"].get("top_shifted_tokens", [])[:12]
        data["distributions"][n] = entry
    # drift over training
    data["drift"] = {}
    for t in ex.train:
        st = man.step(f"drift.{t.name}")
        if st:
            data["drift"][t.name] = json.loads(ctx.path(st["outputs"]["drift"]).read_text())["points"]
    # drift vs transfer: per (model, domain) representation distance and KL against mean score change
    rows = []
    for n in tuned:
        for d in DOMAINS:
            dR = None
            if scores:
                deltas = [scores[n][b]["value"] - scores["base"][b]["value"] for b in scores["base"] if scores["base"][b]["domain"] == d and b in scores[n]]
                dR = _mean(deltas)
            kl_d = data["distributions"].get(n, {}).get("kl_per_domain", {}).get(d, {}).get("kl_forward")
            pca_d = data["representations"].get(n, {}).get("pca_distance", {}).get(d)
            rows.append({"model": n, "domain": d, "score_change": dR, "pca_distance": pca_d, "kl_forward": kl_d})
    data["drift_vs_transfer"] = rows
    data["umap"] = _umap(ctx, names)
    # finished steps only: the report step itself is still running while this is gathered
    data["steps"] = {sid: {"seconds": e.get("seconds"), "executions": e.get("executions")} for sid, e in man.data["steps"].items()
                     if e.get("seconds") is not None}
    return data


def _umap(ctx: "Ctx", names: list[str]) -> dict[str, Any] | None:
    """2-D UMAP of per-sample mean-pooled representations at the middle recorded layer, all models together."""
    try:
        import umap
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    from driftkit.store.reader import CaptureReader

    feats, labels, domains = [], [], []
    layer = None
    for n in names:
        with CaptureReader(ctx.path(ctx.outputs(f"capture.raw.{n}")["capture"])) as r:
            layers = r.residual_layers()
            if not layers:
                return None
            layer = layers[len(layers) // 2] if layer is None else layer
            x = r.read(f"sites/residual.{layer}").double()
            idx = np.repeat(np.arange(r.n_samples), np.diff(r.offsets))
            sums = np.zeros((r.n_samples, x.shape[1]))
            np.add.at(sums, idx, x.numpy())
            feats.append(sums / np.diff(r.offsets)[:, None])
            labels += [n] * r.n_samples
            domains += [str(d) for d in r.domains]
    X = np.concatenate(feats)
    if len(X) < 6:
        return None
    emb = umap.UMAP(n_neighbors=min(15, len(X) - 1), random_state=ctx.ex.seed, n_jobs=1).fit_transform(X)
    return {"layer": layer, "points": [{"model": m, "domain": d, "x": float(a), "y": float(b)} for m, d, (a, b) in zip(labels, domains, emb)]}


# -- findings ---------------------------------------------------------------------------------------
def _fmt(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def findings(data: dict[str, Any]) -> list[str]:
    out: list[str] = []
    tuned = [m for m in data["models"] if m != "base"]
    trainers = data.get("trainers", {})
    label = {n: f"{n}" + (f" ({trainers[n]})" if n in trainers and trainers[n] != n else "") for n in tuned}
    scores = data.get("scores") or {}
    tr = (data.get("transfer") or {}).get("models", {})
    for n in tuned:
        if scores:
            parts = []
            for d in DOMAINS:
                bs = [b for b, r in scores["base"].items() if r["domain"] == d]
                if bs:
                    a = _mean([scores["base"][b]["value"] for b in bs])
                    b_ = _mean([scores[n][b]["value"] for b in bs if b in scores[n]])
                    if a is not None and b_ is not None:
                        parts.append(f"{DOMAIN_NAMES[d]} {a:.1f} -> {b_:.1f} ({b_ - a:+.1f})")
            ti = tr.get(n, {}).get("ti") or {}
            why = (data.get("transfer") or {}).get("error")
            ti_txt = ", ".join(f"TI_{g} = {ti[g]:.1f}" for g in ("other", "non") if ti.get(g) is not None) or (
                f"TI undefined ({why})" if why else "TI undefined (no change on math)")
            out.append(f"{label[n]}: mean scores {'; '.join(parts)}; {ti_txt}.")
    reps = data.get("representations", {})
    dists = {n: _mean(list(reps.get(n, {}).get("pca_distance", {}).values())) for n in tuned}
    dists = {n: v for n, v in dists.items() if v is not None}
    if len(dists) >= 2:
        hi = max(dists, key=dists.get)
        lo = min(dists, key=dists.get)
        if dists[lo] > 0:
            out.append(f"{label[hi]} moved pooled representations {dists[hi] / dists[lo]:.1f}x as far as {label[lo]} "
                       f"(mean PCA-shift distance {dists[hi]:.3g} vs {dists[lo]:.3g}).")
        else:
            out.append(f"{label[hi]} moved pooled representations (mean PCA-shift distance {dists[hi]:.3g}); {label[lo]} did not move them at all.")
    for n in tuned:
        d = reps.get(n, {}).get("pca_distance", {})
        if d:
            top = max(d, key=d.get)
            out.append(f"{label[n]}: PCA shift is largest on {DOMAIN_NAMES.get(top, top)} prompts ({d[top]:.3g}; " +
                       ", ".join(f"{DOMAIN_NAMES.get(k, k)} {v:.3g}" for k, v in d.items() if k != top) + ").")
        ck = reps.get(n, {}).get("cka_layers", [])
        if ck:
            vals = np.array([x["linear_cka"] for x in ck], dtype=float)
            layers = [x["layer"] for x in ck]
            k = max(1, len(vals) // 5)
            low = np.argsort(vals)[:k]
            rest = np.setdiff1d(np.arange(len(vals)), low)
            lo_layers = sorted(str(layers[i]) for i in low)
            out.append(f"{label[n]}: lowest CKA to the base at layer(s) {', '.join(lo_layers)} (mean {vals[low].mean():.3f} vs "
                       f"{vals[rest].mean() if rest.size else float('nan'):.3f} elsewhere).")
    dist = data.get("distributions", {})
    for n in tuned:
        e = dist.get(n, {})
        kl = (e.get("kl") or {}).get("kl_forward")
        rk = e.get("rank") or {}
        if kl is not None or rk:
            toks = ", ".join(repr(t["token"]) for t in e.get("top_shifted_tokens", [])[:5])
            out.append(f"{label[n]}: mean KL(P_tuned||P_base) over its own response tokens {_fmt(kl, 3)} nats; "
                       f"{100 * rk.get('unshifted', 0):.0f}% of tokens unshifted, {100 * rk.get('shifted', 0):.0f}% shifted (rank > 3 under the base)"
                       + (f"; most shifted: {toks}" if toks else "") + ".")
    sft = [n for n in tuned if trainers.get(n) == "sft"]
    rl = [n for n in tuned if trainers.get(n) == "rl"]
    if sft and rl:
        s, r = sft[0], rl[0]
        checks = []
        if s in dists and r in dists:
            checks.append(("PCA shift", dists[s] > dists[r]))
        ks, kr = (dist.get(s, {}).get("kl") or {}).get("kl_forward"), (dist.get(r, {}).get("kl") or {}).get("kl_forward")
        if ks is not None and kr is not None:
            checks.append(("KL", ks > kr))
        ss, sr = (dist.get(s, {}).get("rank") or {}).get("shifted"), (dist.get(r, {}).get("rank") or {}).get("shifted")
        if ss is not None and sr is not None:
            checks.append(("shifted tokens", ss > sr))
        held = [c for c, ok in checks if ok]
        if checks:
            verdict = "holds on every drift measure" if len(held) == len(checks) else (
                "does not hold on any drift measure" if not held else f"holds for {', '.join(held)} only")
            out.append(f"The paper's pattern (SFT drifts more than RL) {verdict} in this run ({len(held)}/{len(checks)} measures).")
    for n, pts in (data.get("drift") or {}).items():
        if len(pts) >= 3:
            kls = [p["kl"] for p in pts]
            steps = [p["step"] for p in pts]
            half = next((s for s, k in zip(steps, kls) if kls[-1] > 0 and k >= 0.5 * kls[-1]), None)
            if half is not None:
                out.append(f"{label.get(n, n)}: half of the final KL drift is reached by step {half} of {steps[-1]}.")
    return out


def build_study(ctx: "Ctx") -> Study:
    data = gather(ctx)
    study = Study(data, findings(data))
    study.figures = figures(data)
    return study


# -- figures ----------------------------------------------------------------------------------------
def figures(data: dict[str, Any]) -> dict[str, str]:
    figs: dict[str, str] = {}
    models = data["models"]
    tuned = [m for m in models if m != "base"]
    color = {m: COLORS[i % len(COLORS)] for i, m in enumerate(models)}
    scores = data.get("scores") or {}
    if scores:
        fig, ax = new_figure(6.4, 3.0)
        ax = ax[0, 0]
        w = 0.8 / len(models)
        for i, m in enumerate(models):
            vals = [_mean([r["value"] for b, r in scores[m].items() if r["domain"] == d]) or 0 for d in DOMAINS]
            ax.bar(np.arange(3) + i * w, vals, w, label=m, color=color[m])
        ax.set_xticks(np.arange(3) + w * (len(models) - 1) / 2, [DOMAIN_NAMES[d] for d in DOMAINS])
        ax.set_ylabel("mean score (0-100)")
        ax.legend(fontsize=8)
        figs["scores"] = to_svg(fig)
    reps = data.get("representations", {})
    if any("pca_points" in reps.get(n, {}) for n in tuned):
        fig, axes = new_figure(3.2 * 3, 3.0, ncols=3)
        for j, d in enumerate(DOMAINS):
            ax = axes[0, j]
            for n in tuned:
                pts = reps.get(n, {}).get("pca_points", {}).get(d, [])
                if not pts:
                    continue
                xs = [p["pc1_shift"] for p in pts]
                ys = [p["pc2_b"] for p in pts]
                ya = [p["pc2_a"] for p in pts]
                ax.scatter([0] * len(ya), ya, s=8, color=color["base"], alpha=0.6, label="base" if n == tuned[0] else None)
                ax.plot(xs, ys, "-o", ms=3, lw=0.8, color=color[n], label=n)
            ax.set_title(DOMAIN_NAMES[d], fontsize=9)
            ax.set_xlabel("PC1 Δ (tuned - base)")
            if j == 0:
                ax.set_ylabel("PC2")
                ax.legend(fontsize=7)
        figs["pca_shift"] = to_svg(fig)
    if any(reps.get(n, {}).get("cka_layers") for n in tuned):
        fig, ax = new_figure(6.4, 2.8)
        ax = ax[0, 0]
        for n in tuned:
            ck = reps.get(n, {}).get("cka_layers", [])
            ax.plot(range(len(ck)), [x["linear_cka"] for x in ck], "-o", ms=3, color=color[n], label=n)
            layer_ticks(ax, [x["layer"] for x in ck])
        ax.set_ylabel("linear CKA to base")
        ax.set_xlabel("layer")
        ax.legend(fontsize=8)
        figs["cka"] = to_svg(fig)
    dist = data.get("distributions", {})
    if dist:
        fig, axes = new_figure(9.6, 3.0, ncols=2)
        ax = axes[0, 0]
        w = 0.8 / max(1, len(tuned))
        for i, n in enumerate(tuned):
            pd_ = dist.get(n, {}).get("kl_per_domain", {})
            ax.bar(np.arange(3) + i * w, [(pd_.get(d) or {}).get("kl_forward") or 0 for d in DOMAINS], w, color=color[n], label=n)
        ax.set_xticks(np.arange(3) + w * (len(tuned) - 1) / 2, [DOMAIN_NAMES[d] for d in DOMAINS])
        ax.set_ylabel("KL(P_tuned || P_base), nats")
        ax.legend(fontsize=8)
        ax = axes[0, 1]
        for i, n in enumerate(tuned):
            rk = dist.get(n, {}).get("rank") or {}
            bottom = 0.0
            for key, shade in (("unshifted", 0.35), ("marginal", 0.65), ("shifted", 1.0)):
                v = rk.get(key) or 0.0
                ax.bar(i, v, 0.6, bottom=bottom, color=color[n], alpha=shade, label=key if i == 0 else None)
                bottom += v
        ax.set_xticks(range(len(tuned)), tuned)
        ax.set_ylabel("fraction of response tokens")
        ax.legend(fontsize=7, title="rank bucket", title_fontsize=7)
        figs["distributions"] = to_svg(fig)
    um = data.get("umap")
    if um:
        fig, ax = new_figure(5.0, 4.0)
        ax = ax[0, 0]
        markers = {"math": "o", "other": "s", "non": "^"}
        for m in models:
            for d in DOMAINS:
                pts = [p for p in um["points"] if p["model"] == m and p["domain"] == d]
                if pts:
                    ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=14, marker=markers.get(d, "o"), color=color[m], alpha=0.75,
                               label=f"{m} / {DOMAIN_NAMES[d]}")
        ax.set_title(f"UMAP of mean-pooled layer {um['layer']} representations", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        figs["umap"] = to_svg(fig)
    drift = data.get("drift") or {}
    if drift:
        fig, axes = new_figure(4.8 * len(drift), 3.0, ncols=len(drift))
        for j, (n, pts) in enumerate(drift.items()):
            ax = axes[0, j]
            steps = [p["step"] for p in pts]
            ax.plot(steps, [1 - p["cka"] for p in pts], "-o", ms=3, label="1 - mean CKA", color=COLORS[0])
            ax.plot(steps, [p["kl"] for p in pts], "-s", ms=3, label="KL (nats)", color=COLORS[1])
            ax.plot(steps, [p["shifted"] for p in pts], "-^", ms=3, label="shifted fraction", color=COLORS[2])
            ax.set_xlabel("training step")
            ax.set_title(f"drift over training: {n}", fontsize=9)
            sc = [next(iter((p.get("score") or {}).values()), None) for p in pts]
            if any(s is not None for s in sc):
                ax2 = ax.twinx()
                ax2.plot(steps, [s if s is not None else np.nan for s in sc], "--", color="black", label="math score")
                ax2.set_ylabel("math score (0-100)")
                ax2.legend(fontsize=7, loc="upper right")
            ax.legend(fontsize=7, loc="upper left")
        figs["drift"] = to_svg(fig)
    rows = [r for r in data.get("drift_vs_transfer", []) if r["score_change"] is not None]
    if rows:
        fig, axes = new_figure(9.6, 3.0, ncols=2)
        for j, key in enumerate(("pca_distance", "kl_forward")):
            ax = axes[0, j]
            for r in rows:
                if r[key] is None:
                    continue
                ax.scatter(r[key], r["score_change"], color=color[r["model"]], marker={"math": "o", "other": "s", "non": "^"}[r["domain"]], s=30)
                ax.annotate(f"{r['model']}/{r['domain']}", (r[key], r["score_change"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.axhline(0, color="grey", lw=0.6)
            ax.set_xlabel("PCA-shift distance" if key == "pca_distance" else "KL(P_tuned || P_base)")
            ax.set_ylabel("mean score change")
        figs["drift_vs_transfer"] = to_svg(fig)
    return figs


# -- rendering --------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}.findings li{margin:.3em 0}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}svg{max-width:100%;height:auto}.muted{color:#777;font-size:.85em}"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _score_rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    scores = data.get("scores") or {}
    if not scores:
        return [], []
    benches = sorted(scores["base"], key=lambda b: (DOMAINS.index(scores["base"][b]["domain"]) if scores["base"][b]["domain"] in DOMAINS else 9, b))
    header = ["model", *[f"{b} ({scores['base'][b]['domain']})" for b in benches], "TI other", "TI non"]
    tr = (data.get("transfer") or {}).get("models", {})
    rows = []
    for m in data["models"]:
        ti = (tr.get(m) or {}).get("ti") or {}
        rows.append([m, *[_fmt(scores[m].get(b, {}).get("value"), 1) for b in benches], _fmt(ti.get("other"), 1) if m != "base" else "-",
                     _fmt(ti.get("non"), 1) if m != "base" else "-"])
    return header, rows


def _drift_rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["model", *[f"PCA shift {d}" for d in DOMAINS], "mean CKA", "KL fwd", "KL rev", "JS", "log-ratio", "unshifted", "shifted", "rank shift"]
    rows = []
    for n in data["models"][1:]:
        r = data["representations"].get(n, {})
        dd = data["distributions"].get(n, {})
        kl = dd.get("kl") or {}
        rk = dd.get("rank") or {}
        ck = r.get("cka_layers") or []
        rows.append([n, *[_fmt(r.get("pca_distance", {}).get(d), 3) for d in DOMAINS], _fmt(_mean([x["linear_cka"] for x in ck]), 3),
                     _fmt(kl.get("kl_forward"), 3), _fmt(kl.get("kl_reverse"), 3), _fmt(kl.get("js"), 3), _fmt(kl.get("sampled_logratio"), 3),
                     _fmt(rk.get("unshifted"), 3), _fmt(rk.get("shifted"), 3), _fmt(rk.get("rank_shift"), 2)])
    return header, rows


CAPTIONS = {
    "scores": "Benchmark scores per domain (mean over each domain's benchmarks).",
    "pca_shift": "PCA shift per layer (paper Fig. 3 style): base points at (0, PC2 of base), tuned at (PC1 Δ, PC2); one point per layer.",
    "cka": "Linear CKA between base and tuned representations per layer (1 = same geometry).",
    "distributions": "Left: exact KL per domain on each tuned model's own response tokens. Right: URIAL rank buckets of the tuned model's top token under the base.",
    "umap": "UMAP of per-prompt mean-pooled representations, base and tuned models together.",
    "drift": "Drift against training step (intermediate checkpoints), next to the math score.",
    "drift_vs_transfer": "Drift vs transfer: each point is one (model, domain); y is the mean score change on that domain's benchmarks.",
}


def render_html(study: Study) -> str:
    d = study.data
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>driftkit study: {html.escape(d['experiment'])}</title><style>{CSS}</style></head><body>",
             f"<h1>driftkit study: {html.escape(d['experiment'])}</h1>",
             f"<p class='muted'>base <b>{html.escape(str(d['base']))}</b>; tuned: {html.escape(', '.join(d['models'][1:]))}</p>",
             "<h2>Findings</h2><ul class='findings'>" + "".join(f"<li>{html.escape(f)}</li>" for f in study.findings) + "</ul>"]
    h, rows = _score_rows(d)
    if rows:
        parts.append("<h2>Scores and transferability</h2>" + _table(h, rows))
    parts.append("<h2>Drift summary</h2>" + _table(*_drift_rows(d)))
    for key in ("scores", "pca_shift", "cka", "distributions", "umap", "drift", "drift_vs_transfer"):
        if key in study.figures:
            parts.append(f"<figure>{study.figures[key]}<figcaption>{html.escape(CAPTIONS[key])}</figcaption></figure>")
    for n, e in d.get("distributions", {}).items():
        toks = e.get("top_shifted_tokens") or []
        if toks:
            parts.append(f"<h2>Most shifted tokens: {html.escape(n)}</h2>" + _table(["token", "count"], [[repr(t["token"]), t["count"]] for t in toks]))
    rows = [[r["model"], r["domain"], _fmt(r["score_change"], 1), _fmt(r["pca_distance"], 3), _fmt(r["kl_forward"], 3)] for r in d.get("drift_vs_transfer", [])]
    if rows:
        parts.append("<h2>Drift vs transfer</h2>" + _table(["model", "domain", "score change", "PCA shift", "KL"], rows))
    steps = d.get("steps", {})
    parts.append("<h2>Run</h2>" + _table(["step", "seconds", "executions"], [[k, _fmt(v.get("seconds"), 1), v.get("executions")] for k, v in steps.items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_terminal(study: Study, console: Any) -> None:
    from rich.panel import Panel
    from rich.table import Table

    d = study.data
    h, rows = _score_rows(d)
    if rows:
        t = Table(title="scores and transferability index", title_justify="left")
        for c in h:
            t.add_column(c, justify="left" if c == "model" else "right")
        for r in rows:
            t.add_row(*map(str, r))
        console.print(t)
    h, rows = _drift_rows(d)
    # metrics as rows, models as columns: stays readable in an 80-column terminal
    t = Table(title="drift from the base", title_justify="left")
    t.add_column("measure")
    for r in rows:
        t.add_column(str(r[0]), justify="right")
    for j, name in enumerate(h[1:], start=1):
        t.add_row(name, *[str(r[j]) for r in rows])
    console.print(t)
    console.print(Panel("\n".join(f"• {f}" for f in study.findings) or "(no findings)", title="findings", title_align="left"))
