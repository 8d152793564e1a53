"""``kl``: exact full-vocabulary KL(P_B||P_A), KL(P_A||P_B), JS and the sampled log-ratio.

Logits are rebuilt chunk by chunk from ``final/hidden`` and ``final/unembed`` of each capture
(:mod:`driftkit.metrics.kl`); sums per domain are float64. ``sampled_logratio`` is the paper's
estimator, the mean of ``log p_B(y_t) - log p_A(y_t)`` over *response* tokens y_t in the selection
(over all selected positions when the captures hold no responses).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from rich.console import Group
from rich.table import Table
from rich.text import Text

from driftkit.errors import DriftkitError
from driftkit.metrics.kl import NonFiniteLogits
from driftkit.registry.analysis import Analysis, Figure, fmt
from driftkit.registry.options import Option
from driftkit.report.figures import COLORS, new_figure, to_svg
from driftkit.report.wording import NO_CHANGE, negligible

KEYS = ("kl_forward", "kl_reverse", "js", "sampled_logratio")


class KLAnalysis(Analysis):
    name = "kl"
    title = "Next-token distributions: exact KL / JS"
    description = (
        "Exact divergences over the full vocabulary at every selected position; kl_forward = KL(P_B||P_A) "
        "(tuned from base, the paper's direction). sampled_logratio is the paper's sampled estimator."
    )
    options = {
        "chunk": Option(512, "Most positions per logits block (fewer on large vocabularies: memory stays bounded)."),
        "top": Option(10, "How many highest-KL positions to list in the result (0: none)."),
    }

    def check(self, pair: Any) -> str | None:
        return pair.logits_problem()

    consumes = frozenset({"logits"})
    logits_shared = frozenset({"kl"})  # chunk.kl(): one kernel run per block, shared (e.g. with token_view)

    def max_logits_rows(self) -> int:
        return int(self.opts["chunk"])

    def start(self, pair: Any) -> None:
        mask = pair.mask("predictive")
        self._resp = pair.mask("predictive", positions="response", max_tokens=None)
        self._use_resp = bool((mask & self._resp).any())
        nd = len(pair.domain_names)
        self._sums = torch.zeros(nd, 3, dtype=torch.float64)
        self._counts = torch.zeros(nd, dtype=torch.float64)
        self._lr_sum = torch.zeros(nd, dtype=torch.float64)
        self._lr_cnt = torch.zeros(nd, dtype=torch.float64)
        self._top_val = torch.empty(0, dtype=torch.float64)
        self._top_idx = torch.empty(0, dtype=torch.int64)

    def on_logits(self, chunk: Any) -> None:
        idx = chunk.idx
        try:
            st = chunk.kl()
        except NonFiniteLogits as e:
            pair = chunk.pair
            t = int(idx[e.row])
            smp = int(pair.token_sample[t])
            raise DriftkitError(
                f"kl: sample {pair.a.sample_ids[smp]!s} position {t - int(pair.a.offsets[smp])} "
                f"(token {t} of the capture): {e}"
            ) from None
        dom = chunk.domain
        self._sums.index_add_(0, dom, torch.stack([st.kl_forward, st.kl_reverse, st.js], 1).double())
        self._counts.index_add_(0, dom, torch.ones(len(idx), dtype=torch.float64))
        sel = torch.from_numpy(self._resp[idx]) if self._use_resp else torch.ones(len(idx), dtype=torch.bool)
        self._lr_sum.index_add_(0, dom[sel], st.logratio[sel].double())  # type: ignore[index]
        self._lr_cnt.index_add_(0, dom[sel], torch.ones(int(sel.sum()), dtype=torch.float64))
        top_k = int(self.opts["top"])
        if top_k > 0:
            self._top_val = torch.cat([self._top_val, st.kl_forward.double()])
            self._top_idx = torch.cat([self._top_idx, torch.from_numpy(idx)])
            if self._top_val.numel() > top_k:
                keep = torch.topk(self._top_val, top_k).indices
                self._top_val, self._top_idx = self._top_val[keep], self._top_idx[keep]

    def finish(self, pair: Any) -> dict[str, Any]:
        sums, counts, lr_sum, lr_cnt = self._sums, self._counts, self._lr_sum, self._lr_cnt
        top_val, top_idx, use_resp = self._top_val, self._top_idx, self._use_resp

        def row(s: torch.Tensor, n: float, lrs: float, lrn: float) -> dict[str, Any]:
            v = (s / n).tolist() if n > 0 else [None] * 3
            return {
                "kl_forward": v[0],
                "kl_reverse": v[1],
                "js": v[2],
                "sampled_logratio": lrs / lrn if lrn > 0 else None,
                "n_positions": int(n),
            }

        per_domain = {
            d: row(sums[i], float(counts[i]), float(lr_sum[i]), float(lr_cnt[i]))
            for i, d in enumerate(pair.domain_names)
        }
        summary = row(sums.sum(0), float(counts.sum()), float(lr_sum.sum()), float(lr_cnt.sum()))
        order = torch.argsort(top_val, descending=True)
        top = []
        for j in order.tolist():
            t = int(top_idx[j])
            s = int(pair.token_sample[t])
            nxt = int(pair.a.token_ids[t + 1])
            top.append(
                {
                    "sample": str(pair.a.sample_ids[s]),
                    "position": t - int(pair.a.offsets[s]),
                    "next_token": pair.token_strings([nxt])[0],
                    "kl_forward": float(top_val[j]),
                }
            )
        return {
            "positions": pair.positions,
            "logratio_positions": "response" if use_resp else pair.positions,
            "summary": summary,
            "per_domain": per_domain,
            "top_positions": top,
        }

    def summary(self, result: Mapping[str, Any]) -> dict[str, float]:
        return {k: result["summary"][k] for k in KEYS}

    def render(self, result: Mapping[str, Any]) -> Any:
        t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for c, j in (
            ("domain", "left"),
            ("positions", "right"),
            ("KL(B‖A)", "right"),
            ("KL(A‖B)", "right"),
            ("JS", "right"),
            ("log-ratio", "right"),
        ):
            t.add_column(c, justify=j)  # type: ignore[arg-type]
        for dom, r in result["per_domain"].items():
            t.add_row(dom, f"{r['n_positions']:,}", *[fmt(r[k]) for k in KEYS])
        s = result["summary"]
        t.add_row(Text("all", style="bold"), f"{s['n_positions']:,}", *[Text(fmt(s[k]), style="bold") for k in KEYS])
        parts: list[Any] = [t]
        if result.get("top_positions"):
            mv = Text("largest KL(B‖A): ", style="bold")
            mv.append(
                "  ".join(
                    f"{p['sample']}@{p['position']}→{p['next_token']!r} {fmt(p['kl_forward'], 3)}"
                    for p in result["top_positions"][:5]
                )
            )
            parts.append(mv)
        return Group(*parts)

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        domains: list[str] = []
        for r in results.values():
            domains += [d for d in r["per_domain"] if d not in domains]
        fig, axes = new_figure(7.0, 3.0, ncols=2)
        width = 0.8 / max(1, len(results))
        for k, (key, name) in enumerate((("kl_forward", "KL(P_B‖P_A)"), ("js", "JS divergence"))):
            ax = axes[0][k]
            for i, (lab, r) in enumerate(results.items()):
                vals = [r["per_domain"].get(d, {}).get(key) or 0.0 for d in domains]
                ax.bar(np.arange(len(domains)) + i * width, vals, width, color=COLORS[i % len(COLORS)], label=lab)
            ax.set_xticks(np.arange(len(domains)) + width * (len(results) - 1) / 2)
            ax.set_xticklabels(domains, fontsize=8)
            ax.set_title(name, fontsize=10)
        axes[0][0].legend(fontsize=8, frameon=False)
        return [
            Figure(
                "KL and JS per domain", to_svg(fig), "means over the selected positions, exact over the full vocabulary"
            )
        ]

    # -- the study report --------------------------------------------------------------------------
    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"kl": result["summary"], "kl_per_domain": result.get("per_domain", {})}

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        s = result["summary"]
        return [
            (label, s.get(k), ".3f")
            for label, k in (
                ("KL fwd", "kl_forward"),
                ("KL rev", "kl_reverse"),
                ("JS", "js"),
                ("log-ratio", "sampled_logratio"),
            )
        ]

    def drift_measures(self, result: Mapping[str, Any]) -> dict[str, float]:
        kl = result["summary"].get("kl_forward")
        return {"KL": kl} if kl is not None else {}

    def drift_by_domain(self, result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        return {"kl_forward": {d: v.get("kl_forward") for d, v in result.get("per_domain", {}).items()}}

    def findings(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        out = []
        for lab, r in results.items():
            kl = r["summary"].get("kl_forward")
            if kl is None:
                continue
            pos = r.get("positions", "all")
            where = "its response tokens" if pos == "response" else f"{pos} positions"
            out.append(
                f"{lab}: mean KL(P_tuned||P_base) over {where} {kl:.3f} nats"
                + (f" ({NO_CHANGE})." if negligible(kl) else ".")
            )
        return out
