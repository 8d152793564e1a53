"""``similarity``: measures that see past the few dominant features raw linear CKA is blind behind.

Per layer, from the CKA pass's d x d sums (shared with the ``cka`` analysis when both run, so the
cross-products are accumulated once): standardized CKA (each feature z-scored; biased and
debiased), the angular orthogonal Procrustes distance, and the share of variance in the top-k
features (the diagnostic that says when raw CKA is uninformative); from per-sample mean-pooled
vectors (O(samples x d)): platonic-rep's mutual k-NN alignment. Definitions:
:mod:`driftkit.metrics.similarity` and docs/compare.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from rich.console import Group
from rich.table import Table
from rich.text import Text

from driftkit.comparing.layer_sums import layer_sums, sample_sums
from driftkit.errors import DriftkitError, opt
from driftkit.metrics.pca import rows_kept
from driftkit.metrics.similarity import dominant_features, layer_similarity, mutual_knn
from driftkit.registry.analysis import Analysis, Figure, fmt
from driftkit.registry.options import Option
from driftkit.report.figures import COLORS, layer_ticks, new_figure, to_svg
from driftkit.report.terminal import sparkline
from driftkit.report.wording import NEGLIGIBLE, NO_CHANGE

#: (drift measure name, layer key, orientation) - larger drift measure = B moved further from A
_MEASURES = (
    ("1 − standardized CKA", "standardized_cka", -1),
    ("Procrustes angle", "procrustes", 1),
    ("1 − mutual k-NN", "mutual_knn", -1),
)


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [v for r in rows if (v := r.get(key)) is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _span(layers: list[Any]) -> str:
    """``3–7, 9`` for consecutive runs of integer layers (others listed as they are)."""
    out: list[str] = []
    run: list[Any] = []
    for x in layers + [None]:
        if run and isinstance(x, int) and isinstance(run[-1], int) and x == run[-1] + 1:
            run.append(x)
            continue
        if run:
            out.append(f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(str(r) for r in run))
        run = [x] if x is not None else []
    return ", ".join(out)


class SimilarityAnalysis(Analysis):
    name = "similarity"
    title = "Similarity beyond linear CKA (standardized CKA, Procrustes, mutual k-NN)"
    description = (
        "Per layer: CKA with every feature z-scored (not dominated by massive-activation features), the "
        "angular Procrustes distance, platonic-rep's mutual k-NN alignment of pooled samples, and the "
        "variance share of the top-k features, which says where raw CKA is uninformative."
    )
    options = {
        "k": Option(10, "Neighbours per sample for mutual k-NN alignment (clipped to samples - 1, with a note)."),
        "top_k": Option(
            3, "Features counted by the dominant-dimension diagnostic (massive activations are 1-4 features)."
        ),
        "threshold": Option(
            0.5, "Top-k variance share above which a layer's raw CKA is reported as dominated by those features."
        ),
        "debiased": Option(True, "Also debiased standardized CKA (seven more d x d float64 sums in the layer pass)."),
    }
    consumes = frozenset({"layers"})

    def check(self, pair: Any) -> str | None:
        if int(self.opts["k"]) < 1 or int(self.opts["top_k"]) < 1:
            raise DriftkitError(
                f"similarity.k and similarity.top_k must be at least 1 (got {self.opts['k']} and "
                f"{self.opts['top_k']}); set them with {opt('opt', 'similarity.k=10')}."
            )
        if not 0.0 < float(self.opts["threshold"]) <= 1.0:
            raise DriftkitError(
                f"similarity.threshold is a share of variance in (0, 1], not {self.opts['threshold']}; "
                f"set it with {opt('opt', 'similarity.threshold=0.5')}."
            )
        if not pair.layer_sites():
            return "needs residual (or embed) sites recorded in both captures (capture with --probe residual)"
        return None

    # -- the layer pass ----------------------------------------------------------------------------
    def start(self, pair: Any) -> None:
        self._layers: list[dict[str, Any]] = []
        self._dominant: list[dict[str, Any]] = []
        self._notes: list[str] = []
        self._mask = self.layers_mask(pair)
        self._n = 0
        self._n_samples = 0
        self._k_used: int | None = None

    def start_layer(self, pair: Any, layer: Any, site: str) -> None:
        # shared through the engine's per-layer store: the d x d sums with cka, the per-sample sums
        # with pca_shift (and sample cka); each chunk is added once between them
        self._sums = layer_sums(pair, site, self._mask, fourth=bool(self.opts["debiased"]), standardized=True)
        self._pools = sample_sums(pair, site, self._mask)

    def on_layer(self, chunk: Any) -> None:
        self._sums.add(chunk)
        self._pools.add(chunk)

    def finish_layer(self, pair: Any, layer: Any, site: str) -> None:
        acc = self._sums.acc
        try:
            if acc.n < 4:
                raise DriftkitError(
                    f"similarity needs at least 4 tokens; the selection leaves {acc.n}. Widen "
                    f"{opt('positions', None)}/{opt('domains', None)} or raise {opt('max_tokens', None)}."
                )
            assert acc.stats is not None
            r = layer_similarity(acc.stats, identical=acc.identical)
            share_a, top_a = dominant_features(torch.diagonal(acc.stats.sxx), int(self.opts["top_k"]))
            share_b, top_b = dominant_features(torch.diagonal(acc.stats.syy), int(self.opts["top_k"]))
        finally:
            del self._sums
        (ma, ca), (mb, _) = self._pools.means()
        del self._pools
        keep = ca > 0
        n_s = int(keep.sum())
        knn: float | None = None
        if n_s >= 2:
            k = min(int(self.opts["k"]), n_s - 1)
            if k < int(self.opts["k"]) and self._k_used is None:
                self._notes.append(f"mutual k-NN: k clipped from {self.opts['k']} to {k} ({n_s} samples)")
            self._k_used = k
            rows = rows_kept(keep)
            knn = 1.0 if acc.identical else mutual_knn(ma[rows], mb[rows], k)
        elif not any("mutual k-NN" in x for x in self._notes):
            self._notes.append(f"mutual k-NN: skipped ({n_s} sample(s) with selected tokens; it needs 2)")
        self._n, self._n_samples = r.n, n_s
        self._layers.append(
            {
                "layer": layer,
                "site": site.split("/", 1)[1],
                "standardized_cka": r.standardized_cka,
                "standardized_cka_debiased": r.standardized_cka_debiased,
                "procrustes": r.procrustes,
                "procrustes_standardized": r.procrustes_standardized,
                "mutual_knn": knn,
                "linear_cka": r.linear_cka,
            }
        )
        self._dominant.append(
            {
                "layer": layer,
                "top_share": share_a,
                "top_features": top_a,
                "top_share_b": share_b,
                "top_features_b": top_b,
            }
        )

    def finish(self, pair: Any) -> dict[str, Any]:
        layers, dom = self._layers, self._dominant
        thr = float(self.opts["threshold"])
        dominated = [d["layer"] for d in dom if d["top_share"] == d["top_share"] and d["top_share"] > thr]
        out: dict[str, Any] = {
            "positions": pair.positions,
            "rows": pair.layer_rows_label,  # tokens | sampled:K, as cka says
            "n": self._n,
            "n_samples": self._n_samples,
            "k": self._k_used,
            "top_k": int(self.opts["top_k"]),
            "threshold": thr,
            "layers": layers,
            "dominant": dom,
            "dominated_layers": dominated,
            "summary": {
                "mean_standardized_cka": _mean(layers, "standardized_cka"),
                "mean_standardized_cka_debiased": _mean(layers, "standardized_cka_debiased"),
                "mean_procrustes": _mean(layers, "procrustes"),
                "mean_mutual_knn": _mean(layers, "mutual_knn"),
                "mean_linear_cka": _mean(layers, "linear_cka"),
                "max_top_share": max((d["top_share"] for d in dom if d["top_share"] == d["top_share"]), default=None),
            },
        }
        if self._notes:
            out["notes"] = list(self._notes)
        return out

    # -- presentation ------------------------------------------------------------------------------
    def summary(self, result: Mapping[str, Any]) -> dict[str, float]:
        keys = ("mean_standardized_cka", "mean_procrustes", "mean_mutual_knn", "max_top_share")
        return {k: v for k in keys if (v := result["summary"].get(k)) is not None}

    @staticmethod
    def dominance_lines(result: Mapping[str, Any]) -> list[str]:
        """One sentence naming the layers where raw CKA is dominated by a few features (top-k share
        of A's variance above the threshold), the range of that share, and the features that recur
        most among those layers' top-k (the same massive-activation features usually span the depth)."""
        thr = result["threshold"]
        rows = [d for d in result["dominant"] if d["top_share"] == d["top_share"] and d["top_share"] > thr]
        if not rows:
            return []
        count: dict[int, int] = {}
        for d in rows:
            for f in d["top_features"]:
                count[f] = count.get(f, 0) + 1
        feats = sorted(count, key=lambda f: (-count[f], f))[:5]
        lo, hi = min(d["top_share"] for d in rows), max(d["top_share"] for d in rows)
        share = f"{lo:.0%}" if hi - lo < 0.005 else f"{lo:.0%}–{hi:.0%}"
        others = ", ".join(f"{f} at {count[f]}" for f in feats[1:])
        recur = f"feature {feats[0]} is one of them at {count[feats[0]]} of those layers" + (
            f" ({others})" if others else ""
        )
        return [
            f"Raw CKA is dominated by a few features, and uninformative, at {len(rows)} of "
            f"{len(result['dominant'])} layers ({_span([d['layer'] for d in rows])}): the top-{result['top_k']} "
            f"features hold {share} of A's variance there; {recur}. "
            "Read standardized CKA, Procrustes and mutual k-NN at those layers."
        ]

    def render(self, result: Mapping[str, Any]) -> Any:
        layers = result["layers"]
        t = Table(box=None, show_header=False, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        t.add_column(style="dim")
        labels = f"layers {layers[0]['layer']} … {layers[-1]['layer']}" if layers else ""
        std = [e["standardized_cka"] for e in layers]
        lin = [e["linear_cka"] for e in layers]
        lo = min([v for v in std + lin if v is not None and v == v] or [0.0])
        t.add_row("standardized CKA", Text(sparkline(std, lo, 1.0), style="cyan"), f"{labels}, scale {lo:.3f}–1")
        t.add_row("raw linear CKA", Text(sparkline(lin, lo, 1.0), style="blue"), "")
        pro = [e["procrustes"] for e in layers]
        t.add_row("Procrustes (rad)", Text(sparkline(pro, 0.0, max([p for p in pro if p == p] or [1.0]) or 1.0)), "")
        knn = [e["mutual_knn"] for e in layers]
        if any(v is not None for v in knn):
            t.add_row(f"mutual {result['k']}-NN", Text(sparkline(knn, 0.0, 1.0), style="green"), "scale 0–1")
        s = result["summary"]
        head = Text.assemble(
            ("mean standardized CKA ", ""),
            (fmt(s["mean_standardized_cka"]), "bold"),
            ("   Procrustes ", ""),
            (fmt(s["mean_procrustes"]), "bold"),
            (" rad   mutual k-NN ", ""),
            (fmt(s["mean_mutual_knn"]), "bold"),
            (f"   (raw CKA {fmt(s['mean_linear_cka'])}; {result['n']:,} tokens, {result['n_samples']} samples)", "dim"),
        )
        parts: list[Any] = [head, t]
        for line in self.dominance_lines(result):
            parts.append(Text(line, style="yellow"))
        for note in result.get("notes", []):
            parts.append(Text(note, style="dim"))
        return Group(*parts)

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        fig, axes = new_figure(10.0, 3.2, ncols=3)
        titles = ("standardized CKA (dashed: raw)", "Procrustes angle (rad)", "mutual k-NN alignment")
        labels: list[Any] = []
        for i, (lab, res) in enumerate(results.items()):
            layers = res["layers"]
            labels = [e["layer"] for e in layers]
            x = list(range(len(layers)))
            c = COLORS[i % len(COLORS)]
            for ax, key in zip(axes[0], ("standardized_cka", "procrustes", "mutual_knn")):
                y = [np.nan if e.get(key) is None else e[key] for e in layers]
                ax.plot(x, y, "-o", color=c, ms=3, label=lab)
            axes[0][0].plot(x, [e["linear_cka"] for e in layers], "--", color=c, alpha=0.6)
        for ax, title in zip(axes[0], titles):
            layer_ticks(ax, labels)
            ax.set_xlabel("layer")
            ax.set_title(title, fontsize=10)
        axes[0][0].legend(fontsize=8, frameon=False)
        caption = "CKA and k-NN: 1 = unchanged; Procrustes: 0 = unchanged (radians, up to rotation and scale)"
        # the HTML reports show the caption, not the terminal's yellow line: say there too where raw CKA is blind
        for line in self.dominance_lines(next(iter(results.values()))) if results else []:
            caption += ". " + line.rstrip(".")
        return [
            Figure(
                "Similarity beyond linear CKA, per layer",
                to_svg(fig),
                caption,
            )
        ]

    # -- the study report --------------------------------------------------------------------------
    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        keep = ("layer", "standardized_cka", "standardized_cka_debiased", "procrustes", "mutual_knn", "linear_cka")
        return {
            "similarity_layers": [{k: x.get(k) for k in keep} for x in result["layers"]],
            "dominant_features": [dict(d) for d in result["dominant"]],
        }

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        s = result["summary"]
        std = s.get("mean_standardized_cka")
        # 1 - CKA in scientific notation: at RL-sized drift CKA itself reads 1.000 at three decimals
        return [
            ("1 − mean standardized CKA", None if std is None else 1.0 - std, ".2e"),
            ("mean Procrustes (rad)", s.get("mean_procrustes"), ".3f"),
            ("mean mutual k-NN", s.get("mean_mutual_knn"), ".3f"),
        ]

    def drift_measures(self, result: Mapping[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, key, sign in _MEASURES:
            m = _mean(result["layers"], key)
            if m is not None:
                out[name] = 1.0 - m if sign < 0 else m
        return out

    def findings(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """One line per measure: which tuned model drifts more on it (the paper's direction is SFT
        more than RL); then where raw CKA is dominated by a few features (A is the same base for
        every tuned model, so said once)."""
        out: list[str] = []
        measures = {lab: self.drift_measures(r) for lab, r in results.items()}
        for name, _, _ in _MEASURES:
            vals = {lab: m[name] for lab, m in measures.items() if name in m}
            if not vals:
                continue
            order = sorted(vals, key=lambda lab: -vals[lab])
            if all(abs(v) < NEGLIGIBLE for v in vals.values()):
                out.append(f"{name}: {NO_CHANGE} for any tuned model.")
            elif len(order) == 1:
                out.append(f"{name}: {order[0]} {vals[order[0]]:.3g} (mean over layers).")
            elif vals[order[0]] == vals[order[-1]]:
                out.append(f"{name}: the tuned models drift equally ({vals[order[0]]:.3g}).")
            else:
                rest = ", ".join(f"{lab} {vals[lab]:.3g}" for lab in order[1:])
                out.append(f"{name}: {order[0]} drifts more ({vals[order[0]]:.3g} vs {rest}; mean over layers).")
        first = next(iter(results.values()), None)
        if first:
            out += self.dominance_lines(first)
        return out
