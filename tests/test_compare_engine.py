"""The compare engine shares one logits pass and one read per layer; results equal each analysis alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import driftkit
from driftkit import Analysis
from driftkit.store.reader import CaptureReader

BUNDLED = ["kl", "token_rank", "cka", "pca_shift"]


def _canon(x: Any) -> Any:
    """JSON-comparable form that treats NaN as equal to NaN (bit-identical floats otherwise)."""
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, dict):
        return {k: _canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    return x


@pytest.mark.parametrize(
    "kw",
    [
        {"positions": "all"},
        {"positions": "response", "chunk_tokens": 16},
        {
            "positions": "all",
            "max_tokens": 40,
            "seed": 1,
            "layers": "0,2",
            "options": {"cka": {"unit": "sample"}, "kl": {"chunk": "7"}},
        },
    ],
)
def test_shared_passes_equal_each_analysis_alone(tiny_capture_pair, kw: dict) -> None:
    """All four bundled analyses in one comparison give exactly (==) what each gives run alone."""
    a, b = tiny_capture_pair
    together = driftkit.compare([a, b], analyses=BUNDLED, **kw).to_dict()["analyses"]
    for name in BUNDLED:
        opts = {k: v for k, v in (kw.get("options") or {}).items() if k == name}
        alone = driftkit.compare([a, b], analyses=[name], **{**kw, "options": opts}).to_dict()["analyses"][name]
        assert json.dumps(_canon(together[name]), sort_keys=True) == json.dumps(_canon(alone), sort_keys=True), name


def test_each_dataset_read_once(tiny_capture_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """final/hidden and every layer are read once per file for all four analyses together."""
    a, b = tiny_capture_pair
    reads: dict[str, int] = {}
    orig = CaptureReader.iter_chunks

    def counting(self: CaptureReader, path: str, *args: Any, **kwargs: Any) -> Any:
        reads[path] = reads.get(path, 0) + 1
        return orig(self, path, *args, **kwargs)

    monkeypatch.setattr(CaptureReader, "iter_chunks", counting)
    driftkit.compare([a, b], analyses=BUNDLED, positions="all")
    assert reads.get("final/hidden") == 2
    layer_reads = {p: n for p, n in reads.items() if p.startswith("sites/")}
    assert layer_reads and set(layer_reads.values()) == {2}


class _Legacy(Analysis):
    """A third-party analysis written against the old API: run() only."""

    name = "legacy_mean"
    description = "mean of A's final hidden state (reads it itself)"

    def run(self, pair: Any) -> dict[str, Any]:
        tot, n = 0.0, 0
        for _, ha, _ in pair.iter_pair("final/hidden", pair.mask("states")):
            tot, n = tot + float(ha.double().sum()), n + ha.numel()
        return {"summary": {"mean": tot / n}}


class _Vandal(Analysis):
    """Consumes logits, declares scratch use and overwrites the blocks (a second in-place consumer)."""

    name = "vandal"
    description = "sums A's max logit over response positions, then scribbles over the blocks"
    consumes = frozenset({"logits"})
    scratch_logits = True

    def logits_mask(self, pair: Any) -> np.ndarray:
        return pair.mask("predictive", positions="response")  # narrower than the others: a subset

    def start(self, pair: Any) -> None:
        self.total, self.rows, self.most = 0.0, 0, 0

    def on_logits(self, chunk: Any) -> None:
        assert chunk.logits_a.dtype == torch.float32 and chunk.logits_a.shape == chunk.logits_b.shape
        assert len(chunk.next_ids) == len(chunk.domain) == len(chunk.idx) == chunk.logits_a.shape[0]
        self.total += float(chunk.logits_a.amax(1).double().sum())
        self.rows += len(chunk)
        self.most = max(self.most, len(chunk))
        chunk.logits_a.fill_(float("nan"))
        chunk.logits_b.zero_()

    def finish(self, pair: Any) -> dict[str, Any]:
        return {"summary": {"total": self.total, "rows": self.rows, "most": self.most}}


def test_third_party_consumers_and_legacy_run(tiny_capture_pair) -> None:
    """A legacy run()-only analysis and a scratch-writing logits consumer with its own mask next to
    the bundled ones: the bundled results do not change, and the consumer sees exactly its rows."""
    a, b = tiny_capture_pair
    ref = driftkit.compare([a, b], analyses=["kl", "token_rank"], positions="all", chunk_tokens=16).to_dict()[
        "analyses"
    ]
    vandal = _Vandal()
    body = driftkit.compare(
        [a, b], analyses=["kl", vandal, "token_rank", _Legacy], positions="all", chunk_tokens=16
    ).to_dict()
    an = body["analyses"]
    assert list(an) == ["kl", "vandal", "token_rank", "legacy_mean"]
    for name in ("kl", "token_rank"):
        assert json.dumps(_canon(an[name]), sort_keys=True) == json.dumps(_canon(ref[name]), sort_keys=True)
    with CaptureReader(a) as ra:
        m = ra.predictive_mask("response")
        la = ra.read("final/hidden")[torch.from_numpy(m)].float() @ ra.unembedding().weight.T
        assert an["vandal"]["summary"]["rows"] == int(m.sum())
        assert an["vandal"]["summary"]["total"] == pytest.approx(float(la.amax(1).double().sum()), rel=1e-5)
        assert an["legacy_mean"]["summary"]["mean"] == pytest.approx(float(ra.read("final/hidden").double().mean()))
    assert set(body["seconds"]) == set(an)
    # run() alone still works for a streaming analysis (drives the engine for itself)
    from driftkit.comparing.pair import CapturePair

    with CaptureReader(a) as ra, CaptureReader(b) as rb:
        alone = _Vandal().run(CapturePair(ra, rb))
    assert alone["summary"]["rows"] == int(m.sum())


def test_logits_blocks_bounded_by_budget(tiny_capture_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks never exceed rows_for_budget of the engine's and consumers' bytes per vocabulary entry."""
    import driftkit.comparing.engine as E
    from driftkit.metrics.kl import rows_for_budget

    a, b = tiny_capture_pair
    vocab = CaptureReader(a).shape("final/unembed")[0]
    budget = 40 * vocab * (8 + 12 + 4 + 8)  # engine blocks, kl, token_rank, one copy for two scratch users
    monkeypatch.setattr(E, "LOGITS_BUDGET", budget)
    vandal = _Vandal()
    vandal.logits_mask = lambda pair: pair.mask("predictive")  # type: ignore[method-assign]
    body = driftkit.compare([a, b], analyses=["kl", "token_rank", vandal], positions="all").to_dict()
    expect = rows_for_budget(vocab, 512, 32, budget)
    assert expect == 40 and body["analyses"]["vandal"]["summary"]["most"] == expect


def test_plugin_without_work_is_refused() -> None:
    from driftkit.testing import PluginCheckError, check_plugin

    class Idle(Analysis):
        name = "idle"
        description = "does nothing"

    with pytest.raises(PluginCheckError, match="run"):
        check_plugin(Idle)
    check_plugin(_Vandal)
    check_plugin(_Legacy)
    for name in BUNDLED:
        check_plugin(driftkit.load_plugin("analysis", name))


def test_docs_streaming_example_runs(tiny_capture_pair) -> None:
    """docs/compare.md's streaming-hooks example works as written and sees every scored position."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "compare.md").read_text()
    code = next(c for c in re.findall(r"```python\n(.*?)\n```", doc, re.DOTALL) if "class TopAgreement" in c)
    ns: dict = {"__name__": "docs_compare"}
    exec(compile(code, "compare.md", "exec"), ns)
    a, b = tiny_capture_pair
    res = driftkit.compare([a, b], analyses=["kl", ns["TopAgreement"]], positions="all").to_dict()["analyses"]
    with CaptureReader(a) as ra, CaptureReader(b) as rb:
        m = torch.from_numpy(ra.predictive_mask("all"))
        la = ra.read("final/hidden")[m].float() @ ra.unembedding().weight.T
        lb = rb.read("final/hidden")[m].float() @ rb.unembedding().weight.T
    assert res["top_agreement"]["summary"]["n"] == res["kl"]["summary"]["n_positions"] == int(m.sum())
    assert res["top_agreement"]["summary"]["top_agreement"] == pytest.approx(
        float((la.argmax(1) == lb.argmax(1)).double().mean())
    )
