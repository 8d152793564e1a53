"""``logit_lens``: at which depth the two models' next-token distributions part.

For each recorded decoder layer, each model's residual (the layer's output, ``sites/residual.<L>``)
goes through *its own* final norm (``final/norm/*``) and *its own* unembedding (``final/unembed``),
and the exact full-vocabulary KL(P_B || P_A) is taken per position with the ``kl`` analysis's kernel
(:func:`driftkit.metrics.kl.kl_from_logits_`), then averaged over the selected predictive positions.
At the model's last layer the lens is the model itself, so that layer's value is the ``kl``
analysis's ``kl_forward`` on the same positions. ``half_kl_layer`` is the first layer whose lens KL
reaches half the last layer's: where, in depth, the tuned model's predictions start to differ.

Cost: one full-vocabulary logits rebuild per layer per model, so it reads a seeded subsample of
``max_positions`` predictive positions (the same for both models) and, optionally, every k-th layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from rich.console import Group
from rich.text import Text

from driftkit.errors import DriftkitError
from driftkit.metrics.kl import NonFiniteLogits, kl_on_row_slices, logits_into, rows_for_budget, slice_rows
from driftkit.metrics.lens import NORM_TYPES, FinalNorm
from driftkit.registry.analysis import Analysis, Figure, fmt
from driftkit.registry.options import Option
from driftkit.report.figures import COLORS, layer_ticks, new_figure, to_svg
from driftkit.report.terminal import sparkline
from driftkit.report.wording import NO_CHANGE, negligible
from driftkit.store import schema as S

#: bytes of the (rows, V) float32 blocks per position and vocabulary entry: both logits (the kernel's
#: scratch is one row slice, outside the budget, as in the logits pass)
_BYTES_PER_ENTRY = 8
#: byte budget of those blocks (the compare engine's logits pass uses the same)
_BUDGET = 256 * 2**20


def read_final_norm(reader: Any) -> FinalNorm:
    """The final norm a capture recorded (``final/norm/weight`` and its attrs, ``final/norm/bias``)."""
    ds = reader.h5[S.FINAL_NORM_WEIGHT]
    kind = ds.attrs.get("type")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    bias = reader.read(S.FINAL_NORM_BIAS) if reader.has(S.FINAL_NORM_BIAS) else None
    return FinalNorm(
        kind, reader.read(S.FINAL_NORM_WEIGHT), bias, float(ds.attrs["eps"]), float(ds.attrs.get("weight_offset", 0.0))
    )


def half_layer(layers: list[dict[str, Any]]) -> Any:
    """The first layer whose lens KL reaches half the last layer's (None when the last is negligible)."""
    if not layers or negligible(layers[-1]["kl_forward"]):
        return None
    half = 0.5 * layers[-1]["kl_forward"]
    return next(e["layer"] for e in layers if e["kl_forward"] >= half)


class LogitLensAnalysis(Analysis):
    name = "logit_lens"
    title = "Logit-lens drift: KL(P_B‖P_A) per layer"
    description = (
        "Each layer's residual read through each model's own final norm and unembedding; exact KL(P_B||P_A) per "
        "layer and the first layer reaching half the last layer's KL (where the distributions part)."
    )
    options = {
        "max_positions": Option(
            128,
            "Predictive positions read through the lens (a seeded subsample, the same for both models; 0: all). "
            "Each costs one full-vocabulary logits rebuild per layer per model.",
        ),
        "layers": Option(
            "all",
            "Recorded decoder layers to read: all, every:K, or a list such as 0,4,8; the last recorded layer is "
            "always included (the half-KL reference).",
        ),
        "chunk": Option(256, "Most positions per logits block (fewer on large vocabularies: memory stays bounded)."),
    }
    consumes = frozenset({"layers"})
    default = True

    # -- what it reads -------------------------------------------------------------------------------
    def check(self, pair: Any) -> str | None:
        problem = pair.logits_problem()
        if problem:
            return problem
        for tag, r in (("A", pair.a), ("B", pair.b)):
            if not r.has(S.FINAL_NORM_WEIGHT):
                return (
                    f"capture {tag} ({r.path}) holds no {S.FINAL_NORM_WEIGHT}: it was made before driftkit recorded "
                    "the final norm, or its model's final norm is of a kind driftkit does not reproduce; re-capture it "
                    "with the 'final' probe to read layers through the logit lens"
                )
            kind = r.h5[S.FINAL_NORM_WEIGHT].attrs.get("type")
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind not in NORM_TYPES:
                return f"capture {tag} ({r.path}) records a final norm of type {kind!r}; supported: {NORM_TYPES}"
        if not self._sites(pair):
            return "needs residual layers recorded in both captures (capture with --probe residual)"
        return None

    def _sites(self, pair: Any) -> list[tuple[int | str, str]]:
        """The residual sites read: the option's selection among the recorded ones, plus the last."""
        sites = [(layer, p) for layer, p in pair.layer_sites(include_embed=False) if isinstance(layer, int)]
        spec = self.opts["layers"]
        if not sites or spec in (None, "", "all"):
            return sites
        from driftkit.registry.probe import parse_layers

        n_layers = int(pair.a.attrs.get("num_layers", sites[-1][0] + 1))
        wanted = set(parse_layers(str(spec), n_layers))
        if str(spec).startswith("every:"):  # every k-th of the recorded layers, not of the model's
            k = int(str(spec).split(":", 1)[1])
            wanted = {layer for i, (layer, _) in enumerate(sites) if i % k == 0}
        chosen = [s for s in sites if s[0] in wanted]
        if not chosen:
            recorded = [layer for layer, _ in sites]
            raise DriftkitError(
                f"logit_lens.layers={spec!r} selects none of the layers recorded in both captures ({recorded}). "
                "Pick among those, or use 'all' or 'every:K'."
            )
        return chosen if chosen[-1] == sites[-1] else [*chosen, sites[-1]]

    def layer_sites(self, pair: Any) -> list[tuple[int | str, str]]:
        return self._sites(pair)

    def layers_mask(self, pair: Any) -> np.ndarray:
        """Predictive positions (t predicts t + 1), subsampled to ``max_positions`` with ``--seed``."""
        m = pair.mask("predictive")
        held = pair.sampled_mask  # sample:K files: draw among the stored rows, not among rows that are not there
        if held is not None:
            m = m & held
        cap = int(self.opts["max_positions"])
        if cap > 0 and int(m.sum()) > cap:
            rng = np.random.default_rng(pair.options.seed)
            keep = rng.choice(np.flatnonzero(m), size=cap, replace=False)
            m = np.zeros_like(m)
            m[keep] = True
        return m

    # -- the work --------------------------------------------------------------------------------------
    def start(self, pair: Any) -> None:
        if int(self.opts["max_positions"]) < 0:
            raise DriftkitError(f"logit_lens.max_positions must be >= 0 (0: all), got {self.opts['max_positions']}.")
        # The unembeddings (2 x 113 MB at V = 49,152, d = 576) are read at the first layer, not here:
        # the logits pass runs between start and the layers and holds its own pair, and with both
        # resident the default comparison peaked at 1,021 MB instead of ~840.
        self._un: tuple[Any, ...] = ()
        self._norm = (read_final_norm(pair.a), read_final_norm(pair.b))
        self._bufs: list[torch.Tensor] = []
        self._layers: list[dict[str, Any]] = []
        self._n = 0

    def start_layer(self, pair: Any, layer: Any, site: str) -> None:
        if not self._un:
            self._un = (pair.a.unembedding(), pair.b.unembedding())
            vocab = int(self._un[0].weight.shape[0])
            self._rows = rows_for_budget(vocab, int(self.opts["chunk"]), _BYTES_PER_ENTRY, _BUDGET)
        self._sum = torch.zeros(3, dtype=torch.float64)
        self._count = 0

    def on_layer(self, chunk: Any) -> None:
        n = len(chunk)
        vocab = int(self._un[0].weight.shape[0])
        if not self._bufs:
            # two (rows, V) logit blocks, and the KL kernel's three scratch arrays for one row slice
            # (:func:`~driftkit.metrics.kl.row_slices`: cache-sized, as the logits pass's kernels): 100 MB + 12 MB at
            # V = 49,152 and 2 threads, against five blocks (252 MB), and the kernel runs in cache
            step = slice_rows(self._rows, vocab)
            self._bufs = [torch.empty(self._rows, vocab) for _ in range(2)]
            self._bufs += [torch.empty(step, vocab) for _ in range(3)]
        for s in range(0, n, self._rows):
            e = min(n, s + self._rows)
            la, lb = self._bufs[0][: e - s], self._bufs[1][: e - s]
            logits_into(self._un[0], self._norm[0].apply(chunk.xa[s:e]), la)
            logits_into(self._un[1], self._norm[1].apply(chunk.xb[s:e]), lb)
            try:  # three scratch arrays: the kernel may overwrite la and lb, which are not read again
                st = kl_on_row_slices(la, lb, None, self._bufs[2:], row_offset=s)
            except NonFiniteLogits as exc:
                t = int(chunk.idx[exc.row])
                raise DriftkitError(f"logit_lens, layer {chunk.layer}, token {t} of the capture: {exc}") from None
            self._sum += torch.stack([st.kl_forward.sum(), st.kl_reverse.sum(), st.js.sum()]).double()
            self._count += e - s

    def finish_layer(self, pair: Any, layer: Any, site: str) -> None:
        v = (self._sum / self._count).tolist() if self._count else [None] * 3
        self._layers.append({"layer": layer, "kl_forward": v[0], "kl_reverse": v[1], "js": v[2]})
        self._n = self._count

    def finish(self, pair: Any) -> dict[str, Any]:
        self._bufs, self._un = [], ()  # free the (rows, V) blocks and both unembeddings
        layers = [e for e in self._layers if e["kl_forward"] is not None]
        n_layers = int(pair.a.attrs.get("num_layers", (layers[-1]["layer"] + 1) if layers else 0))
        last = layers[-1] if layers else None
        half = half_layer(layers)
        vals = [e["kl_forward"] for e in layers]
        return {
            "positions": pair.positions,
            "rows": pair.layer_rows_label,  # tokens | sampled:K (the lens reads only the stored rows)
            "n_positions": self._n,
            "num_layers": n_layers,
            "reference_layer": last["layer"] if last else None,
            "half_kl_layer": half,
            "layers": self._layers,
            "summary": {
                "final_kl": last["kl_forward"] if last else None,
                "mean_kl": float(np.mean(vals)) if vals else None,
                "half_kl_layer": half,
                "half_kl_depth": (half + 1) / n_layers if half is not None and n_layers else None,
            },
        }

    # -- presentation ----------------------------------------------------------------------------------
    def render(self, result: Mapping[str, Any]) -> Any:
        layers = result["layers"]
        vals = [e["kl_forward"] for e in layers]
        s = result["summary"]
        head = Text.assemble(
            ("lens KL(B‖A) at layer ", ""),
            (str(result["reference_layer"]), "bold"),
            (" ", ""),
            (fmt(s["final_kl"]), "bold"),
            ("   half of it first reached at layer ", ""),
            (str(s["half_kl_layer"]) if s["half_kl_layer"] is not None else "–", "bold red"),
            (f" of {result['num_layers']}", ""),
            (f"   ({result['n_positions']:,} positions)", "dim"),
        )
        hi = max([v for v in vals if v is not None] or [0.0])
        labels = f"layers {layers[0]['layer']} … {layers[-1]['layer']}" if layers else ""
        line = Text(sparkline(vals, 0.0, hi or 1.0), style="cyan")
        line.append(f"  {labels}, scale 0–{fmt(hi, 3)} nats", style="dim")
        return Group(head, line)

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        fig, axes = new_figure(7.0, 3.2)
        ax = axes[0][0]
        labels: list[Any] = []
        positive = True
        for i, (lab, res) in enumerate(results.items()):
            layers = [e for e in res["layers"] if e["kl_forward"] is not None]
            if len(layers) > len(labels):
                labels = [e["layer"] for e in layers]
            vals = [e["kl_forward"] for e in layers]
            positive &= all(v > 0 for v in vals)
            c = COLORS[i % len(COLORS)]
            ax.plot(range(len(vals)), vals, "-o", color=c, ms=3, label=lab)
            half = res.get("half_kl_layer")
            if half is not None:
                ax.axvline([e["layer"] for e in layers].index(half), color=c, ls=":", lw=1)
        if positive and labels:
            ax.set_yscale("log")
        layer_ticks(ax, labels)
        ax.set_xlabel("layer")
        ax.set_ylabel("lens KL(P_B‖P_A), nats")
        ax.legend(fontsize=8, frameon=False)
        return [
            Figure(
                "Logit-lens drift per layer",
                to_svg(fig),
                "each layer's residual through each model's own final norm and unembedding; dotted: the first "
                "layer reaching half the last layer's KL",
            )
        ]

    # -- the study report ----------------------------------------------------------------------------
    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "logit_lens": {
                "layers": [{"layer": e["layer"], "kl_forward": e["kl_forward"]} for e in result["layers"]],
                "half_kl_layer": result.get("half_kl_layer"),
                "final_kl": result["summary"].get("final_kl"),
            }
        }

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        s = result["summary"]
        return [("lens KL (mean)", s.get("mean_kl"), ".3f"), ("lens half-KL layer", s.get("half_kl_layer"), "d")]

    def drift_measures(self, result: Mapping[str, Any]) -> dict[str, float]:
        v = result["summary"].get("mean_kl")
        return {"lens KL": v} if v is not None else {}

    def findings(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """One line: where each model's lens distributions part from the base, and which drifts most."""
        parts, means = [], {}
        for lab, r in results.items():
            s = r.get("summary") or {}
            if s.get("mean_kl") is None:
                continue
            means[lab] = s["mean_kl"]
            if s.get("half_kl_layer") is None:
                parts.append(f"{lab} shows {NO_CHANGE} through the lens")
            else:
                parts.append(
                    f"{lab}'s distributions part from the base at layer {s['half_kl_layer']} of {r.get('num_layers')} "
                    f"(half of its last-layer lens KL, {fmt(s['final_kl'], 3)} nats)"
                )
        if not parts:
            return []
        line = "Logit lens: " + "; ".join(parts)
        order = sorted(means, key=lambda k: -means[k])
        if len(order) == 2:
            a, b = order
            verb = "drifts more than" if means[a] > means[b] else "drifts as much as"
            line += f"; {a} {verb} {b} on mean lens KL over layers ({fmt(means[a], 3)} vs {fmt(means[b], 3)} nats)"
        elif len(order) > 2:
            line += "; mean lens KL over layers: " + " > ".join(f"{k} ({fmt(means[k], 3)})" for k in order) + " nats"
        return [line + "."]
