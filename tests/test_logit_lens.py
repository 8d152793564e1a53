"""Logit-lens drift against a direct computation with the Hugging Face model's own modules.

Reference: run each tiny llama with ``output_hidden_states``, apply its own ``model.model.norm`` and
``lm_head`` to every decoder layer's output, take a float64 softmax KL(P_B || P_A) per position and
average it over the same positions the analysis reads. The analysis reads the captured residuals
(float32 storage here, float16 in one test) through the stored final norm and unembedding.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from driftkit.capturing import CaptureConfig, capture
from driftkit.comparing.pair import CapturePair, CompareOptions
from driftkit.comparing.runner import compare
from driftkit.errors import DriftkitError
from driftkit.metrics.lens import FinalNorm
from driftkit.store import schema as S
from driftkit.store.reader import CaptureReader
from driftkit.testing import check_plugin

PROMPTS = [
    {"id": "a", "domain": "math", "text": "What is 2 + 3? The answer is 5, so we are done."},
    {"id": "b", "domain": "other", "text": "Write a poem about the sea. The sea is wide and blue."},
    {"id": "c", "domain": "non", "text": "def add(a, b):\n    return a + b"},
]


def _lens_cls():
    from driftkit.plugins.analyses.logit_lens import LogitLensAnalysis

    return LogitLensAnalysis


def _make_pair(root: Path, noise: float = 0.02, **build: object) -> tuple[Path, Path]:
    """A tiny llama and a perturbed copy (a small drift, as fine-tuning gives) with its own final norm."""
    from transformers import AutoModelForCausalLM

    from driftkit.tiny import build_tiny_model

    base = build_tiny_model(root / "base", "llama", hidden_size=64, seed=0, **build)  # type: ignore[arg-type]
    m = AutoModelForCausalLM.from_pretrained(str(base))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise * p.abs().mean())
        m.model.norm.weight.mul_(1 + 5 * noise)  # the final norms differ too: each model must use its own
    tuned = root / "tuned"
    m.save_pretrained(str(tuned))
    for f in base.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            (tuned / f.name).write_bytes(f.read_bytes())
    return base, tuned


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _make_pair(tmp_path_factory.mktemp("lens"), num_layers=3)


@pytest.fixture(scope="module")
def captures(models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("lenscap")
    out = []
    for name, m in zip(("base", "tuned"), models):
        cfg = CaptureConfig(model=str(m), prompts=PROMPTS, out=d / f"{name}.h5", storage_dtype="float32")
        out.append(capture(cfg))
    return out[0], out[1]


def _reference(models, reader: CaptureReader, positions: np.ndarray) -> list[float]:
    """Mean float64 KL(P_B||P_A) per decoder layer from the HF models' own norm and lm_head."""
    from transformers import AutoModelForCausalLM

    lps = []
    got: dict[str, torch.Tensor] = {}
    for m in models:
        lm = AutoModelForCausalLM.from_pretrained(str(m), dtype=torch.float32).eval()
        per_layer = []
        # hidden_states[l + 1] is layer l's output, except the last, which HF returns after the final norm:
        # the last layer's own output is taken with a hook
        hook = lm.model.layers[-1].register_forward_hook(lambda mod, a, o: got.__setitem__("h", o))
        for i in range(reader.n_samples):
            ids = torch.tensor([reader.sample_tokens(i).tolist()])
            with torch.no_grad():
                hs = lm(input_ids=ids, output_hidden_states=True).hidden_states
                last = got["h"][0] if isinstance(got["h"], tuple) else got["h"]
                outs = [*hs[1:-1], last]
                per_layer.append([torch.log_softmax(lm.lm_head(lm.model.norm(h[0])).double(), -1) for h in outs])
        hook.remove()
        lps.append([torch.cat([s[layer] for s in per_layer]) for layer in range(len(per_layer[0]))])
    out = []
    for la, lb in zip(*lps):
        kl = (lb.exp() * (lb - la)).sum(-1)
        out.append(float(kl[torch.from_numpy(positions)].mean()))
    return out


def test_plugin_contract() -> None:
    check_plugin(_lens_cls())


def test_capture_records_the_final_norm(captures, models) -> None:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(models[1]))
    with h5py.File(captures[1], "r") as f:
        ds = f[S.FINAL_NORM_WEIGHT]
        assert ds.attrs["type"] == "rmsnorm" and ds.attrs["weight_offset"] == 0.0
        assert ds.attrs["eps"] == pytest.approx(lm.config.rms_norm_eps)
        assert ds.attrs["module"] == "model.norm" and ds.attrs["per"] == "file"
        np.testing.assert_array_equal(ds[()], lm.model.norm.weight.detach().numpy())
        assert S.FINAL_NORM_BIAS not in f


def test_lens_matches_hf_modules(captures, models) -> None:
    every = {"logit_lens": {"max_positions": 0}}
    rep = compare(list(captures), analyses=["logit_lens", "kl"], positions="all", options=every)
    res = rep.body["analyses"]["logit_lens"]
    with CaptureReader(captures[0]) as r:
        pair = CapturePair(r, CaptureReader(captures[1]), CompareOptions(positions="all"))
        pos = np.flatnonzero(pair.mask("predictive"))
        ref = _reference(models, r, pos)
    got = [e["kl_forward"] for e in res["layers"]]
    assert [e["layer"] for e in res["layers"]] == [0, 1, 2]
    assert res["n_positions"] == len(pos)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert min(got) > 1e-4  # a real, small drift
    # the last layer's output is the final norm's input: the lens there is the model itself
    assert got[-1] == pytest.approx(rep.body["analyses"]["kl"]["summary"]["kl_forward"], rel=1e-6)
    half = next(e["layer"] for e in res["layers"] if e["kl_forward"] >= 0.5 * got[-1])
    assert res["half_kl_layer"] == half == res["summary"]["half_kl_layer"]


def test_identical_captures_give_exact_zero(captures) -> None:
    rep = compare([captures[0], captures[0]], analyses=["logit_lens"], positions="all")
    res = rep.body["analyses"]["logit_lens"]
    assert all(e["kl_forward"] == 0.0 for e in res["layers"])
    assert res["half_kl_layer"] is None
    assert "no measurable change" in _lens_cls()().findings({"same": res})[0]


def test_float16_storage_and_subsample(models, captures, tmp_path: Path) -> None:
    """float16 residuals: close to the float32 lens; a subsample reads the asked number of positions,
    the same for every layer, and every k-th layer keeps the last one."""
    out = []
    for name, m in zip(("b16", "t16"), models):
        cfg = CaptureConfig(model=str(m), prompts=PROMPTS, out=tmp_path / f"{name}.h5", storage_dtype="float16")
        out.append(capture(cfg))
    every = {"logit_lens": {"max_positions": 0}}
    full = compare(list(captures), analyses=["logit_lens"], positions="all", options=every)
    half = compare(out, analyses=["logit_lens"], positions="all", options=every)
    a = [e["kl_forward"] for e in full.body["analyses"]["logit_lens"]["layers"]]
    b = [e["kl_forward"] for e in half.body["analyses"]["logit_lens"]["layers"]]
    np.testing.assert_allclose(b, a, rtol=2e-2)
    sub = compare(
        out, analyses=["logit_lens"], positions="all", options={"logit_lens": {"max_positions": 7, "layers": "every:2"}}
    )
    res = sub.body["analyses"]["logit_lens"]
    assert res["n_positions"] == 7
    assert [e["layer"] for e in res["layers"]] == [0, 2]


def test_old_captures_are_skipped_with_a_reason(captures, tmp_path: Path) -> None:
    old = []
    for p in captures:
        q = tmp_path / p.name
        q.write_bytes(p.read_bytes())
        with h5py.File(q, "a") as f:
            del f["final/norm"]
        old.append(q)
    with pytest.raises(DriftkitError, match="final/norm/weight.*re-capture"):
        compare(old, analyses=["logit_lens"], positions="all")
    rep = compare(old, positions="all")  # the defaults: skipped with the reason, the rest runs
    assert "logit_lens" not in rep.body["analyses"] and "kl" in rep.body["analyses"]
    assert any(n.startswith("logit_lens skipped:") and "final/norm/weight" in n for n in rep.body["notes"])


def test_figure_and_study_hooks(captures) -> None:
    rep = compare(list(captures), analyses=["logit_lens"], positions="all")
    res = rep.body["analyses"]["logit_lens"]
    an = _lens_cls()()
    figs = an.figures({"sft": res, "rl": res})
    assert figs and figs[0].svg.startswith("<svg")
    assert "Logit-lens drift per layer" in rep.to_html()  # compare --html carries the figure
    assert an.study_entry(res)["logit_lens"]["layers"][0].keys() == {"layer", "kl_forward"}
    assert an.drift_measures(res)["lens KL"] == res["summary"]["mean_kl"]
    line = an.findings({"sft": res, "rl": {**res, "summary": {**res["summary"], "mean_kl": 0.0}}})[0]
    assert "sft drifts more than rl" in line and f"layer {res['half_kl_layer']}" in line


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2", "cohere", "phi"])
def test_final_norm_found_and_reproduced(arch: str, tmp_path: Path) -> None:
    """Gemma's (1 + w) RMSNorm, LayerNorm with bias (GPT-2, Phi) and without (Cohere): the recorded
    norm applied to the last decoder layer's own output is the model's own lm_head input."""
    from driftkit.models import load_model
    from driftkit.probes.final import final_norm_arrays
    from driftkit.registry.probe import ModelLayout
    from driftkit.tiny import build_tiny_model

    mdir = build_tiny_model(tmp_path / arch, arch, num_layers=2, hidden_size=64)
    model = load_model(str(mdir), dtype="float32").model
    layout = ModelLayout.of(model)
    arrays = {a.path: a for a in final_norm_arrays(layout)}
    w = arrays[S.FINAL_NORM_WEIGHT]
    want = {"gemma3_text": ("rmsnorm", 1.0), "gpt2": ("layernorm", 0.0), "cohere": ("layernorm", 0.0)}
    want["phi"] = want["gpt2"]
    assert (w.attrs["type"], w.attrs["weight_offset"]) == want[arch]
    assert (S.FINAL_NORM_BIAS in arrays) == (arch in ("gpt2", "phi"))
    got: dict[str, torch.Tensor] = {}
    layers = dict(model.named_modules())[layout.layers]
    hooks = [
        layers[-1].register_forward_hook(lambda m, a, o: got.__setitem__("x", o[0] if isinstance(o, tuple) else o)),
        model.get_output_embeddings().register_forward_pre_hook(lambda m, a: got.__setitem__("h", a[0])),
    ]
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 9, 20, 33, 40, 7]]))
    for h in hooks:
        h.remove()
    bias = arrays.get(S.FINAL_NORM_BIAS)
    norm = FinalNorm(
        w.attrs["type"], w.array.float(), bias.array.float() if bias else None, w.attrs["eps"], w.attrs["weight_offset"]
    )
    torch.testing.assert_close(norm.apply(got["x"][0]), got["h"][0], rtol=0, atol=1e-6 * float(got["h"].abs().max()))


def test_unsupported_norms_are_not_recorded_and_refused(captures, tmp_path: Path) -> None:
    """A norm no known formula reproduces is not classified; a file naming an unknown type is refused."""
    from driftkit.metrics.lens import classify_norm

    class ScaleNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(16))
            self.eps = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps) * self.weight

    assert classify_norm(ScaleNorm(), 16) is None
    assert classify_norm(torch.nn.LayerNorm(16), 16) == ("layernorm", 1e-5, 0.0)
    odd = []
    for p in captures:
        q = tmp_path / p.name
        q.write_bytes(p.read_bytes())
        with h5py.File(q, "a") as f:
            f[S.FINAL_NORM_WEIGHT].attrs["type"] = "scalenorm"
        odd.append(q)
    with pytest.raises(DriftkitError, match="scalenorm"):
        compare(odd, analyses=["logit_lens"], positions="all")


def test_small_drift_over_a_large_vocabulary(tmp_path: Path) -> None:
    """KL ~1e-4..1e-3 nats over a 32k vocabulary still matches the float64 reference closely."""
    models = _make_pair(tmp_path, noise=0.002, num_layers=2, model_vocab_size=32_000)
    caps = [
        capture(CaptureConfig(model=str(m), prompts=PROMPTS[:2], out=tmp_path / f"{i}.h5", storage_dtype="float32"))
        for i, m in enumerate(models)
    ]
    rep = compare(caps, analyses=["logit_lens"], positions="all", options={"logit_lens": {"max_positions": 0}})
    got = [e["kl_forward"] for e in rep.body["analyses"]["logit_lens"]["layers"]]
    with CaptureReader(caps[0]) as r, CaptureReader(caps[1]) as rb:
        pos = np.flatnonzero(CapturePair(r, rb, CompareOptions(positions="all")).mask("predictive"))
        ref = _reference(models, r, pos)
    assert max(ref) < 2e-3 and min(ref) > 1e-6
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_sampled_captures_draw_the_lens_positions_among_the_stored_rows(models, tmp_path: Path) -> None:
    """On sample:K files only the stored rows have residuals: the max_positions subsample is drawn among
    them (it was drawn among every position, so most draws hit missing rows and far fewer were read),
    and the result says which rows it used, as cka and similarity do."""
    base = capture(CaptureConfig(model=str(models[0]), prompts=PROMPTS, out=tmp_path / "b.h5", store="sample:6"))
    tuned = capture(CaptureConfig(model=str(models[1]), tokens_from=str(base), out=tmp_path / "t.h5", store="sample:6"))
    pair = CapturePair(CaptureReader(base), CaptureReader(tuned), CompareOptions(positions="all"))
    stored = int((pair.mask("predictive") & pair.sampled_mask).sum())
    assert 4 < stored < int(pair.mask("predictive").sum())  # a real subset
    rep = compare(
        [base, tuned],
        analyses=["logit_lens", "similarity"],
        positions="all",
        options={"logit_lens": {"max_positions": stored - 2}},
    )
    res = rep.body["analyses"]
    assert res["logit_lens"]["n_positions"] == stored - 2
    assert res["logit_lens"]["rows"] == res["similarity"]["rows"] == "sampled:6"


def test_unembeddings_are_read_at_the_first_layer_not_at_start(captures) -> None:
    """The logits pass runs between an analysis's ``start`` and its first layer and holds its own
    pair of unembeddings (2 x 113 MB at V = 49,152): the lens reads its pair at its first layer, so the
    two are never resident together (the default comparison peaked 80 MB over 1 GB at x5 otherwise)."""
    an = _lens_cls()()
    with CaptureReader(captures[0]) as ra, CaptureReader(captures[1]) as rb:
        pair = CapturePair(ra, rb, CompareOptions())
        an.start(pair)
        assert an._un == ()
        layer, site = pair.layer_sites()[1]
        an.start_layer(pair, layer, site)
        assert len(an._un) == 2 and torch.equal(an._un[0].weight, ra.unembedding().weight)


def test_kernel_runs_on_row_slices_of_its_blocks(captures, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lens runs its KL kernel on cache-sized row slices of each (rows, V) logits block, with
    scratch for one slice (as the logits pass does): slices of 3 rows over blocks of 8 positions give
    the numbers of one slice per block, to float32 rounding (the layer means sum per block)."""
    from driftkit.metrics import kl as K

    opts = {"logit_lens": {"max_positions": 0, "chunk": 8}}
    whole = compare(list(captures), analyses=["logit_lens"], positions="all", options=opts)
    with CaptureReader(captures[0]) as r:
        vocab = int(r.unembedding().weight.shape[0])
    assert len(K.row_slices(8, vocab)) == 1
    monkeypatch.setattr(K, "SLICE_BYTES", 3 * 4 * vocab)
    monkeypatch.setattr(K, "SLICE_MAX_THREADS", 1)
    assert K.row_slices(8, vocab) == [(0, 3), (3, 6), (6, 8)]
    sliced = compare(list(captures), analyses=["logit_lens"], positions="all", options=opts)
    a, b = whole.body["analyses"]["logit_lens"], sliced.body["analyses"]["logit_lens"]
    assert a["n_positions"] == b["n_positions"] > 8
    for ea, eb in zip(a["layers"], b["layers"], strict=True):
        for key in ("kl_forward", "kl_reverse", "js"):
            assert eb[key] == pytest.approx(ea[key], rel=1e-6, abs=1e-12), (ea["layer"], key)
