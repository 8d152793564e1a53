"""The layers pass's per-chunk memo, lazy dtype and per-layer shared store (driftkit.comparing.engine),
and the accumulators cka, similarity and pca_shift share through it (driftkit.comparing.layer_sums)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from cka_spy import count_difference_products
from json_canon import canon

import driftkit
from driftkit import Analysis
from driftkit.comparing import engine as E
from driftkit.comparing.layer_sums import sample_sums
from driftkit.comparing.pair import CapturePair, CompareOptions
from driftkit.metrics.cka import StreamingCKA
from driftkit.metrics.pca import SamplePooler
from driftkit.metrics.similarity import SimilarityAccumulator, layer_similarity
from driftkit.store.reader import CaptureReader
from plugins.analyses.cka import CKAAnalysis


def _same(x: Any, y: Any) -> bool:
    return json.dumps(canon(x), sort_keys=True) == json.dumps(canon(y), sort_keys=True)


def _decode64(raw: np.ndarray, bf16: bool) -> np.ndarray:
    """Stored rows to float64 without torch: bfloat16 bits are the top half of a float32's."""
    if bf16:
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.astype(np.float64)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_prompts: Path) -> dict[str, Path]:
    """One capture per storage dtype (bfloat16, float32; the session pair is float16)."""
    from driftkit.capturing import CaptureConfig, capture

    d = tmp_path_factory.mktemp("dtypes")
    return {
        st: capture(
            CaptureConfig(
                model=str(tiny_model),
                prompts=str(tiny_prompts),
                out=d / f"{st}.h5",
                storage_dtype=st,
                max_batch_tokens=64,
            )
        )
        for st in ("bfloat16", "float32")
    }


# -- the chunk ---------------------------------------------------------------------------------------
def test_chunk_memo_computes_once_and_reraises() -> None:
    c = E.LayerChunk(0, "sites/residual.0", np.arange(3), torch.ones(3, 2, dtype=torch.float16), torch.zeros(3, 2))
    runs: list[int] = []

    def once(ch: E.LayerChunk) -> list[int]:
        runs.append(1)
        return [len(ch)]

    assert c.shared("k", once) is c.shared("k", once) and len(runs) == 1

    def boom(ch: E.LayerChunk) -> None:
        runs.append(2)
        raise ValueError("bad rows")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad rows"):
            c.shared("b", boom)
    assert runs == [1, 2]
    sub = c.subset(np.array([True, False, True]))
    assert sub.dtype == torch.float16 and sub.memo == {} and list(sub.idx) == [0, 2]  # subset before conversion
    assert c.float64()[0] is c.float64()[0] and c.xa is c.xa and c.xa.dtype == torch.float32


@pytest.mark.parametrize("storage", ["float16", "bfloat16", "float32"])
def test_float64_and_float32_from_each_storage_dtype(
    storage: str, stored: dict[str, Path], tiny_capture_pair: tuple[Path, Path]
) -> None:
    """In a real pass: rows arrive in the storage dtype; float64() equals an independent decode of
    the stored bits exactly, xa/xb equal it in float32 (what on_layer always got)."""
    path = tiny_capture_pair[0] if storage == "float16" else stored[storage]
    seen: list[tuple[str, np.ndarray, torch.dtype, Any, Any, Any, Any]] = []

    class Rec(Analysis):
        name = "rec"
        consumes = frozenset({"layers"})

        def on_layer(self, chunk: Any) -> None:
            xa64, xb64 = chunk.float64()  # copies: the chunk's buffers are reused for later chunks
            seen.append(
                (
                    chunk.site,
                    chunk.idx.copy(),
                    chunk.dtype,
                    xa64.clone(),
                    xb64.clone(),
                    chunk.xa.clone(),
                    chunk.xb.clone(),
                )
            )

        def finish(self, pair: Any) -> dict[str, Any]:
            return {}

    driftkit.compare([path, path], analyses=[Rec()], positions="response", chunk_tokens=16)
    assert seen
    want = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[storage]
    with h5py.File(path, "r") as f:
        for site, idx, dtype, xa64, xb64, xa, xb in seen:
            assert dtype == want
            ref = _decode64(f[site][()][idx], storage == "bfloat16")
            assert xa64.dtype == torch.float64 and np.array_equal(xa64.numpy(), ref) and torch.equal(xa64, xb64)
            assert xa.dtype == torch.float32 and np.array_equal(xa.numpy(), ref.astype(np.float32))
            assert torch.equal(xa, xb)


@pytest.mark.parametrize("storage", ["float16", "bfloat16", "float32"])
def test_reader_rows_equal_the_stored_bits(storage: str, stored: dict[str, Path], tiny_capture_pair) -> None:
    """CaptureReader.read fills torch memory straight from HDF5 (no numpy array in between): every
    row range, the empty one and an open end included, gives the stored values, and a non-float
    dataset (token ids) still reads through numpy."""
    path = tiny_capture_pair[0] if storage == "float16" else stored[storage]
    with CaptureReader(path) as r, h5py.File(path, "r") as f:
        site = "sites/residual.0"
        raw = f[site][()]
        n = raw.shape[0]
        for start, stop in ((0, None), (3, 11), (n - 2, n + 5), (5, 5)):
            got = r.read(site, start, stop, dtype=torch.float64)
            ref = _decode64(raw[start:stop], storage == "bfloat16")
            assert got.shape == ref.shape and np.array_equal(got.numpy(), ref)
        kept = r.read(site, 2, 6, dtype=None)
        assert kept.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[storage]
        ids = r.read("tokens/ids")
        assert ids.dtype == torch.from_numpy(f["tokens/ids"][:1]).dtype and np.array_equal(
            ids.numpy(), f["tokens/ids"][()]
        )


# -- the per-layer store -----------------------------------------------------------------------------
class _StoreProbe(Analysis):
    name = "store_probe"
    consumes = frozenset({"layers"})

    def start(self, pair: Any) -> None:
        self.pair, self.stores, self.errors = pair, [], []
        try:
            pair.layer_shared("x", object)
        except RuntimeError as e:
            self.errors.append(str(e))

    def start_layer(self, pair: Any, layer: Any, site: str) -> None:
        self.stores.append((layer, pair.layer_shared(("probe",), object)))

    def on_layer(self, chunk: Any) -> None:
        assert self.pair.layer_shared(("probe",), object) is self.stores[-1][1]

    def finish_layer(self, pair: Any, layer: Any, site: str) -> None:
        assert pair.layer_shared(("probe",), object) is self.stores[-1][1]

    def finish(self, pair: Any) -> dict[str, Any]:
        return {}


def test_store_is_per_layer_shared_by_consumers_and_closed_outside(tiny_capture_pair) -> None:
    one, two = _StoreProbe(), type("_Second", (_StoreProbe,), {"name": "store_probe_2"})()
    driftkit.compare(list(tiny_capture_pair), analyses=[one, two], positions="all", chunk_tokens=16)
    objs = [o for _, o in one.stores]
    assert len(objs) > 1 and len({id(o) for o in objs}) == len(objs)  # a fresh value each layer
    assert [o for _, o in two.stores] == objs  # the same value for both consumers of a layer
    assert one.errors and "outside a layer" in one.errors[0]
    assert one.pair.layer_store is None
    with pytest.raises(RuntimeError, match="outside a layer"):
        one.pair.layer_shared("x", object)


# -- cka, similarity, pca_shift on the shared accumulators ------------------------------------------------
def _before(pair: CapturePair, step: int) -> tuple[list[Any], list[Any], list[Any]]:
    """What the analyses computed before the shared store, from the float32 chunks they were fed:
    per layer token CKA, similarity, and per-sample pooled means."""
    mask = pair.mask("states")
    cka, sim, pools = [], [], []
    for _, site in pair.layer_sites():
        d_a, d_b = pair.a.shape(site)[1], pair.b.shape(site)[1]
        acc, sacc = StreamingCKA(d_a, d_b), SimilarityAccumulator(d_a, d_b, fourth=True)
        pa, pb = SamplePooler(pair.a.n_samples, d_a), SamplePooler(pair.a.n_samples, d_b)
        for idx, xa, xb in pair.iter_pair(site, mask, step):
            assert xa.dtype == torch.float32
            acc.update(xa, xb)
            sacc.update(xa, xb)
            pa.update(pair.token_sample[idx], xa)
            pb.update(pair.token_sample[idx], xb)
        cka.append(acc.result())
        assert sacc.stats is not None
        sim.append(layer_similarity(sacc.stats, sacc.identical))
        pools.append((pa.means(), pb.means()))
    return cka, sim, pools


def test_cka_and_similarity_alone_together_and_as_before(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair
    kw: dict[str, Any] = {"positions": "all", "chunk_tokens": 16}
    both = driftkit.compare([a, b], analyses=["cka", "similarity"], **kw).to_dict()["analyses"]
    sim_first = driftkit.compare([a, b], analyses=["similarity", "cka"], **kw).to_dict()["analyses"]
    cka = driftkit.compare([a, b], analyses=["cka"], **kw).to_dict()["analyses"]["cka"]
    sim = driftkit.compare([a, b], analyses=["similarity"], **kw).to_dict()["analyses"]["similarity"]
    assert _same(both["cka"], cka) and _same(sim_first["cka"], cka)
    assert _same(both["similarity"], sim) and _same(sim_first["similarity"], sim)
    with CaptureReader(a) as ra, CaptureReader(b) as rb:
        ref_cka, ref_sim, _ = _before(CapturePair(ra, rb, CompareOptions(positions="all")), 16)
    for e, r in zip(cka["layers"], ref_cka, strict=True):
        assert (e["linear_cka"], e["debiased_cka"]) == (r.linear_cka, r.debiased_cka)
    for e, r in zip(sim["layers"], ref_sim, strict=True):
        assert e["standardized_cka"] == r.standardized_cka
        assert e["standardized_cka_debiased"] == r.standardized_cka_debiased
        assert (e["procrustes"], e["linear_cka"]) == (r.procrustes, r.linear_cka)


def test_each_chunk_added_and_converted_once(tiny_capture_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """cka + similarity + pca_shift + sample-unit cka: one float64 conversion per chunk, each chunk
    added once to the d x d sums and once to the pooled sums."""
    a, b = tiny_capture_pair
    chunks, conv, rows, pooled = [0], [0], [0], [0]
    init, to64 = E.LayerChunk.__init__, E._to_float64
    update, pool = SimilarityAccumulator.update, SamplePooler.update

    def count(box: list[int], fn: Any, n: Any = lambda *a: 1) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            box[0] += n(*args)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(E.LayerChunk, "__init__", count(chunks, init))
    monkeypatch.setattr(E, "_to_float64", count(conv, to64))
    monkeypatch.setattr(SimilarityAccumulator, "update", count(rows, update, lambda s, x, y: x.shape[0]))
    monkeypatch.setattr(SamplePooler, "update", count(pooled, pool, lambda s, i, r: r.shape[0]))
    sample_cka = type("_SampleCKA", (CKAAnalysis,), {"name": "cka_sample"})(unit="sample")
    names = ["cka", "similarity", "pca_shift", sample_cka]
    driftkit.compare([a, b], analyses=names, positions="all", chunk_tokens=16)
    with CaptureReader(a) as ra, CaptureReader(b) as rb:
        pair = CapturePair(ra, rb, CompareOptions(positions="all"))
        n_layers, n_tok = len(pair.layer_sites()), int(pair.mask("states").sum())
    assert conv[0] == chunks[0] > n_layers  # one conversion per chunk, several chunks per layer
    assert rows[0] == n_layers * n_tok
    assert pooled[0] == 2 * n_layers * n_tok  # A's and B's pooler


class _HalfCKA(CKAAnalysis):
    """cka over the first half of the tokens only: a mask that differs from similarity's but keeps
    every row of the first chunks (which are then the same chunk object for both)."""

    name = "cka_half"

    def layers_mask(self, pair: Any) -> np.ndarray:
        m = pair.mask("states").copy()
        m[len(m) // 2 :] = False
        return m


def test_consumers_with_other_masks_keep_their_own_sums(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair
    kw: dict[str, Any] = {"positions": "all", "chunk_tokens": 16}
    mixed = driftkit.compare([a, b], analyses=["similarity", _HalfCKA(), "cka"], **kw).to_dict()["analyses"]
    half = driftkit.compare([a, b], analyses=[_HalfCKA()], **kw).to_dict()["analyses"]["cka_half"]
    full = driftkit.compare([a, b], analyses=["cka"], **kw).to_dict()["analyses"]["cka"]
    assert _same(mixed["cka_half"], half) and _same(mixed["cka"], full)
    assert half["n"] < full["n"]


def test_pca_shift_alone_and_with_sharers(tiny_capture_pair) -> None:
    """pca_shift's pooled sums are the ones it computed alone (and before: float32 rows pooled)."""
    a, b = tiny_capture_pair
    kw: dict[str, Any] = {"positions": "all", "chunk_tokens": 16}
    alone = driftkit.compare([a, b], analyses=["pca_shift"], **kw).to_dict()["analyses"]["pca_shift"]
    both = driftkit.compare(
        [a, b], analyses=["similarity", "pca_shift", "cka"], options={"cka": {"unit": "sample"}}, **kw
    ).to_dict()["analyses"]
    assert _same(both["pca_shift"], alone)
    cka_sample = driftkit.compare([a, b], analyses=["cka"], options={"cka": {"unit": "sample"}}, **kw)
    assert _same(both["cka"], cka_sample.to_dict()["analyses"]["cka"])
    with CaptureReader(a) as ra, CaptureReader(b) as rb:
        pair = CapturePair(ra, rb, CompareOptions(positions="all"))
        _, _, pools = _before(pair, 16)
        # the shared pooled sums of the last layer equal the float32-fed poolers bit for bit
        site = pair.layer_sites()[-1][1]
        store = E.LayerStore("last", site)
        pair.layer_store = store
        sums = sample_sums(pair, site, pair.mask("states"))
        for idx, xa, xb in pair.iter_pair(site, pair.mask("states"), 16, dtype=None):
            sums.add(E.LayerChunk("last", site, idx, xa, xb))
        (ma, ca), (mb, _) = sums.means()
        (ra_m, ra_c), (rb_m, _) = pools[-1]
        assert np.array_equal(ma, ra_m, equal_nan=True) and np.array_equal(mb, rb_m, equal_nan=True)
        assert np.array_equal(ca, ra_c)


def test_jobs_2_equal_one_process_with_shared_sums(tiny_capture_pair) -> None:
    """cka and pca_shift in workers (their own per-layer stores), similarity in the main process."""
    a, b = tiny_capture_pair
    names = ["cka", "similarity", "pca_shift"]
    kw: dict[str, Any] = {"positions": "all", "chunk_tokens": 16}
    one = driftkit.compare([a, b], analyses=names, **kw).to_dict()
    two = driftkit.compare([a, b], analyses=names, jobs=2, **kw).to_dict()
    assert _same(one["analyses"], two["analyses"])


@pytest.fixture(scope="module")
def small_drift_pair(tmp_path_factory: pytest.TempPathFactory, tiny_prompts: Path) -> tuple[Path, Path]:
    """Captures of a tiny llama and a copy whose weights moved by 1% of their size (an RL-like drift)."""
    from transformers import AutoModelForCausalLM

    from driftkit.capturing import CaptureConfig, capture
    from driftkit.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("small_drift")
    base = build_tiny_model(root / "base", "llama", seed=0)
    m = AutoModelForCausalLM.from_pretrained(str(base))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01 * p.abs().mean())
    m.save_pretrained(str(root / "tuned"))
    for f in base.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            (root / "tuned" / f.name).write_bytes(f.read_bytes())
    return tuple(  # type: ignore[return-value]
        capture(CaptureConfig(model=str(root / n), prompts=str(tiny_prompts), out=root / f"{n}.h5"))
        for n in ("base", "tuned")
    )


def test_cka_beside_similarity_takes_its_float64_products(small_drift_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone, cka lets small drift take float32 difference products; beside similarity it shares
    similarity's all-float64 sums (what the standardized measures need), so its values then agree
    with cka alone to a millionth of 1 - CKA rather than bit for bit, and similarity's are unchanged."""
    taken = count_difference_products(monkeypatch)
    kw: dict[str, Any] = {"positions": "all"}
    alone = driftkit.compare(list(small_drift_pair), analyses=["cka"], **kw).to_dict()["analyses"]["cka"]
    assert taken and all(taken)
    assert any(e["linear_cka"] < 1.0 for e in alone["layers"])
    for debiased in (True, False):  # with and without the fourth moments
        kw["options"] = {"similarity": {"debiased": debiased}}
        taken.clear()
        both = driftkit.compare(list(small_drift_pair), analyses=["cka", "similarity"], **kw).to_dict()["analyses"]
        assert taken and not any(taken)
        sim = driftkit.compare(list(small_drift_pair), analyses=["similarity"], **kw).to_dict()["analyses"]
        assert _same(both["similarity"], sim["similarity"])
        for e, r in zip(both["cka"]["layers"], alone["layers"], strict=True):
            for k in ("linear_cka", "debiased_cka"):
                assert abs(e[k] - r[k]) <= 1e-6 * (1.0 - e[k]) + 1e-15
