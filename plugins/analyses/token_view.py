"""``token_view``: the compared responses token by token, for the HTML reports.

Why: the summary numbers say how far B moved from A, not *where*. This analysis keeps, for a few
samples, every selected position's KL(P_B||P_A), the realised token's rank under both models (and
the rank under A of B's top token, the URIAL bucket ``token_rank`` counts), both log-probabilities
of the realised token and A's top alternatives, and renders them as one self-contained, offline
HTML section (:meth:`html_sections`): tokens coloured by KL or by a rank bucket, a hover card with
the numbers, and a sample picker ordered by drift.

Cost and memory: it rides the compare engine's shared logits pass (no extra logits rebuild) and
takes the exact KL and rank statistics from the block's memo (``chunk.kl()``, ``chunk.ranks()``:
computed once per block for it, ``kl`` and ``token_rank`` together); its own work is A's normaliser
and top-k (two reads of A's block). Positions arrive in token order, so a sample's positions
are contiguous: the per-token numbers of the sample being read are buffered (at most ``max_tokens``
rows), and when it completes its mean KL is recorded (O(samples) floats) and its rows kept only if
it is among the ``samples`` largest mean KL so far (a min-heap) or among the first ``per_domain``
samples of its domain (a low-drift contrast). Memory therefore does not grow with the token count.
"""

from __future__ import annotations

import heapq
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.text import Text

from driftkit.errors import DriftkitError
from driftkit.metrics.kl import NonFiniteLogits
from driftkit.registry.analysis import Analysis, fmt
from driftkit.registry.options import Option

#: colour modes of the view: what value a token is bucketed by, the bucket edges (a value v falls in
#: bucket #{edges <= v}), bucket names and colours. The page's script and the tests read these.
MODES: list[dict[str, Any]] = [
    {
        "key": "kl",
        "label": "KL(P_B‖P_A) at the token",
        "value": "kl",
        "edges": [1e-3, 1e-2, 1e-1, 1.0],
        "names": ["< 0.001", "0.001–0.01", "0.01–0.1", "0.1–1", "≥ 1 nat"],
        "colors": ["#f7f7f7", "#fde0c5", "#f9b384", "#ee6a50", "#b2182b"],
    },
    {
        "key": "urial",
        "label": "URIAL bucket: rank under A of B's top token",
        "value": "rank_a_top_b",
        "edges": [2, 4],
        "names": ["unshifted (1)", "marginal (2–3)", "shifted (> 3)"],
        "colors": ["#e5f5e0", "#fee391", "#f4a582"],
    },
    {
        "key": "shift",
        "label": "rank shift of the token: rank_A − rank_B",
        "value": "rank_shift",
        "edges": [0, 1],
        "names": ["demoted by B (< 0)", "same rank (0)", "promoted by B (> 0)"],
        "colors": ["#92c5de", "#f7f7f7", "#f4a582"],
    },
]

_ASSET = Path(__file__).with_name("token_view.js")

_CSS = """.dk-tv{border:1px solid #ddd;border-radius:6px;padding:.6rem .8rem;margin:.6rem 0 1.2rem;position:relative}
.dk-tv-controls{display:flex;flex-wrap:wrap;gap:.4rem 1rem;font-size:.88rem;margin-bottom:.4rem}
.dk-tv-controls select{max-width:28rem}
.dk-tv-legend{font-size:.8rem;color:#444;margin:.2rem 0 .5rem}
.dk-tv-legend span{display:inline-block;padding:0 .4rem;margin-right:.3rem;border:1px solid #ccc;border-radius:3px}
.dk-tv-context{color:#777;font-size:.85rem;white-space:pre-wrap;margin-bottom:.3rem;font-family:ui-monospace,monospace}
.dk-tv-tokens{white-space:pre-wrap;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9rem;\
line-height:1.7}
.dk-tv-tokens span{border-radius:2px;cursor:default;box-shadow:inset 0 0 0 1px rgba(0,0,0,.06)}
.dk-tv-tokens span:hover,.dk-tv-tokens span:focus{outline:2px solid #333}
.dk-tv-tip{position:absolute;z-index:10;background:#fff;border:1px solid #999;border-radius:4px;\
padding:.35rem .5rem;font-size:.8rem;box-shadow:0 2px 6px rgba(0,0,0,.2);white-space:pre;pointer-events:none;\
font-family:ui-monospace,monospace}
.dk-tv-note{color:#777;font-size:.8rem}"""


def _sig(x: np.ndarray, digits: int = 4) -> list[float | None]:
    """Floats rounded to ``digits`` significant digits for a compact JSON (non-finite: None)."""
    return [float(f"{v:.{digits}g}") if np.isfinite(v) else None for v in np.asarray(x, dtype=np.float64).tolist()]


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as escapes, so token text
    such as ``</script>`` can neither end the element nor open a comment."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class TokenViewAnalysis(Analysis):
    name = "token_view"
    title = "Token by token: where the distributions part"
    description = (
        "Chosen samples token by token, coloured by KL(P_B||P_A) at the token or by a rank bucket; hover a token "
        "for its numbers and A's top alternatives. The picker lists the samples with the largest mean KL first."
    )
    options = {
        "samples": Option(20, "How many samples with the largest mean KL(P_B||P_A) to show token by token."),
        "per_domain": Option(1, "Also show the first N samples of each domain (a contrast to the most drifted)."),
        "max_tokens": Option(256, "Most positions kept per shown sample (the mean KL uses all of them)."),
        "top_k": Option(3, "How many of A's most likely next tokens to list per token."),
        "context": Option(48, "Tokens of text before a sample's first shown position kept as context."),
        "chunk": Option(512, "Most positions per logits block (fewer on large vocabularies: memory stays bounded)."),
    }

    consumes = frozenset({"logits"})
    logits_shared = frozenset({"kl", "ranks"})  # from the block's memo: shared with kl and token_rank
    logits_scratch_bytes = 4  # one float32 (rows, V) buffer for A's normaliser

    def check(self, pair: Any) -> str | None:
        return pair.logits_problem()

    def max_logits_rows(self) -> int:
        return int(self.opts["chunk"])

    # -- streaming -----------------------------------------------------------------------------
    def start(self, pair: Any) -> None:
        n = len(pair.a.sample_ids)
        self._mean = np.full(n, np.nan)
        self._count = np.zeros(n, dtype=np.int64)
        self._heap: list[tuple[float, int, int]] = []  # (mean KL, -sample, sample): min at the top
        self._kept: dict[int, dict[str, np.ndarray]] = {}
        self._first: dict[str, list[int]] = {}
        self._cur = -1
        self._cur_sum, self._cur_n = 0.0, 0
        self._pieces: list[dict[str, np.ndarray]] = []
        self._scratch: torch.Tensor | None = None

    def on_logits(self, chunk: Any) -> None:
        la, y = chunk.logits_a, chunk.next_ids
        n, vocab = la.shape
        if self._scratch is None or self._scratch.shape[0] < n or self._scratch.shape[1] != vocab:
            self._scratch = torch.empty(chunk.block_rows, vocab)
        scratch = self._scratch[:n]
        rk = chunk.ranks()
        k = min(int(self.opts["top_k"]), vocab)
        top_v, top_i = la.topk(k, dim=1) if k > 0 else (la[:, :0], torch.zeros(n, 0, dtype=torch.int64))
        ma = la.amax(1, keepdim=True)
        log_sa = torch.sub(la, ma, out=scratch).exp_().sum(1, keepdim=True).log_()
        lp_a = (la.gather(1, y.view(-1, 1).to(torch.int64)) - ma - log_sa).view(-1)
        top_p = (top_v - ma - log_sa).exp_()
        try:
            st = chunk.kl()
        except NonFiniteLogits as e:
            t = int(chunk.idx[e.row])
            smp = int(chunk.pair.token_sample[t])
            raise DriftkitError(
                f"token_view: sample {chunk.pair.a.sample_ids[smp]!s} position {t - int(chunk.pair.a.offsets[smp])} "
                f"(token {t} of the capture): {e}"
            ) from None
        lr = st.logratio if st.logratio is not None else torch.zeros(n)
        rows = {
            "idx": chunk.idx,
            "kl": st.kl_forward.numpy().astype(np.float64),
            "rank_a": rk.rank_a.numpy() if rk.rank_a is not None else np.zeros(n, np.int64),
            "rank_b": rk.rank_b.numpy() if rk.rank_b is not None else np.zeros(n, np.int64),
            "rank_a_top_b": rk.rank_a_of_top_b.numpy(),
            "lp_a": lp_a.numpy().astype(np.float64),
            "lp_b": (lp_a + lr).numpy().astype(np.float64),
            "top_i": top_i.numpy(),
            "top_p": top_p.numpy().astype(np.float64),
        }
        smp = chunk.pair.token_sample[chunk.idx]
        cuts = np.flatnonzero(np.diff(smp)) + 1
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, n]):  # one step per sample in the block
            self._add(chunk.pair, int(smp[s]), {key: v[s:e] for key, v in rows.items()})

    def _add(self, pair: Any, sample: int, part: dict[str, np.ndarray]) -> None:
        """Append one sample's rows; a new sample completes the previous one."""
        if sample != self._cur:
            self._complete(pair)
            self._cur, self._cur_sum, self._cur_n, self._pieces = sample, 0.0, 0, []
        kl = part["kl"]
        self._cur_sum += float(kl.sum())
        self._cur_n += len(kl)
        room = int(self.opts["max_tokens"]) - sum(len(p["kl"]) for p in self._pieces)
        if room > 0:
            self._pieces.append({key: v[:room].copy() for key, v in part.items()})

    def _complete(self, pair: Any) -> None:
        """Record the finished sample's mean KL and keep its rows if it is shown."""
        s = self._cur
        if s < 0 or self._cur_n == 0:
            return
        mean = self._cur_sum / self._cur_n
        self._mean[s], self._count[s] = mean, self._cur_n
        rows = {key: np.concatenate([p[key] for p in self._pieces]) for key in self._pieces[0]}
        dom = str(pair.a.domains[s])
        firsts = self._first.setdefault(dom, [])
        keep = False
        if len(firsts) < int(self.opts["per_domain"]):
            firsts.append(s)
            keep = True
        cap = int(self.opts["samples"])
        key = float(mean)  # +inf (mass where A has none) sorts as the largest drift
        if cap > 0:
            if len(self._heap) < cap:
                heapq.heappush(self._heap, (key, -s, s))
                keep = True
            elif key > self._heap[0][0]:
                _, _, out = heapq.heapreplace(self._heap, (key, -s, s))
                keep = True
                if out not in {x for v in self._first.values() for x in v}:
                    self._kept.pop(out, None)
        if keep:
            self._kept[s] = rows

    def finish(self, pair: Any) -> dict[str, Any]:
        self._complete(pair)
        self._scratch, self._pieces = None, []
        kept = sorted(self._kept, key=lambda s: (-self._mean[s], s))
        ids: list[int] = []
        contexts: dict[int, np.ndarray] = {}
        offsets, token_ids = pair.a.offsets, pair.a.token_ids
        for s in kept:
            r = self._kept[s]
            first = int(r["idx"][0])
            lo = max(int(offsets[s]), first + 1 - int(self.opts["context"]))
            contexts[s] = np.asarray(token_ids[lo : first + 1])
            ids += [*contexts[s].tolist(), *token_ids[r["idx"] + 1].tolist(), *r["top_i"].ravel().tolist()]
        uniq = sorted(set(ids))
        text = dict(zip(uniq, pair.token_strings(uniq))) if uniq else {}
        samples = []
        for s in kept:
            r = self._kept[s]
            nxt = token_ids[r["idx"] + 1].tolist()
            tops = [
                [[text[int(i)], p] for i, p in zip(row_i, row_p)]
                for row_i, row_p in zip(r["top_i"].tolist(), [_sig(p) for p in r["top_p"]])
            ]
            cols = {
                "text": [text[int(i)] for i in nxt],
                "kl": _sig(r["kl"]),
                "rank_a": r["rank_a"].tolist(),
                "rank_b": r["rank_b"].tolist(),
                "rank_a_top_b": r["rank_a_top_b"].tolist(),
                "lp_a": _sig(r["lp_a"]),
                "lp_b": _sig(r["lp_b"]),
                "top_a": tops,
            }
            samples.append(
                {
                    "sample_id": str(pair.a.sample_ids[s]),
                    "domain": str(pair.a.domains[s]),
                    "mean_kl": _sig(np.array([self._mean[s]]), 5)[0],
                    "n_positions": int(self._count[s]),
                    "start": int(r["idx"][0] - offsets[s]),
                    "context": "".join(text[int(i)] for i in contexts[s].tolist()),
                    "tokens": [dict(zip(cols, vals)) for vals in zip(*cols.values())],
                }
            )
        seen = np.isfinite(self._mean)
        means = self._mean[seen]
        summary = {
            "n_samples": int(seen.sum()),
            "samples_shown": len(samples),
            "median_sample_kl": float(np.median(means)) if means.size else None,
            "max_sample_kl": float(means.max()) if means.size else None,
        }
        return {
            "positions": pair.positions,
            "label_a": pair.label_a,
            "label_b": pair.label_b,
            "summary": summary,
            "samples": samples,
        }

    # -- presentation ----------------------------------------------------------------------------
    def render(self, result: Mapping[str, Any]) -> Any:
        s = result["summary"]
        line = Text(f"{s['samples_shown']} of {s['n_samples']} samples kept for the HTML view; largest mean KL: ")
        line.append(
            "  ".join(f"{x['sample_id']} ({x['domain']}) {fmt(x['mean_kl'], 3)}" for x in result["samples"][:5])
        )
        return line

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        return []  # the numbers are kl's; this analysis contributes a view, not a measure

    def html_sections(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """One interactive section: a model picker (several compared captures), a sample picker
        (largest mean KL first), a colour-mode picker, the coloured tokens and a hover card. All
        token text reaches the page as JSON inside a script element and is set with
        ``textContent``, never parsed as HTML."""
        shown = {lab: r for lab, r in results.items() if r.get("samples")}
        if not shown:
            return []
        data = {
            "modes": MODES,
            "models": [
                {
                    "label": lab,
                    "label_a": r.get("label_a", "A"),
                    "label_b": r.get("label_b", lab),
                    "samples": r["samples"],
                }
                for lab, r in shown.items()
            ],
        }
        return [
            "<div class='dk-tv' data-dk-tv>"
            f"<style>{_CSS}</style>"
            f"<script type='application/json' class='dk-tv-data'>{_script_json(data)}</script>"
            "<div class='dk-tv-controls'>"
            "<label>model <select class='dk-tv-model'></select></label>"
            "<label>sample <select class='dk-tv-sample'></select></label>"
            "<label>colour by <select class='dk-tv-mode'></select></label></div>"
            "<div class='dk-tv-legend'></div><div class='dk-tv-context'></div>"
            "<div class='dk-tv-tokens'></div><div class='dk-tv-tip' hidden></div>"
            "<p class='dk-tv-note'>Each token is coloured by the distribution that produced it (position t predicts "
            "token t+1). Open with <code>#sample=ID</code> (and <code>&amp;model=LABEL</code>, "
            "<code>&amp;color=kl|urial|shift</code>) to select a view.</p>"
            f"<noscript>{html.escape('The token view needs JavaScript.')}</noscript>"
            f"</div><script>{_ASSET.read_text()}</script>"
        ]
