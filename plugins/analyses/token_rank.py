"""``token_rank``: URIAL shift buckets and the paper's rank shift, exact over the full vocabulary.

At each selected position: B's top token is looked up in A's distribution (rank 1 unshifted, 2-3
marginal, > 3 shifted; Lin et al. 2023), and the realised next token's rank under both models gives
the rank shift ``rank_A(y) - rank_B(y)`` (``rank_shift``, Huan et al. 2025); ``rank_shift_top`` is the
paper's ``rank_A(top_B) - 1``. Ranks are "min" ranks, counts of strictly larger logits
(:mod:`driftkit.metrics.ranks`), never a sort; a tie at B's top is resolved by A's preference, never
by vocabulary order. The tokens B most often puts on top where A did not
rank them in its top 3 are listed with readable strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from rich.console import Group
from rich.table import Table
from rich.text import Text

from driftkit.metrics.ranks import BUCKETS, urial_bucket
from driftkit.registry.analysis import Analysis, Figure, fmt
from driftkit.registry.options import Option
from driftkit.report.figures import COLORS, new_figure, to_svg
from driftkit.report.terminal import bar

BUCKET_COLORS = ("#4c9f70", "#e1b12c", "#c0392b")


class TokenRankAnalysis(Analysis):
    name = "token_rank"
    title = "Token rank shift (URIAL buckets)"
    description = (
        "Where B's top token ranks under A: unshifted (rank 1), marginal (2-3), shifted (>3); rank_shift is the "
        "mean of rank_A(y) - rank_B(y) over realised next tokens y (positive: B promotes what was produced); "
        "rank_shift_top is the mean of rank_A(top_B) - 1."
    )
    options = {
        "chunk": Option(512, "Most positions per logits block (fewer on large vocabularies: memory stays bounded)."),
        "top": Option(15, "How many most often shifted tokens to list, by token string (0: none)."),
    }

    def check(self, pair: Any) -> str | None:
        return pair.logits_problem()

    consumes = frozenset({"logits"})
    logits_shared = frozenset({"ranks"})  # chunk.ranks(): one rank pass per block, shared (e.g. with token_view)

    def max_logits_rows(self) -> int:
        return int(self.opts["chunk"])

    def start(self, pair: Any) -> None:
        nd = len(pair.domain_names)
        self._buckets = torch.zeros(nd, 3, dtype=torch.int64)
        self._shift_sum = torch.zeros(nd, dtype=torch.float64)
        self._top_sum = torch.zeros(nd, dtype=torch.float64)
        self._counts = torch.zeros(nd, dtype=torch.int64)
        self._shifted: torch.Tensor | None = None

    def on_logits(self, chunk: Any) -> None:
        vocab = chunk.logits_a.shape[1]
        if self._shifted is None:
            self._shifted = torch.zeros(vocab, dtype=torch.int64)
        st = chunk.ranks()
        b = urial_bucket(st.rank_a_of_top_b)
        dom = chunk.domain
        self._buckets.index_put_((dom, b), torch.ones_like(b), accumulate=True)
        self._shift_sum.index_add_(0, dom, (st.rank_a - st.rank_b).double())  # type: ignore[operator]
        self._top_sum.index_add_(0, dom, (st.rank_a_of_top_b - 1).double())
        self._counts.index_add_(0, dom, torch.ones_like(dom))
        self._shifted += torch.bincount(st.top_b[b == 2], minlength=vocab)

    def finish(self, pair: Any) -> dict[str, Any]:
        buckets, shift_sum, top_sum, counts = self._buckets, self._shift_sum, self._top_sum, self._counts
        shifted_tokens = self._shifted if self._shifted is not None else torch.zeros(1, dtype=torch.int64)

        def row(bk: torch.Tensor, ssum: float, tsum: float, n: int) -> dict[str, Any]:
            if n == 0:
                return {
                    "unshifted": None,
                    "marginal": None,
                    "shifted": None,
                    "rank_shift": None,
                    "rank_shift_top": None,
                    "n_positions": 0,
                }
            f = (bk.double() / n).tolist()
            return {
                "unshifted": f[0],
                "marginal": f[1],
                "shifted": f[2],
                "rank_shift": ssum / n,
                "rank_shift_top": tsum / n,
                "n_positions": n,
            }

        per_domain = {
            d: row(buckets[i], float(shift_sum[i]), float(top_sum[i]), int(counts[i]))
            for i, d in enumerate(pair.domain_names)
        }
        summary = row(buckets.sum(0), float(shift_sum.sum()), float(top_sum.sum()), int(counts.sum()))
        k = int(self.opts["top"])
        top: list[dict[str, Any]] = []
        if k > 0 and int(shifted_tokens.sum()) > 0:
            vals, ids = torch.topk(shifted_tokens, min(k, int((shifted_tokens > 0).sum())))
            strings = pair.token_strings(ids.tolist())
            top = [{"token": s, "id": int(i), "count": int(v)} for s, i, v in zip(strings, ids.tolist(), vals.tolist())]
        return {"positions": pair.positions, "summary": summary, "per_domain": per_domain, "top_shifted_tokens": top}

    def summary(self, result: Mapping[str, Any]) -> dict[str, float]:
        keys = ("unshifted", "marginal", "shifted", "rank_shift", "rank_shift_top")
        return {k: result["summary"].get(k) for k in keys}

    def render(self, result: Mapping[str, Any]) -> Any:
        t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        t.add_column("domain", no_wrap=True)
        t.add_column("positions", justify="right")
        t.add_column("unshifted", justify="right")
        t.add_column("marginal", justify="right")
        t.add_column("shifted", justify="right")
        t.add_column("")  # the shifted share as a bar
        # two-line headers keep the table within 80 columns (one-line ones were cut to "positio…")
        t.add_column("rank\nshift", justify="right")
        t.add_column("top\nshift", justify="right")
        items = list(result["per_domain"].items()) + [("all", result["summary"])]
        for dom, r in items:
            if not r["n_positions"]:
                continue
            style = "bold" if dom == "all" else ""
            t.add_row(
                Text(dom, style=style),
                f"{r['n_positions']:,}",
                *[f"{100 * r[b]:.1f}%" for b in BUCKETS],
                Text(bar(r["shifted"], 8), style="red"),
                fmt(r["rank_shift"], 2),
                fmt(r.get("rank_shift_top"), 2),
            )
        parts: list[Any] = [t]
        if result.get("top_shifted_tokens"):
            line = Text("top shifted tokens (B's choice, not in A's top 3): ", style="bold")
            line.append("  ".join(f"{x['token']!r}×{x['count']}" for x in result["top_shifted_tokens"][:10]))
            parts.append(line)
        return Group(*parts)

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        labels, fr = [], []
        for lab, r in results.items():
            for dom, d in list(r["per_domain"].items()) + [("all", r["summary"])]:
                if d["n_positions"]:
                    labels.append(f"{lab} · {dom}")
                    fr.append([d[b] for b in BUCKETS])
        if not fr:
            return []
        arr = np.array(fr)
        fig, axes = new_figure(7.0, 0.35 * len(labels) + 1.2)
        ax = axes[0][0]
        left = np.zeros(len(labels))
        for j, b in enumerate(BUCKETS):
            ax.barh(labels, arr[:, j], left=left, color=BUCKET_COLORS[j], label=b)
            left += arr[:, j]
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of positions")
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=8, frameon=False, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        fig2, axes2 = new_figure(7.0, 2.6)
        ax2 = axes2[0][0]
        for i, (lab, r) in enumerate(results.items()):
            doms = [d for d, v in r["per_domain"].items() if v["n_positions"]]
            ax2.plot(
                doms, [r["per_domain"][d]["rank_shift"] for d in doms], "o-", color=COLORS[i % len(COLORS)], label=lab
            )
        ax2.axhline(0, color="#888", lw=0.8)
        ax2.set_ylabel("mean rank_A(y) − rank_B(y)")
        ax2.legend(fontsize=8, frameon=False)
        return [
            Figure(
                "URIAL rank buckets",
                to_svg(fig),
                "rank under A of B's top token: 1 unshifted, 2–3 marginal, >3 shifted",
            ),
            Figure("Rank shift of realised tokens per domain", to_svg(fig2)),
        ]

    # -- the study report --------------------------------------------------------------------------
    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "rank": result["summary"],
            "rank_per_domain": result.get("per_domain", {}),
            "top_shifted_tokens": list(result.get("top_shifted_tokens", []))[:12],
        }

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        s = result["summary"]
        return [
            ("unshifted", s.get("unshifted"), ".3f"),
            ("shifted", s.get("shifted"), ".3f"),
            ("rank shift", s.get("rank_shift"), ".2f"),
        ]

    def drift_measures(self, result: Mapping[str, Any]) -> dict[str, float]:
        shifted = result["summary"].get("shifted")
        return {"shifted tokens": shifted} if shifted is not None else {}

    def findings(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        out = []
        for lab, r in results.items():
            s = r["summary"]
            if not s.get("n_positions"):
                continue
            toks = ", ".join(repr(t["token"]) for t in r.get("top_shifted_tokens", [])[:5])
            out.append(
                f"{lab}: {100 * s['unshifted']:.0f}% of tokens unshifted, {100 * s['shifted']:.0f}% shifted "
                "(rank > 3 under the base)" + (f"; most shifted: {toks}" if toks else "") + "."
            )
        return out
