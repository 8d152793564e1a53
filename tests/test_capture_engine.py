"""Capture round trips on tiny random models, checked against plain Hugging Face forwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from driftkit.capturing import CaptureConfig, capture
from driftkit.models import load_model
from driftkit.store.reader import CaptureReader

FP16_TOL = dict(rtol=2e-3, atol=2e-3)


def _hf_reference(model, ids: list[int]):
    """Hidden states of one sample run alone (no padding), plus the last layer's raw output via a hook."""
    captured = {}
    last = model.get_submodule("model.layers")[-1]
    h = last.register_forward_hook(lambda m, a, o: captured.__setitem__("last", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        h.remove()
    return out, captured["last"][0]


def test_round_trip_matches_unpadded_hf_forward(tiny_model: Path, tiny_capture_pair) -> None:
    base, _ = tiny_capture_pair
    lm = load_model(str(tiny_model))
    with CaptureReader(base) as r:
        assert r.complete and r.n_samples == 6
        lengths = np.diff(r.offsets)
        assert len(set(lengths.tolist())) > 2, "fixture must have samples of different lengths"
        n_layers = lm.num_layers
        assert r.residual_layers() == list(range(n_layers))
        for i in range(r.n_samples):
            ids = r.sample_tokens(i).tolist()
            a, b = r.offsets[i], r.offsets[i + 1]
            assert b - a == len(ids)
            out, last = _hf_reference(lm.model, ids)
            torch.testing.assert_close(r.read("sites/embed", a, b), out.hidden_states[0][0], **FP16_TOL)
            for L in range(n_layers - 1):
                torch.testing.assert_close(r.read(f"sites/residual.{L}", a, b), out.hidden_states[L + 1][0], **FP16_TOL)
            # HF's last hidden state is after the final norm; the layer's own output comes from a hook.
            torch.testing.assert_close(r.read(f"sites/residual.{n_layers - 1}", a, b), last, **FP16_TOL)
            hidden = r.read("final/hidden", a, b)
            torch.testing.assert_close(hidden, out.hidden_states[-1][0], **FP16_TOL)
            # exact logits rebuilt from the file equal the model's own
            torch.testing.assert_close(r.unembedding().logits(hidden), out.logits[0], rtol=1e-3, atol=3e-3)
            # per-token summaries against a direct log-softmax of the model's logits
            lp = torch.log_softmax(out.logits[0].double(), -1)
            ref_next = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            stored = r.read("final/logprob", a, b)
            torch.testing.assert_close(stored[:-1].double(), ref_next, rtol=1e-5, atol=1e-5)
            assert torch.isnan(stored[-1])
            torch.testing.assert_close(
                r.read("final/entropy", a, b).double(), -(lp.exp() * lp).sum(-1), rtol=1e-4, atol=1e-4
            )
            topk = r.read("final/topk_ids", a, b).long()
            assert torch.equal(topk[:, 0], out.logits[0].argmax(-1))


def test_offsets_prompt_len_and_response(tiny_capture_pair, tiny_model: Path) -> None:
    base, _ = tiny_capture_pair
    lm = load_model(str(tiny_model))
    tok = lm.tokenizer
    with CaptureReader(base) as r:
        assert r.offsets[0] == 0 and r.offsets[-1] == r.n_tokens == len(r.token_ids)
        i = list(r.sample_ids).index("o2")
        prompt = tok("def add(a, b):")["input_ids"]
        response = tok("\n    return a + b", add_special_tokens=False)["input_ids"]
        assert r.prompt_len[i] == len(prompt)
        assert r.sample_tokens(i).tolist() == prompt + response
        assert list(r.sample_ids) == ["m1", "m2", "o1", "o2", "n1", "n2"]  # file order = prompt order
        assert r.position_mask("response").sum() == len(response)


def test_batching_does_not_change_values(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    one = capture(
        CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "one.h5", max_batch_tokens=1)
    )
    big = capture(
        CaptureConfig(
            model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "big.h5", max_batch_tokens=10_000
        )
    )
    with CaptureReader(one) as a, CaptureReader(big) as b:
        for path in ("sites/residual.2", "final/hidden", "final/logprob"):
            torch.testing.assert_close(a.read(path), b.read(path), rtol=2e-3, atol=2e-3, equal_nan=True)


def test_tokens_from_gives_identical_tokens(tiny_capture_pair, tiny_tuned: Path, tmp_path: Path) -> None:
    base, _ = tiny_capture_pair
    out = capture(CaptureConfig(model=str(tiny_tuned), tokens_from=base, out=tmp_path / "re.h5", probes=["final"]))
    with CaptureReader(base) as a, CaptureReader(out) as b:
        assert np.array_equal(a.token_ids, b.token_ids)
        assert list(a.sample_ids) == list(b.sample_ids)
        assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.prompt_len, b.prompt_len)
        assert b.sites() == []  # only the final probe was asked for


def test_generate_then_capture(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    out = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts=str(tiny_prompts),
            out=tmp_path / "gen.h5",
            chat=True,
            generate=True,
            max_new_tokens=5,
            layers="-1",
        )
    )
    lm = load_model(str(tiny_model))
    with CaptureReader(out) as r:
        assert r.residual_layers() == [lm.num_layers - 1]
        resp_lens = np.diff(r.offsets) - r.prompt_len
        # o2 had a given response (+ end-of-turn token in chat mode); the others got 1..5 generated tokens
        assert all(1 <= n <= 5 for sid, n in zip(r.sample_ids, resp_lens) if sid != "o2")
        # greedy: the first generated token is the argmax of the model's distribution at the last prompt token
        i = 0
        ids = r.sample_tokens(i).tolist()
        p = int(r.prompt_len[i])
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids[:p]])).logits[0, -1]
        assert ids[p] == int(logits.argmax())


def test_custom_probe_example_records_one_head(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "probes" / "examples" / "attn_head.py"
    out = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts=str(tiny_prompts),
            out=tmp_path / "head.h5",
            probes=[f"{example}:AttnHeadProbe"],
            probe_options={"layer": "2", "head": "1"},
        )
    )
    lm = load_model(str(tiny_model))
    hd = lm.model.config.hidden_size // lm.model.config.num_attention_heads
    with CaptureReader(out) as r:
        assert r.sites() == ["attn_head.2.1"]
        ids = r.sample_tokens(1).tolist()
        got = {}
        o_proj = lm.model.get_submodule("model.layers.2.self_attn.o_proj")
        h = o_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0]))
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([ids]))
        h.remove()
        ref = got["x"][0, :, hd : 2 * hd]
        torch.testing.assert_close(r.read("sites/attn_head.2.1", r.offsets[1], r.offsets[2]), ref, **FP16_TOL)


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_other_architectures_and_softcap(arch: str, tmp_path: Path, tiny_prompts: Path) -> None:
    from fixtures.tiny import build_tiny_model

    mdir = build_tiny_model(tmp_path / arch, arch)
    out = capture(
        CaptureConfig(
            model=str(mdir),
            prompts=str(tiny_prompts),
            out=tmp_path / "c.h5",
            probes=["residual", "final", "attn", "mlp"],
        )
    )
    lm = load_model(str(mdir))
    with CaptureReader(out) as r:
        ids = r.sample_tokens(2).tolist()
        with torch.no_grad():
            ref = lm.model(input_ids=torch.tensor([ids])).logits[0]
        rebuilt = r.unembedding().logits(r.read("final/hidden", r.offsets[2], r.offsets[3]))
        torch.testing.assert_close(rebuilt, ref, rtol=1e-3, atol=3e-3)
        if arch == "gemma2":
            assert r.h5["final/unembed"].attrs["logit_softcap"] == pytest.approx(30.0)
        assert {"attn.0", "mlp.0"} <= set(r.sites())


def test_unknown_final_transform_is_refused(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    """A model that scales its logits in a way the file cannot describe must fail the exact-logits check."""
    from driftkit.errors import DriftkitError

    lm = load_model(str(tiny_model))
    head = lm.model.lm_head
    orig = head.forward
    head.forward = lambda x: orig(x) * 1.7  # an unsupported final transform
    with pytest.raises(DriftkitError, match="do not match the model's own logits"):
        capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "bad.h5"), loaded=lm)


def test_bfloat16_storage_and_compression(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    out = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts=str(tiny_prompts),
            out=tmp_path / "bf.h5",
            storage_dtype="bfloat16",
            compression="gzip",
        )
    )
    ref = capture(
        CaptureConfig(
            model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "f32.h5", storage_dtype="float32"
        )
    )
    with CaptureReader(out) as a, CaptureReader(ref) as b:
        assert a.h5["sites/residual.1"].attrs["dtype"] == "bfloat16" and a.h5["sites/residual.1"].compression == "gzip"
        torch.testing.assert_close(a.read("sites/residual.1"), b.read("sites/residual.1"), rtol=1e-2, atol=1e-2)


KILL_SCRIPT = """
import os, sys
from driftkit.capturing import CaptureConfig, capture
cfg = CaptureConfig(
    model=sys.argv[1], prompts=sys.argv[2], out=sys.argv[3], max_batch_tokens=48, resume=len(sys.argv) > 4
)
def progress(phase, done, total):
    if phase == "capture" and len(sys.argv) == 4 and done > total // 2:
        os.kill(os.getpid(), 9)
capture(cfg, progress=progress)
"""


def test_kill_9_then_resume_equals_uninterrupted(tiny_model: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "many.jsonl"
    rows = [{"id": f"s{i}", "domain": "math", "text": "What is 2 + 3? " * (1 + i % 7)} for i in range(40)]
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = tmp_path / "k.py"
    script.write_text(KILL_SCRIPT)
    p = subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(prompts), str(out)], env=env, capture_output=True, text=True
    )
    assert p.returncode == -9, p.stderr[-2000:]
    with CaptureReader(out, allow_incomplete=True) as r:
        assert not r.complete and 0 < r.done.sum() < r.n_samples
    with pytest.raises(Exception, match="incomplete"):
        CaptureReader(out)
    p = subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(prompts), str(out), "resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    ref = capture(
        CaptureConfig(model=str(tiny_model), prompts=str(prompts), out=tmp_path / "ref.h5", max_batch_tokens=48)
    )
    with CaptureReader(out) as a, CaptureReader(ref) as b:
        assert a.complete
        for path in a.datasets():
            assert torch.equal(torch.nan_to_num(a.read(path), 7.0), torch.nan_to_num(b.read(path), 7.0)), path
