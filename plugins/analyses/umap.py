"""``umap``: a 2-D UMAP of per-sample mean-pooled hidden states of A and B, at one layer.

The layer is streamed through the pair and each sample is mean-pooled on the fly
(:class:`driftkit.metrics.pca.SamplePooler`), so memory is O(samples x d), never O(tokens x d). A and
B's pooled samples are embedded together, so the picture shows whether B's prompts left A's cloud.
Not run by a plain ``driftkit compare`` (``default = False``): importing and fitting UMAP costs
seconds that the default comparison should not pay; ask for it with ``--analyses umap``. The study
of ``driftkit run`` requests it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from rich.text import Text

from driftkit.metrics.pca import SamplePooler
from driftkit.registry.analysis import Analysis, Figure
from driftkit.registry.options import Option
from driftkit.report.figures import COLORS, new_figure, to_svg

MARKERS = ("o", "s", "^", "D", "v", "P")
MIN_SAMPLES = 6  # UMAP of fewer points (both models together) is not meaningful


class UMAPAnalysis(Analysis):
    name = "umap"
    title = "UMAP of mean-pooled hidden states"
    description = (
        "2-D UMAP of per-sample mean-pooled residual states of A and B together, at one layer (the middle "
        "recorded one by default). Not run by default: ask for it with --analyses umap."
    )
    options = {
        "layer": Option(-1, "Decoder layer to embed; -1: the middle one of the layers recorded in both files."),
        "neighbors": Option(15, "UMAP n_neighbors (capped at the number of points - 1)."),
    }
    default = False
    needs_layers = frozenset({"tokens", "sampled"})  # pools token rows itself (pooled files: not yet)

    def _site(self, pair: Any) -> tuple[int | str, str] | None:
        sites = pair.layer_sites(include_embed=False)
        if not sites:
            return None
        want = int(self.opts["layer"])
        if want < 0:
            return sites[len(sites) // 2]
        return next((s for s in sites if s[0] == want), None)

    def check(self, pair: Any) -> str | None:
        if self._site(pair) is None:
            if int(self.opts["layer"]) >= 0:
                return f"needs residual layer {self.opts['layer']} recorded in both captures"
            return "needs residual sites recorded in both captures (capture with --probe residual)"
        n = len(np.unique(pair.token_sample[np.flatnonzero(pair.mask("states"))]))
        if n * 2 < MIN_SAMPLES:
            return (
                f"needs at least {MIN_SAMPLES} pooled samples (A and B together); {n} per model have selected "
                f"tokens at positions '{pair.positions}'"
            )
        return None

    def run(self, pair: Any) -> dict[str, Any]:
        import umap

        layer, path = self._site(pair)  # type: ignore[misc]
        mask = pair.mask("states")
        pa = SamplePooler(pair.a.n_samples, pair.a.shape(path)[1])
        pb = SamplePooler(pair.a.n_samples, pair.b.shape(path)[1])
        for idx, xa, xb in pair.iter_pair(path, mask):
            s = pair.token_sample[idx]
            pa.update(s, xa)
            pb.update(s, xb)
        (fa, ca), (fb, _) = pa.means(), pb.means()
        keep = np.flatnonzero((ca > 0) & pair.sample_selected)
        x = np.concatenate([fa[keep], fb[keep]])
        emb = umap.UMAP(
            n_neighbors=min(int(self.opts["neighbors"]), len(x) - 1), random_state=pair.options.seed, n_jobs=1
        ).fit_transform(x)
        doms = [str(pair.a.domains[i]) for i in keep]
        ids = [str(pair.a.sample_ids[i]) for i in keep]
        points = [
            {"side": side, "sample": ids[j], "domain": doms[j], "x": float(e[0]), "y": float(e[1])}
            for k, side in enumerate(("a", "b"))
            for j, e in enumerate(emb[k * len(keep) : (k + 1) * len(keep)])
        ]
        return {"positions": pair.positions, "layer": layer, "summary": {"n_samples": len(keep)}, "points": points}

    def render(self, result: Mapping[str, Any]) -> Any:
        return Text(
            f"UMAP of {result['summary']['n_samples']} pooled samples per model at layer {result['layer']} "
            "(see the HTML report for the figure)"
        )

    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"umap": {"layer": result["layer"], "points": list(result["points"])}}

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        return []  # a picture, not a number

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        if not results:
            return []
        fig, axes = new_figure(4.2 * len(results), 3.8, ncols=len(results))
        for j, (lab, r) in enumerate(results.items()):
            ax = axes[0][j]
            doms = sorted({p["domain"] for p in r["points"]})
            for k, (side, name) in enumerate((("a", "A"), ("b", lab))):
                for m, d in enumerate(doms):
                    pts = [p for p in r["points"] if p["side"] == side and p["domain"] == d]
                    ax.scatter(
                        [p["x"] for p in pts],
                        [p["y"] for p in pts],
                        s=14,
                        marker=MARKERS[m % len(MARKERS)],
                        color=COLORS[k],
                        alpha=0.75,
                        label=f"{name} / {d}",
                    )
            ax.set_title(f"A vs {lab}, layer {r['layer']}", fontsize=9)
            ax.legend(fontsize=6, ncol=2, frameon=False)
        return [
            Figure(
                "UMAP of mean-pooled representations",
                to_svg(fig),
                "one point per prompt, A and B embedded together; colour: model, marker: domain",
            )
        ]
