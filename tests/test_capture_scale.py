"""Capture at scale: --device-map (accelerate placement) and --backend (who generates the responses)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from driftkit.capturing import CaptureConfig, capture
from driftkit.errors import DriftkitError
from driftkit.models import _check_device_map, load_model
from driftkit.store.reader import CaptureReader


def _datasets(path: Path) -> dict[str, np.ndarray]:
    """Every numeric dataset of a capture (the arrays compare gives analyses)."""
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub":
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def _assert_same_arrays(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert np.array_equal(da[k], db[k], equal_nan=True), k


def test_device_map_auto_loads_and_captures_the_same(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    lm = load_model(str(tiny_model), device="cpu", device_map="auto")
    assert lm.info["device_map"] == {"cpu": sum(p.numel() for p in lm.model.parameters())}
    kw = dict(model=str(tiny_model), prompts=str(tiny_prompts), max_batch_tokens=64, device="cpu")
    plain = capture(CaptureConfig(out=tmp_path / "plain.h5", **kw))
    mapped = capture(CaptureConfig(out=tmp_path / "mapped.h5", device_map="auto", **kw))
    _assert_same_arrays(plain, mapped)


def test_device_map_dict_and_accelerate_hooks_capture_the_same(
    tiny_model: Path, tiny_prompts: Path, tmp_path: Path
) -> None:
    """A per-module map loads; and a model dispatched by accelerate with its device hooks on every
    module (what a map over several GPUs installs; forced here, as this machine has only a CPU)
    captures, logit check included, exactly what the plain model captures."""
    from accelerate import dispatch_model

    lm = load_model(str(tiny_model), device="cpu")
    dmap = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dmap.update({f"model.layers.{i}": "cpu" for i in range(lm.num_layers)})
    assert load_model(str(tiny_model), device="cpu", device_map=dmap).info["device_map"].keys() == {"cpu"}
    kw = dict(model=str(tiny_model), prompts=str(tiny_prompts), max_batch_tokens=64, device="cpu")
    plain = capture(CaptureConfig(out=tmp_path / "plain.h5", **kw))
    hooked = load_model(str(tiny_model), device="cpu")
    dispatch_model(hooked.model, device_map=dmap, main_device="cpu", force_hooks=True)
    assert hasattr(hooked.model.model.layers[0], "_hf_hook") and hasattr(hooked.model.lm_head, "_hf_hook")
    mapped = capture(CaptureConfig(out=tmp_path / "mapped.h5", **kw), loaded=hooked)
    _assert_same_arrays(plain, mapped)


def test_device_map_refuses_unknown_and_disk_offload(tiny_model: Path) -> None:
    with pytest.raises(DriftkitError, match="--device-map"):
        load_model(str(tiny_model), device="cpu", device_map="everywhere")
    lm = load_model(str(tiny_model), device="cpu")
    lm.model.lm_head.to("meta")  # what accelerate leaves in place of weights it offloads to disk
    with pytest.raises(DriftkitError, match="offloaded .* to disk"):
        _check_device_map("tiny", lm.model)


# -- --backend vllm, with a fake vllm module ----------------------------------------------------------
def _fake_vllm(made: list[dict[str, Any]]) -> types.ModuleType:
    """A stand-in for the vllm package: its LLM 'generates' fixed tokens that depend on the prompt."""
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw: Any) -> None:
            self.kw = kw

    class LLM:
        def __init__(self, model: str, **kw: Any) -> None:
            made.append({"model": model, **kw})

        def generate(self, requests: list[dict[str, Any]], params: SamplingParams, use_tqdm: bool = False) -> Any:
            outs = []
            for req in requests:
                p = req["prompt_token_ids"]
                toks = [(p[-1] + 7 * j) % 97 + 3 for j in range(1, params.kw["max_tokens"] - len(p) % 2 + 1)]
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=toks)]))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod


def test_backend_vllm_stores_and_scores_the_generated_tokens(
    tiny_model: Path, tiny_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, Any]] = []
    fake = _fake_vllm(made)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    out = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts=str(tiny_prompts),
            out=tmp_path / "vllm.h5",
            generate=True,
            backend="vllm",
            max_new_tokens=4,
            device="cpu",
            max_batch_tokens=64,
        )
    )
    assert len(made) == 1 and made[0]["dtype"] == "float32" and made[0]["gpu_memory_utilization"] < 0.9
    with CaptureReader(out) as r:
        assert r.complete
        for i in range(r.n_samples):
            ids, p = r.sample_tokens(i).tolist(), int(r.prompt_len[i])
            if r.sample_ids[i] == "o2":  # the one prompt with a given response is not generated
                continue
            expect = [(ids[p - 1] + 7 * j) % 97 + 3 for j in range(1, 4 - p % 2 + 1)]
            assert ids[p:] == expect, r.sample_ids[i]
    # scored teacher-forced exactly as --tokens-from scores the same tokens
    again = capture(
        CaptureConfig(
            model=str(tiny_model), tokens_from=out, out=tmp_path / "again.h5", device="cpu", max_batch_tokens=64
        )
    )
    da, db = _datasets(out), _datasets(again)
    for k in da:
        if k.startswith(("sites/", "final/")):
            assert np.array_equal(da[k], db[k], equal_nan=True), k


def test_backend_vllm_missing_says_how_to_install(
    tiny_model: Path, tiny_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    cfg = CaptureConfig(
        model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "x.h5", generate=True, backend="vllm"
    )
    with pytest.raises(DriftkitError, match=r"pip install 'driftkit\[vllm\]'"):
        capture(cfg)
    assert not (tmp_path / "x.h5").exists()


def test_backend_needs_generate_and_a_known_name(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    with pytest.raises(DriftkitError, match="needs --generate|needs generate"):
        capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "x.h5", backend="vllm"))
    with pytest.raises(DriftkitError, match="Unknown"):
        capture(
            CaptureConfig(
                model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "y.h5", generate=True, backend="tgi"
            )
        )
