"""``cka``: linear CKA (biased and debiased) between A's and B's residual stream, per layer.

Streams each layer's tokens once through :class:`driftkit.metrics.cka.StreamingCKA` (O(d^2) memory,
exact to 1e-6 against the gram-space formula). ``unit=sample`` compares mean-pooled samples instead
of tokens (coarser, but insensitive to per-token noise).
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
from driftkit.metrics.cka import StreamingCKA
from driftkit.registry.analysis import Analysis, Figure, fmt
from driftkit.registry.options import Option
from driftkit.report.figures import COLORS, layer_ticks, new_figure, to_svg
from driftkit.report.terminal import sparkline
from driftkit.report.wording import NEGLIGIBLE, NO_CHANGE


class CKAAnalysis(Analysis):
    name = "cka"
    title = "Linear CKA per layer (A vs B)"
    description = (
        "Similarity of the two models' hidden states on identical tokens, per layer: 1 = same geometry up to "
        "rotation and scale. Debiased CKA (unbiased HSIC) is not inflated by d/n and is the one to read."
    )
    options = {
        "unit": Option(
            "token",
            "What one CKA observation is: a token, or a sample's mean-pooled states.",
            choices=("token", "sample"),
        ),
        "cross_layer": Option(False, "Also compute the layer x layer CKA matrix (A's layer i vs B's layer j)."),
    }

    def check(self, pair: Any) -> str | None:
        if self.opts["unit"] not in ("token", "sample"):
            raise DriftkitError(f"cka.unit must be 'token' or 'sample', not {self.opts['unit']!r}.")
        if not pair.layer_sites():
            return "needs residual (or embed) sites recorded in both captures (capture with --probe residual)"
        return None

    consumes = frozenset({"layers"})

    def layer_needs(self) -> frozenset[str]:
        """Token CKA needs token rows (all, or the same sampled positions); sample CKA also runs on
        pooled captures (their per-sample means over the selected positions)."""
        base = {"tokens", "sampled"}
        return frozenset(base | {"pooled"} if self.opts["unit"] == "sample" else base)

    def start(self, pair: Any) -> None:
        self._layers: list[dict[str, Any]] = []
        self._n_rows = 0
        self._mask = self.layers_mask(pair)

    def start_layer(self, pair: Any, layer: Any, site: str) -> None:
        if pair.layer_rows == "pooled":  # per-sample means are read whole in finish_layer
            return
        # both shared through the engine's per-layer store: the d x d sums with similarity, the
        # per-sample sums with pca_shift and similarity (each chunk added once between them)
        if self.opts["unit"] == "token":
            self._sums = layer_sums(pair, site, self._mask)
            self._acc = self._sums.acc
        else:
            self._sums = sample_sums(pair, site, self._mask)
            self._acc = StreamingCKA(pair.a.shape(site)[1], pair.b.shape(site)[1])

    def on_layer(self, chunk: Any) -> None:
        self._sums.add(chunk)

    def finish_layer(self, pair: Any, layer: Any, site: str) -> None:
        if pair.layer_rows == "pooled":
            (ma, ca), (mb, _) = pair.pooled_means(site)
            keep = (ca > 0) & pair.sample_selected
            self._acc = StreamingCKA(ma.shape[1], mb.shape[1])
            self._acc.update(torch.from_numpy(ma[keep]), torch.from_numpy(mb[keep]))
        acc = self._acc
        if self.opts["unit"] == "sample" and pair.layer_rows != "pooled":
            (ma, ca), (mb, _) = self._sums.means()
            keep = ca > 0
            acc.update(torch.from_numpy(ma[keep]), torch.from_numpy(mb[keep]))
        if acc.n < 4:
            raise DriftkitError(
                f"CKA needs at least 4 {self.opts['unit']}s; the selection leaves {acc.n}. Widen "
                f"{opt('positions', None)}/{opt('domains', None)} or raise {opt('max_tokens', None)}."
            )
        r = acc.result()
        self._n_rows = r.n
        self._layers.append(
            {"layer": layer, "site": site.split("/", 1)[1], "linear_cka": r.linear_cka, "debiased_cka": r.debiased_cka}
        )
        del self._acc
        self.__dict__.pop("_sums", None)

    def layer_state(self, layer: Any) -> Any:
        """``--jobs``: the row finish_layer just appended and the observation count."""
        return {"entry": self._layers[-1], "n": self._n_rows}

    def load_layer_state(self, layer: Any, state: Any) -> None:
        self._layers.append(state["entry"])
        self._n_rows = state["n"]

    def finish(self, pair: Any) -> dict[str, Any]:
        mask = pair.mask("states")
        if pair.sampled_mask is not None:  # sample:K captures: the positions both files hold
            mask = mask & pair.sampled_mask
        sites = pair.layer_sites()
        layers, n_rows = self._layers, self._n_rows
        cross = (
            self._cross_layer(pair, mask, sites) if self.opts["cross_layer"] and pair.layer_rows != "pooled" else None
        )
        deb = [e["debiased_cka"] for e in layers if e["debiased_cka"] == e["debiased_cka"]]
        lin = [e["linear_cka"] for e in layers]
        worst = min(layers, key=lambda e: e["debiased_cka"] if e["debiased_cka"] == e["debiased_cka"] else math.inf)
        out: dict[str, Any] = {
            "unit": self.opts["unit"],
            "rows": pair.layer_rows_label,  # tokens | sampled:K (K stored tokens per sample) | pooled
            "n": n_rows,
            "layers": layers,
            "summary": {
                "mean_linear_cka": sum(lin) / len(lin),
                "mean_debiased_cka": sum(deb) / len(deb) if deb else None,
                "min_debiased_cka": worst["debiased_cka"],
                "min_layer": worst["layer"],
            },
        }
        if cross is not None:
            out["cross_layer"] = cross
        return out

    def _cross_layer(self, pair: Any, mask: Any, sites: list[tuple[Any, str]]) -> dict[str, Any]:
        """Debiased CKA of every A layer against every B layer (token unit). One pass over the
        tokens per A layer with one accumulator per B layer: memory O(L d^2), time O(L^2)."""
        step = max(256, pair.options.chunk_tokens // max(1, len(sites)))
        matrix: list[list[float]] = []
        for i, (_, pa) in enumerate(sites):
            accs = [StreamingCKA(pair.a.shape(pa)[1], pair.b.shape(pb)[1]) for _, pb in sites]
            its = [pair.a.iter_chunks(pa, step, mask)] + [pair.b.iter_chunks(pb, step, mask) for _, pb in sites]
            for chunks in zip(*its):
                xa = chunks[0][1]
                for acc, (_, xb) in zip(accs, chunks[1:]):
                    acc.update(xa, xb)
            matrix.append([acc.result().debiased_cka for acc in accs])
            pair.progress("cka cross-layer", i + 1, len(sites))
        return {"layers": [layer for layer, _ in sites], "debiased_cka": matrix}

    def summary(self, result: Mapping[str, Any]) -> dict[str, float]:
        s = result["summary"]
        return {k: s[k] for k in ("mean_debiased_cka", "min_debiased_cka", "mean_linear_cka")}

    def render(self, result: Mapping[str, Any]) -> Any:
        layers = result["layers"]
        deb = [e["debiased_cka"] for e in layers]
        lin = [e["linear_cka"] for e in layers]
        lo = min([v for v in deb + lin if v is not None and v == v] or [0.0])
        t = Table(box=None, show_header=False, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        t.add_column(style="dim")
        labels = f"{layers[0]['layer']} … {layers[-1]['layer']}" if layers else ""
        t.add_row("debiased", Text(sparkline(deb, lo, 1.0), style="cyan"), f"layers {labels}, scale {lo:.3f}–1")
        t.add_row("linear", Text(sparkline(lin, lo, 1.0), style="blue"), "")
        s = result["summary"]
        head = Text.assemble(
            ("mean debiased CKA ", ""),
            (fmt(s["mean_debiased_cka"]), "bold"),
            ("   lowest ", ""),
            (fmt(s["min_debiased_cka"]), "bold red"),
            (f" at layer {s['min_layer']}", ""),
            (f"   ({result['n']:,} {result['unit']}s)", "dim"),
        )

        # 1 - CKA in 2 significant digits: near-identical checkpoints give CKA 0.99998 vs 0.99990, which
        # any fixed number of decimals prints as "1.000" for every layer, hiding which layers moved
        def gap(v: Any) -> str:
            return "n/a" if v is None or v != v else f"{max(0.0, 1.0 - v):.2g}"

        movers = sorted(layers, key=lambda e: e["debiased_cka"] if e["debiased_cka"] == e["debiased_cka"] else 9)[:5]
        mv = Text("biggest movers (1 − debiased CKA): ", style="bold")
        mv.append("  ".join(f"{e['layer']}: {gap(e['debiased_cka'])}" for e in movers))
        return Group(head, t, mv)

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        fig, axes = new_figure(7.0, 3.2)
        ax = axes[0][0]
        labels: list[Any] = []
        for i, (lab, res) in enumerate(results.items()):
            layers = res["layers"]
            labels = [e["layer"] for e in layers]
            x = list(range(len(layers)))
            c = COLORS[i % len(COLORS)]
            ax.plot(x, [e["debiased_cka"] for e in layers], "-o", color=c, ms=3, label=f"{lab} debiased")
            ax.plot(x, [e["linear_cka"] for e in layers], "--", color=c, alpha=0.6, label=f"{lab} linear")
        layer_ticks(ax, labels)
        ax.set_xlabel("layer")
        ax.set_ylabel("CKA with A")
        ax.legend(fontsize=8, frameon=False)
        figs = [
            Figure("CKA per layer", to_svg(fig), "solid: debiased, dashed: biased linear CKA; 1 = unchanged geometry")
        ]
        for lab, res in results.items():
            cross = res.get("cross_layer")
            if not cross:
                continue
            fig, axes = new_figure(4.6, 4.0)
            ax = axes[0][0]
            im = ax.imshow(np.array(cross["debiased_cka"], dtype=float), vmin=0, vmax=1, cmap="viridis", origin="lower")
            ax.grid(False)
            ticks = list(range(0, len(cross["layers"]), max(1, len(cross["layers"]) // 8)))
            ax.set_xticks(ticks, [str(cross["layers"][t]) for t in ticks], fontsize=7)
            ax.set_yticks(ticks, [str(cross["layers"][t]) for t in ticks], fontsize=7)
            ax.set_xlabel(f"layer of {lab}")
            ax.set_ylabel("layer of A")
            fig.colorbar(im, ax=ax, shrink=0.8)
            figs.append(Figure(f"Cross-layer debiased CKA: A vs {lab}", to_svg(fig)))
        return figs

    # -- the study report --------------------------------------------------------------------------
    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        keep = ("layer", "linear_cka", "debiased_cka")
        return {"cka_layers": [{k: x.get(k) for k in keep} for x in result["layers"]]}

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        vals = [v for x in result["layers"] if (v := x["linear_cka"]) is not None and math.isfinite(v)]
        return [("mean CKA", float(np.mean(vals)) if vals else None, ".3f")]

    def findings(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Per model: the layers (the lowest fifth) where CKA to A is lowest, against the rest."""
        out = []
        for lab, res in results.items():
            layers = res.get("layers") or []
            if not layers:
                continue
            vals = np.array([x["linear_cka"] for x in layers], dtype=float)
            if np.all(np.abs(1.0 - vals) < NEGLIGIBLE):
                out.append(f"{lab}: linear CKA to the base is 1 at every layer ({NO_CHANGE}).")
                continue
            k = max(1, len(vals) // 5)
            low = np.argsort(vals)[:k]
            rest = np.setdiff1d(np.arange(len(vals)), low)
            lo_layers = [str(layers[i]["layer"]) for i in sorted(low)]  # depth order (as strings "10" < "8")
            out.append(
                f"{lab}: lowest CKA to the base at layer(s) {', '.join(lo_layers)} "
                f"(mean {vals[low].mean():.3f} vs {vals[rest].mean() if rest.size else float('nan'):.3f} elsewhere)."
            )
        return out
