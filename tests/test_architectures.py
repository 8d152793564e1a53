"""Exact logits across architectures: for every HF causal LM family driftkit supports, the logits
rebuilt from a capture (``final/hidden`` @ ``final/unembed``.T, then the stored final transform) are
the model's own, checked against the model's own forward pass (an independent reference), at float32
and at bfloat16.

Each model is tiny (2 layers, hidden 64, the fixture tokenizer) and its final transform is set away
from the default (Gemma softcap 30, Cohere scale 0.25, Granite divides by 6) so a missing or
misordered transform cannot pass. ``phi`` (Phi-1/2) is here for its ``lm_head`` bias
(``final/unembed_bias``).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from driftkit.capturing import CaptureConfig, capture
from driftkit.models import load_model
from driftkit.store import schema as S
from driftkit.store.reader import CaptureReader

ARCHS = [
    "llama",
    "qwen2",
    "mistral",
    "phi3",
    "phi",
    "gpt_neox",
    "olmo2",
    "gemma3_text",
    "cohere",
    "falcon",
    "gpt2",
    "granite",
    "granitemoe",
]
PROMPTS = [
    {"id": "a", "domain": "math", "text": "What is 2 + 3? The answer is 5."},
    {"id": "b", "domain": "other", "text": "Write a poem about the sea."},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """Build each architecture once per module (both dtypes load the same float32 weights)."""
    from driftkit.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("arch")
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = build_tiny_model(root / arch, arch, num_layers=2, hidden_size=64)
        return cache[arch]

    return get


def _reference(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own lm_head input and logits for one sample run alone."""
    got: dict[str, torch.Tensor] = {}
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda m, a: got.__setitem__("h", a[0]))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
    finally:
        hook.remove()
    return got["h"][0], logits


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_rebuilt_logits_are_the_models_own(arch: str, dtype: str, built, tmp_path: Path) -> None:
    mdir = built(arch)
    lm = load_model(str(mdir), dtype=dtype)
    # one sample per batch: the capture's forward is the reference forward, so hidden states agree bit for bit
    out = capture(
        CaptureConfig(
            model=str(mdir), prompts=PROMPTS, out=tmp_path / "c.h5", probes=["final"], dtype=dtype, max_batch_tokens=8
        ),
        loaded=lm,
    )
    tdt = getattr(torch, dtype)
    with CaptureReader(out) as r:
        hid, un = r.h5[S.FINAL_HIDDEN], r.h5[S.FINAL_UNEMBED]
        for ds in (hid, un):  # stored at the model's own dtype (bfloat16 as raw bits + attr)
            if dtype == "bfloat16":
                assert ds.dtype == np.uint16 and ds.attrs["dtype"] == "bfloat16"
            else:
                assert ds.dtype == np.float32 and "dtype" not in ds.attrs
        unembed = r.unembedding(tdt)
        assert unembed.weight.dtype == tdt
        head = lm.model.get_output_embeddings()
        assert torch.equal(unembed.weight, head.weight.detach())
        assert (unembed.bias is None) == (head.bias is None) == (arch != "phi")
        assert unembed.bias is None or float(unembed.bias.abs().max()) > 0.5  # a bias that matters
        for i in range(r.n_samples):
            a, b = int(r.offsets[i]), int(r.offsets[i + 1])
            h_ref, ref = _reference(lm.model, r.sample_tokens(i).tolist())
            hidden = r.read(S.FINAL_HIDDEN, a, b, dtype=tdt)
            assert torch.equal(hidden, h_ref), "final/hidden is not the model's own lm_head input"
            rebuilt = unembed.logits(hidden)
            assert rebuilt.dtype == ref.dtype == tdt
            big = float(ref.abs().max())
            if dtype == "float32":
                torch.testing.assert_close(rebuilt, ref, rtol=0, atol=1e-5 * big)
            else:
                # same bf16 operations as the model; at most one or two bf16 roundings (2^-8 relative) apart
                torch.testing.assert_close(rebuilt.float(), ref.float(), rtol=2**-7, atol=2**-8 * big)


def test_final_transforms_recorded(built, tmp_path: Path) -> None:
    """The transform attrs are those of each model's config (Granite's divisor stored as its reciprocal)."""
    want = {"gemma3_text": ("logit_softcap", 30.0), "cohere": ("logit_scale", 0.25), "granite": ("logit_scale", 1 / 6)}
    for arch, (attr, value) in want.items():
        out = capture(
            CaptureConfig(model=str(built(arch)), prompts=PROMPTS[:1], out=tmp_path / f"{arch}.h5", probes=["final"])
        )
        with h5py.File(out, "r") as f:
            attrs = dict(f[S.FINAL_UNEMBED].attrs)
        assert attrs[attr] == pytest.approx(value, rel=1e-15)
        assert {"logit_softcap", "logit_scale"} - {attr} & set(attrs) == set()
