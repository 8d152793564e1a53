"""The compare engine shares one logits pass and one read per layer; results equal each analysis alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from json_canon import canon

import driftkit
from driftkit import Analysis
from driftkit.store.reader import CaptureReader

BUNDLED = ["kl", "token_rank", "cka", "pca_shift"]


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
        assert json.dumps(canon(together[name]), sort_keys=True) == json.dumps(canon(alone), sort_keys=True), name


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
        assert json.dumps(canon(an[name]), sort_keys=True) == json.dumps(canon(ref[name]), sort_keys=True)
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
    # engine blocks and one copy for two scratch users (the shared KL and ranks work on row slices
    # with a fixed scratch of their own, outside the per-row budget)
    budget = 40 * vocab * (8 + 8)
    monkeypatch.setattr(E, "LOGITS_BUDGET", budget)
    vandals = [_Vandal(), type("_Vandal2", (_Vandal,), {"name": "vandal2"})()]
    for v in vandals:
        v.logits_mask = lambda pair: pair.mask("predictive")  # type: ignore[method-assign]
    body = driftkit.compare([a, b], analyses=["kl", "token_rank", *vandals], positions="all").to_dict()
    expect = rows_for_budget(vocab, 512, 16, budget)
    assert expect == 40 and body["analyses"]["vandal"]["summary"]["most"] == expect
    assert body["analyses"]["vandal2"]["summary"] == body["analyses"]["vandal"]["summary"]  # the copy: same rows


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


SHARING = ["kl", "token_rank", "token_view"]


@pytest.mark.parametrize("kw", [{"positions": "all"}, {"positions": "response", "chunk_tokens": 16}])
def test_per_position_quantities_computed_once_per_block(
    tiny_capture_pair, monkeypatch: pytest.MonkeyPatch, kw: dict
) -> None:
    """kl, token_rank and token_view together: one KL kernel run and one rank pass per block, every
    consumer gets the engine's own chunk (no copy, no subset), and each result equals (==) the analysis
    run alone; token_view's order among them does not matter."""
    import driftkit.comparing.engine as E
    import driftkit.metrics.kl as K

    a, b = tiny_capture_pair
    calls = {"kl": 0, "ranks": 0, "blocks": 0}
    chunks: dict[str, list[int]] = {}
    kl_kernel, ranks_kernel, feed = K.kl_from_logits_, E.rank_stats, E._feed

    def count(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    def spy(an: Any, chunk: Any, clock: Any) -> None:
        chunks.setdefault(an.name, []).append(id(chunk))
        feed(an, chunk, clock)

    monkeypatch.setattr(K, "kl_from_logits_", count("kl", kl_kernel))  # called by kl_on_row_slices
    monkeypatch.setattr(E, "rank_stats", count("ranks", ranks_kernel))
    monkeypatch.setattr(E, "_feed", spy)
    monkeypatch.setattr(E, "logits_into", count("blocks", E.logits_into))
    alone = {n: driftkit.compare([a, b], analyses=[n], **kw).to_dict()["analyses"][n] for n in SHARING}
    for order in (SHARING, list(reversed(SHARING))):
        calls.update(kl=0, ranks=0, blocks=0)
        chunks.clear()
        body = driftkit.compare([a, b], analyses=order, **kw).to_dict()
        blocks = calls["blocks"] // 2  # two models per block
        assert blocks >= 1 and calls["kl"] == blocks and calls["ranks"] == blocks
        assert chunks["kl"] == chunks["token_rank"] == chunks["token_view"]  # the same objects: no copies
        for n in SHARING:
            assert json.dumps(canon(body["analyses"][n]), sort_keys=True) == json.dumps(
                canon(alone[n]), sort_keys=True
            ), n
        # the shared work is reported, split between the analyses that asked for it
        assert set(body["seconds"]) == set(SHARING)


class _Entropy(Analysis):
    """A third-party consumer that shares its own per-block quantity through ``chunk.shared``."""

    name = "entropy_a"
    description = "mean entropy of A's next-token distribution"
    consumes = frozenset({"logits"})
    computed = 0

    def start(self, pair: Any) -> None:
        self.total, self.n = 0.0, 0

    @staticmethod
    def _entropy(chunk: Any) -> torch.Tensor:
        _Entropy.computed += 1
        lp = torch.log_softmax(chunk.logits_a.double(), 1)
        return -(lp.exp() * lp).sum(1)

    def on_logits(self, chunk: Any) -> None:
        h = chunk.shared(("entropy_a",), self._entropy)
        assert chunk.shared(("entropy_a",), self._entropy) is h  # memoised within the block
        self.total += float(h.sum())
        self.n += len(chunk)

    def finish(self, pair: Any) -> dict[str, Any]:
        return {"summary": {"entropy": self.total / self.n, "n": self.n}}


def test_shared_memo_with_scratch_consumers(tiny_capture_pair) -> None:
    """``chunk.shared`` memoises a third party's value per block (two instances compute it once), and
    kl, token_rank and token_view next to two consumers that overwrite the blocks give exactly what
    they give alone."""
    a, b = tiny_capture_pair
    kw = {"positions": "all", "chunk_tokens": 16}
    alone = driftkit.compare([a, b], analyses=SHARING, **kw).to_dict()["analyses"]
    ents = [_Entropy(), type("_Entropy2", (_Entropy,), {"name": "entropy_b"})()]
    vandals = [type("_V", (_Vandal,), {"name": "v1", "logits_mask": _Vandal.logits_mask})(), _Vandal()]
    for v in vandals:
        v.logits_mask = lambda pair: pair.mask("predictive")  # type: ignore[method-assign]
    _Entropy.computed = 0
    driftkit.compare([a, b], analyses=[ents[0]], **kw)
    once, _Entropy.computed = _Entropy.computed, 0
    body = driftkit.compare([a, b], analyses=[vandals[0], *ents, "kl", vandals[1], *SHARING[1:]], **kw).to_dict()
    assert _Entropy.computed == once  # once per block, not once per instance
    an = body["analyses"]
    for n in SHARING:
        assert json.dumps(canon(an[n]), sort_keys=True) == json.dumps(canon(alone[n]), sort_keys=True), n
    assert an["entropy_a"] == an["entropy_b"] and an["entropy_a"]["summary"]["n"] == an["kl"]["summary"]["n_positions"]
    with CaptureReader(a) as ra:
        m = ra.predictive_mask("all")
        la = ra.read("final/hidden")[torch.from_numpy(m)].float() @ ra.unembedding().weight.T
        lp = torch.log_softmax(la.double(), 1)
        ref = float(-(lp.exp() * lp).sum(1).mean())
    assert an["entropy_a"]["summary"]["entropy"] == pytest.approx(ref, rel=1e-6)


def test_unknown_shared_quantity_is_refused(tiny_capture_pair) -> None:
    bad = type("_Bad", (_Entropy,), {"name": "bad", "logits_shared": frozenset({"entropy"})})()
    with pytest.raises(ValueError, match="logits_shared"):
        driftkit.compare(list(tiny_capture_pair), analyses=[bad], positions="all")


def test_memo_keeps_values_and_errors_per_block() -> None:
    """A LogitsChunk on its own (no pass): kl() and ranks() equal the kernels on copies and leave the
    blocks intact; an error (NaN logits) is raised to every asker, the kernel running once."""
    from driftkit.comparing.engine import LogitsChunk
    from driftkit.metrics.kl import NonFiniteLogits, kl_from_logits_
    from driftkit.metrics.ranks import rank_stats

    g = torch.Generator().manual_seed(0)
    la, lb = torch.randn(6, 50, generator=g), torch.randn(6, 50, generator=g)
    y = torch.arange(6)
    c = LogitsChunk(None, np.arange(6), la, lb, y, torch.zeros(6, dtype=torch.int64), 6)  # type: ignore[arg-type]
    a0, b0 = la.clone(), lb.clone()
    ref, rk = kl_from_logits_(la.clone(), lb.clone(), y), rank_stats(la, lb, y)
    st = c.kl()
    assert c.kl() is st and c.ranks() is c.ranks()
    assert torch.equal(la, a0) and torch.equal(lb, b0)
    assert all(torch.equal(getattr(st, k), getattr(ref, k)) for k in ("kl_forward", "kl_reverse", "js", "logratio"))
    assert torch.equal(c.ranks().rank_a, rk.rank_a) and torch.equal(c.ranks().top_b, rk.top_b)
    bad = la.clone()
    bad[3, 7] = float("nan")
    runs = []
    c2 = LogitsChunk(None, np.arange(6), bad, lb, y, torch.zeros(6, dtype=torch.int64), 6)  # type: ignore[arg-type]

    def probe(ch: Any) -> Any:
        runs.append(1)
        return kl_from_logits_(ch.logits_a.clone(), ch.logits_b.clone())

    for _ in range(2):
        with pytest.raises(NonFiniteLogits) as err:
            c2.shared("kl_probe", probe)
        assert err.value.row == 3
    assert len(runs) == 1


def test_kernels_on_row_slices_equal_whole_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """kl() and ranks() run their kernels on row slices (cache-sized): with slices of 3 rows over a
    block of 8, every quantity equals (==) the kernels over the whole block, a tied top token in the
    second slice included, and a NaN row is named by its index in the block, not in its slice. With a
    masked entry (the float64 fallback row) in the last slice, the kernel picks its formula for B's
    probabilities per slice instead of per block: the other rows then agree to float32 rounding."""
    from driftkit.comparing import engine as E
    from driftkit.metrics import kl as K
    from driftkit.metrics.kl import NonFiniteLogits, kl_from_logits_
    from driftkit.metrics.ranks import rank_stats

    vocab = 64
    monkeypatch.setattr(K, "SLICE_BYTES", 3 * 4 * vocab)  # 3 rows a slice, whatever the thread count:
    monkeypatch.setattr(K, "SLICE_MAX_THREADS", 1)  # slices grow with threads only up to this count
    assert K.row_slices(8, vocab) == [(0, 3), (3, 6), (6, 8)]
    g = torch.Generator().manual_seed(1)
    la = torch.randn(8, vocab, generator=g) * 3
    lb = la + 1e-3 * torch.randn(8, vocab, generator=g)
    lb[4, [5, 9]] = lb[4].max() + 1.0  # B's top token tied (row in the second slice)
    y = torch.randint(0, vocab, (8,), generator=g)
    dom = torch.zeros(8, dtype=torch.int64)
    kl_keys = ("kl_forward", "kl_reverse", "js", "logratio")

    def chunk(a: torch.Tensor) -> Any:
        return E.LogitsChunk(None, np.arange(8), a, lb, y, dom, 8)  # type: ignore[arg-type]

    c = chunk(la)
    ref, rk = kl_from_logits_(la.clone(), lb.clone(), y), rank_stats(la, lb, y)
    st, rs = c.kl(), c.ranks()
    for k in kl_keys:
        assert torch.equal(getattr(st, k), getattr(ref, k)), k
    for k in ("top_b", "rank_a_of_top_b", "rank_a", "rank_b"):
        assert torch.equal(getattr(rs, k), getattr(rk, k)), k
    masked = la.clone()
    masked[7, 11] = lb[7, 11] = float("-inf")  # masked in both models (third slice)
    ref = kl_from_logits_(masked.clone(), lb.clone(), y)
    st = chunk(masked).kl()
    for k in kl_keys:
        assert torch.equal(getattr(st, k)[6:], getattr(ref, k)[6:]), k  # the fallback's slice: same formula
    # every row as exact as the whole-block kernel: a direct float64 softmax (KL ~1e-7 here)
    lpa, lpb = torch.log_softmax(masked.double(), 1), torch.log_softmax(lb.double(), 1)
    r = torch.where(torch.isneginf(masked), 0.0, lpb - lpa)
    kl64 = (lpb.exp() * r).sum(1)
    for got in (st.kl_forward, ref.kl_forward):
        torch.testing.assert_close(got.double(), kl64, rtol=2e-4, atol=0.0)
    bad = la.clone()
    bad[7, 2] = float("nan")
    with pytest.raises(NonFiniteLogits) as err:
        chunk(bad).kl()
    assert err.value.row == 7


def _float64_conversion_threads(pair: tuple, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread of every float64 conversion of a cka comparison (chunks of 16 tokens), after
    checking that the results equal a comparison without the spy."""
    import threading

    from driftkit.comparing import engine as E

    a, b = pair
    expect = driftkit.compare([a, b], analyses=["cka"], positions="all", chunk_tokens=16).to_dict()
    threads: list[str] = []
    to64 = E._to_float64

    def spy(c: Any) -> Any:
        threads.append(threading.current_thread().name)
        return to64(c)

    monkeypatch.setattr(E, "_to_float64", spy)
    got = driftkit.compare([a, b], analyses=["cka"], positions="all", chunk_tokens=16).to_dict()
    assert got["analyses"]["cka"] == expect["analyses"]["cka"]
    return threads


def test_layers_pass_reads_and_converts_ahead(tiny_capture_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layers pass reads the next chunk on the reader thread and converts it there to the dtype
    the consumers asked of the first chunk (float64 for cka), so the consumers find it ready; the
    first chunk, before anyone asked, is converted where it is asked for. Results are unchanged."""
    import threading

    threads = _float64_conversion_threads(tiny_capture_pair, monkeypatch)
    # chunks 1 and 2 may have been read before the first was used (one queued, one in hand); every
    # later chunk is converted on the reader thread
    assert threads[0] == threading.main_thread().name
    assert len(threads) > 6 and threads.count("driftkit-read-ahead") >= len(threads) - 3


def test_large_chunks_are_read_ahead_but_converted_on_use(tiny_capture_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above READ_AHEAD_CONVERT_BYTES the reader hands chunks over unconverted (memory stays one
    converted chunk), and every conversion runs on the main thread; the numbers do not change."""
    import threading

    from driftkit.comparing import engine as E

    monkeypatch.setattr(E, "READ_AHEAD_CONVERT_BYTES", 0)
    threads = _float64_conversion_threads(tiny_capture_pair, monkeypatch)
    assert len(threads) > 3 and set(threads) == {threading.main_thread().name}
