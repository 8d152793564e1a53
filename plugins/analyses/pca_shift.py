"""``pca_shift``: the paper's PCA-shift distance per domain, plus principal subspace angles per layer.

Per layer (embedding output and every decoder layer recorded in both files) each sample is
mean-pooled over its selected tokens (mask-aware), one layer at a time, so memory is
O(samples x d). Per domain, PCA(2) is fit on A's pooled features and both models are projected on
it (DESIGN.md section 4; :mod:`driftkit.metrics.pca`). Principal angles between A's and B's top-k
PCA subspaces of the pooled features (all selected samples) measure rotation independent of signs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from driftkit.comparing.layer_sums import sample_sums
from driftkit.metrics.pca import (
    MIN_SAMPLES,
    layer_distance,
    layer_point,
    principal_angles,
    rows_kept,
    shift_from_points,
)
from driftkit.registry.analysis import Analysis, Figure, fmt
from driftkit.registry.options import Option
from driftkit.report.figures import COLORS, layer_ticks, new_figure, to_svg
from driftkit.report.terminal import bar, sparkline
from driftkit.report.wording import NO_CHANGE, domain_name, negligible, ordered_domains


class PCAShiftAnalysis(Analysis):
    name = "pca_shift"
    title = "PCA shift of pooled hidden states (paper statistic)"
    description = (
        "Per domain: PCA(2) fit on A's mean-pooled samples per layer, both models projected on A's PC1/PC2; "
        "distance between layer-averaged centroids (A at PC1Δ = 0). Larger = representations moved more."
    )
    options = {"k": Option(4, "Dimension of the PCA subspaces whose principal angles are reported per layer.")}

    def check(self, pair: Any) -> str | None:
        if not pair.layer_sites():
            return "needs residual (or embed) sites recorded in both captures (capture with --probe residual)"
        if pair.n_samples < 2:
            return "needs at least 2 samples"
        return None

    consumes = frozenset({"layers"})
    #: pooled captures hold exactly the per-sample means this statistic needs (same numbers)
    needs_layers = frozenset({"tokens", "pooled", "sampled"})

    def start(self, pair: Any) -> None:
        self._sample_dom = np.array(pair.a.domains, dtype=object)
        self._points: dict[str, list[dict[str, Any]]] = {d: [] for d in pair.domain_names}
        self._skipped: dict[str, int] = {}
        self._layers: list[dict[str, Any]] = []
        self._mask = self.layers_mask(pair)

    def start_layer(self, pair: Any, layer: Any, site: str) -> None:
        if pair.layer_rows == "pooled":  # the file holds the means: read them in finish_layer
            return
        # shared through the engine's per-layer store with similarity and sample cka (same mask):
        # each chunk is pooled once between them
        self._pools = sample_sums(pair, site, self._mask)

    def on_layer(self, chunk: Any) -> None:
        self._pools.add(chunk)

    def finish_layer(self, pair: Any, layer: Any, site: str) -> None:
        k = int(self.opts["k"])
        if pair.layer_rows == "pooled":
            (fa, ca), (fb, _) = pair.pooled_means(site)
        else:
            (fa, ca), (fb, _) = self._pools.means()
            del self._pools
        valid = (ca > 0) & pair.sample_selected
        for d in pair.domain_names:
            rows = valid & (self._sample_dom == d)
            if rows.sum() < MIN_SAMPLES:
                self._skipped[d] = int(rows.sum())
                continue
            rows = rows_kept(rows)
            pt = layer_point(fa[rows], fb[rows])
            self._points[d].append({"layer": layer, **pt, "distance": layer_distance(pt)})
        rows = rows_kept(valid)
        angles = principal_angles(fa[rows], fb[rows], k) if valid.sum() >= 2 else np.zeros(0)
        self._layers.append(
            {
                "layer": layer,
                "site": site.split("/", 1)[1],
                "mean_angle_deg": float(angles.mean()) if angles.size else None,
                "max_angle_deg": float(angles.max()) if angles.size else None,
                "principal_angles_deg": [float(a) for a in angles],
            }
        )

    def layer_state(self, layer: Any) -> Any:
        """``--jobs``: what finish_layer just recorded: the layer's row, each domain's point (or, for a
        domain with too few samples, its count, in the order finish_layer met them)."""
        points = {d: pts[-1] for d, pts in self._points.items() if pts and pts[-1]["layer"] == layer}
        skipped = [(d, self._skipped[d]) for d in self._points if d not in points and d in self._skipped]
        return {"layer": self._layers[-1], "points": points, "skipped": skipped}

    def load_layer_state(self, layer: Any, state: Any) -> None:
        for d, point in state["points"].items():
            self._points[d].append(point)
        for d, n in state["skipped"]:
            self._skipped[d] = n
        self._layers.append(state["layer"])

    def finish(self, pair: Any) -> dict[str, Any]:
        doms, sample_dom, k = pair.domain_names, self._sample_dom, int(self.opts["k"])
        points, skipped, layers = self._points, self._skipped, self._layers
        per_domain: dict[str, Any] = {}
        for d in doms:
            if not points[d]:
                continue
            n = int(((pair.sample_selected) & (sample_dom == d)).sum())
            res = shift_from_points(points[d], n)
            per_domain[d] = {
                "distance": res.distance,
                "mean_layer_distance": res.mean_layer_distance,
                "centroid_a": list(res.centroid_a),
                "centroid_b": list(res.centroid_b),
                "n_samples": n,
                "points": points[d],
            }
        dists = [v["distance"] for v in per_domain.values()]
        out: dict[str, Any] = {
            "positions": pair.positions,
            "rows": pair.layer_rows_label,  # tokens | pooled | sampled:K (means over the sampled tokens only)
            "k": k,
            "summary": {
                "mean_distance": float(np.mean(dists)) if dists else None,
                "max_distance": float(np.max(dists)) if dists else None,
                "mean_angle_deg": float(
                    np.mean([row["mean_angle_deg"] for row in layers if row["mean_angle_deg"] is not None] or [np.nan])
                ),
            },
            "per_domain": per_domain,
            "layers": layers,
        }
        if skipped:
            out["skipped_domains"] = {
                d: f"{n} sample(s) with selected tokens; the PCA shift needs at least {MIN_SAMPLES}"
                for d, n in skipped.items()
            }
        return out

    def summary(self, result: Mapping[str, Any]) -> dict[str, float]:
        s = dict(result["summary"])
        for d, v in result["per_domain"].items():
            s[f"distance_{d}"] = v["distance"]
            s[f"mean_layer_distance_{d}"] = v.get("mean_layer_distance")
        return s

    def render(self, result: Mapping[str, Any]) -> Any:
        t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        t.add_column("domain")
        t.add_column("samples", justify="right")
        t.add_column("shift distance", justify="right")
        t.add_column("mean layer dist", justify="right")
        t.add_column("")
        t.add_column("|PC1Δ| by layer")
        per = result["per_domain"]
        top = max([v["distance"] for v in per.values()] or [1.0]) or 1.0
        for d, v in sorted(per.items(), key=lambda kv: -kv[1]["distance"]):
            t.add_row(
                d,
                str(v["n_samples"]),
                fmt(v["distance"], 3),
                fmt(v.get("mean_layer_distance"), 3),
                Text(bar(v["distance"] / top, 10), style="magenta"),
                Text(sparkline([abs(p["pc1_shift"]) for p in v["points"]]), style="magenta"),
            )
        parts: list[Any] = [t]
        ang = [row["mean_angle_deg"] for row in result["layers"]]
        if any(a is not None for a in ang):
            parts.append(
                Text.assemble(
                    (f"principal angle (top-{result['k']}, mean°) by layer: ", "bold"),
                    (sparkline(ang, 0.0, 90.0), "yellow"),
                    (f"  mean {fmt(result['summary']['mean_angle_deg'], 1)}°", ""),
                )
            )
        for d, why in (result.get("skipped_domains") or {}).items():
            parts.append(Text(f"{d}: skipped ({why})", style="yellow"))
        return Group(*parts)

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        """The paper-style scatter per domain, and shift and principal angle by layer (long because
        each figure is drawn step by step with matplotlib)."""
        figs: list[Figure] = []
        domains: list[str] = []
        for r in results.values():
            domains += [d for d in r["per_domain"] if d not in domains]
        if domains:
            fig, axes = new_figure(3.2 * len(domains), 3.2, ncols=len(domains))
            for j, d in enumerate(domains):
                ax = axes[0][j]
                for i, (lab, r) in enumerate(results.items()):
                    v = r["per_domain"].get(d)
                    if not v:
                        continue
                    pts = v["points"]
                    c = COLORS[i % len(COLORS)]
                    if i == 0:
                        ax.scatter(
                            [0.0] * len(pts), [p["pc2_a"] for p in pts], s=10, color="#777", label="A (per layer)"
                        )
                        ax.scatter([0.0], [v["centroid_a"][1]], marker="*", s=120, color="#333")
                    ax.scatter(
                        [p["pc1_shift"] for p in pts],
                        [p["pc2_b"] for p in pts],
                        s=10,
                        color=c,
                        alpha=0.7,
                        label=f"{lab} (per layer)",
                    )
                    ax.scatter([v["centroid_b"][0]], [v["centroid_b"][1]], marker="*", s=120, color=c)
                    ax.plot([0.0, v["centroid_b"][0]], [v["centroid_a"][1], v["centroid_b"][1]], color=c, lw=1)
                ax.axvline(0, color="#aaa", lw=0.8)
                ax.set_title(d, fontsize=10)
                ax.set_xlabel("PC1 shift (B − A)")
                if j == 0:
                    ax.set_ylabel("PC2")
                    ax.legend(fontsize=7, frameon=False)
            figs.append(
                Figure(
                    "PCA shift per domain (paper style)",
                    to_svg(fig),
                    "each dot is one layer; stars are layer-averaged centroids; the line length is the shift distance",
                )
            )
        fig, axes = new_figure(7.0, 3.0, ncols=2)
        labels: list[Any] = []
        for i, (lab, r) in enumerate(results.items()):
            c = COLORS[i % len(COLORS)]
            for j, d in enumerate(r["per_domain"]):
                pts = r["per_domain"][d]["points"]
                axes[0][0].plot(
                    range(len(pts)),
                    [p["pc1_shift"] for p in pts],
                    ["-", "--", ":", "-."][j % 4],
                    color=c,
                    label=f"{lab} · {d}",
                    lw=1.2,
                )
            labels = [row["layer"] for row in r["layers"]]
            axes[0][1].plot(
                range(len(labels)), [row["mean_angle_deg"] for row in r["layers"]], "-o", ms=3, color=c, label=lab
            )
        axes[0][0].set_title("PC1 shift by layer", fontsize=10)
        if axes[0][0].get_legend_handles_labels()[0]:  # no domain with enough samples: nothing to label
            axes[0][0].legend(fontsize=7, frameon=False)
        axes[0][1].set_title(f"mean principal angle (°), top-{next(iter(results.values()))['k']}", fontsize=10)
        for ax in axes[0]:
            layer_ticks(ax, labels)
            ax.set_xlabel("layer")
        figs.append(Figure("PCA shift and subspace rotation by layer", to_svg(fig)))
        return figs

    # -- the study report --------------------------------------------------------------------------
    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        per = result["per_domain"]
        return {
            "pca_distance": {d: v["distance"] for d, v in per.items()},
            "pca_points": {d: v.get("points", []) for d, v in per.items()},
            "principal_angles": [
                {"layer": x["layer"], "mean_angle_deg": x.get("mean_angle_deg")} for x in result.get("layers", [])
            ],
        }

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        per = result["per_domain"]
        return [(f"PCA shift {d}", per[d]["distance"], ".3f") for d in ordered_domains(per)]

    def drift_measures(self, result: Mapping[str, Any]) -> dict[str, float]:
        dists = [v["distance"] for v in result["per_domain"].values() if v["distance"] is not None]
        return {"PCA shift": float(np.mean(dists))} if dists else {}

    def drift_by_domain(self, result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        return {"pca_distance": {d: v["distance"] for d, v in result["per_domain"].items()}}

    def findings(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Which model moved pooled representations furthest (a ratio), then each model's domain of
        largest shift; a model whose distances are all negligible reads "no measurable change"."""
        out: list[str] = []
        dists = {lab: m for lab, r in results.items() if (m := self.drift_measures(r).get("PCA shift")) is not None}
        if len(dists) >= 2:
            hi = max(dists, key=dists.__getitem__)
            lo = min(dists, key=dists.__getitem__)
            if negligible(dists[hi]):
                out.append(f"No tuned model moved pooled representations: {NO_CHANGE} in the PCA shift.")
            elif not negligible(dists[lo]):
                out.append(
                    f"{hi} moved pooled representations {dists[hi] / dists[lo]:.1f}x as far as {lo} "
                    f"(mean PCA-shift distance {dists[hi]:.3g} vs {dists[lo]:.3g})."
                )
            else:
                out.append(
                    f"{hi} moved pooled representations (mean PCA-shift distance {dists[hi]:.3g}); "
                    f"{lo} did not move them at all."
                )
        for lab, r in results.items():
            d = {k: v["distance"] for k, v in r["per_domain"].items()}
            if not d:
                continue
            if all(negligible(v) for v in d.values()):
                out.append(f"{lab}: PCA shift: {NO_CHANGE} on any domain.")
                continue
            top = max(d, key=d.__getitem__)
            if len(d) == 1:  # one domain: "largest on X (5.66; )" said nothing and left empty brackets
                out.append(f"{lab}: PCA shift on {domain_name(top)} prompts {d[top]:.3g}.")
                continue
            out.append(
                f"{lab}: PCA shift is largest on {domain_name(top)} prompts ({d[top]:.3g}; "
                + ", ".join(f"{domain_name(k)} {v:.3g}" for k, v in d.items() if k != top)
                + ")."
            )
        return out
