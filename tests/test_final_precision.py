"""``final/hidden`` and the unembedding at the model's own precision, and a logit check that proves the
rebuild is the model's own (no absolute slack). References are the model's own forward logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from driftkit.capturing import CaptureConfig, capture
from driftkit.errors import DriftkitError
from driftkit.models import load_model
from driftkit.store import schema as S
from driftkit.store.reader import CaptureReader


def _own_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_float32_model_stores_float32_final_hidden(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    """--storage-dtype float16 (the default) applies to layer sites; final/hidden stays the model's float32."""
    out = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts=str(tiny_prompts),
            out=tmp_path / "c.h5",
            layers="1",
            dtype="float32",
            max_batch_tokens=64,
        )
    )
    lm = load_model(str(tiny_model), dtype="float32")
    with CaptureReader(out) as r:
        assert r.h5["sites/residual.1"].dtype == np.float16
        assert r.h5[S.FINAL_HIDDEN].dtype == np.float32 and r.h5[S.FINAL_UNEMBED].dtype == np.float32
        un = r.unembedding()
        for i in range(r.n_samples):  # batched with padding: the model's forward of one sample is the reference
            ref = _own_logits(lm.model, r.sample_tokens(i).tolist())
            rebuilt = un.logits(r.read(S.FINAL_HIDDEN, r.offsets[i], r.offsets[i + 1]))
            torch.testing.assert_close(rebuilt, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_bfloat16_model_stores_raw_bits(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    """A bfloat16 model with float16 layer storage: final/hidden and unembed are its bf16 values, bit for bit."""
    lm = load_model(str(tiny_model), dtype="bfloat16")
    out = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts=str(tiny_prompts),
            out=tmp_path / "c.h5",
            layers="0",
            dtype="bfloat16",
            max_batch_tokens=8,
        ),
        loaded=lm,
    )
    head = lm.model.get_output_embeddings()
    got: dict[str, torch.Tensor] = {}
    hook = head.register_forward_pre_hook(lambda m, a: got.__setitem__("h", a[0]))
    with CaptureReader(out) as r:
        assert r.h5["sites/residual.0"].dtype == np.float16
        for p in (S.FINAL_HIDDEN, S.FINAL_UNEMBED):
            assert r.h5[p].dtype == np.uint16 and r.h5[p].attrs["dtype"] == "bfloat16"
        assert torch.equal(r.unembedding(torch.bfloat16).weight, head.weight.detach())
        ids = r.sample_tokens(0).tolist()
        _own_logits(lm.model, ids)  # runs the model, so the hook records the head's input
        hook.remove()
        hidden = r.read(S.FINAL_HIDDEN, r.offsets[0], r.offsets[1], dtype=torch.bfloat16)
        assert torch.equal(hidden, got["h"][0])


@pytest.mark.parametrize("slice_bytes", [None, 4 * 64 * 7], ids=["one-slice", "7-row-slices"])
@pytest.mark.parametrize("wrong", ["scale", "bias"])
def test_check_catches_small_wrong_transforms(
    wrong: str, slice_bytes: int | None, tiny_model: Path, tiny_prompts: Path, tmp_path: Path, monkeypatch
) -> None:
    """Differences the old 1e-3 absolute slack let through (a 1e-4 relative scale, a 2e-4 bias) now fail,
    also when the check walks the unembedding in slices of a few rows (as it does at a 152k vocabulary)."""
    if slice_bytes is not None:
        import driftkit.probes.final as final_probe

        monkeypatch.setattr(final_probe, "CHECK_SLICE_BYTES", slice_bytes)
    lm = load_model(str(tiny_model), dtype="float32")
    clean = _own_logits(lm.model, [5, 6, 7, 8])
    head = lm.model.lm_head
    orig = head.forward
    head.forward = (lambda x: orig(x) * (1 + 1e-4)) if wrong == "scale" else (lambda x: orig(x) + 2e-4)
    bad = _own_logits(lm.model, [5, 6, 7, 8])
    assert bool(((bad - clean).abs() <= 1e-3 * (1 + clean.abs())).all())  # within the old check's slack
    with pytest.raises(DriftkitError, match="do not match the model's own logits"):
        capture(
            CaptureConfig(
                model=str(tiny_model),
                prompts=str(tiny_prompts),
                out=tmp_path / "bad.h5",
                probes=["final"],
                dtype="float32",
            ),
            loaded=lm,
        )


def test_old_float16_final_hidden_still_reads(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    """Files written before this change hold final/hidden at float16 (or bf16 bits): readers decode by dtype."""
    out = capture(
        CaptureConfig(
            model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "new.h5", probes=["final"], dtype="float32"
        )
    )
    for storage in ("float16", "bfloat16"):
        old = tmp_path / f"old_{storage}.h5"
        shutil.copy(out, old)
        with h5py.File(old, "r+") as f:
            h = torch.from_numpy(f[S.FINAL_HIDDEN][()])
            del f[S.FINAL_HIDDEN]
            if storage == "float16":
                f.create_dataset(S.FINAL_HIDDEN, data=h.half().numpy())
            else:
                bits = h.bfloat16().view(torch.uint16).numpy()
                f.create_dataset(S.FINAL_HIDDEN, data=bits).attrs["dtype"] = "bfloat16"
        with CaptureReader(out) as a, CaptureReader(old) as b:
            ha, hb = a.read(S.FINAL_HIDDEN), b.read(S.FINAL_HIDDEN)
            assert hb.dtype == torch.float32
            torch.testing.assert_close(hb, ha, rtol=2**-7 if storage == "bfloat16" else 2**-10, atol=1e-3)
            torch.testing.assert_close(b.unembedding().logits(hb), a.unembedding().logits(ha), rtol=0.05, atol=0.05)


def test_resume_refuses_final_hidden_at_another_dtype(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    out = capture(
        CaptureConfig(
            model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "c.h5", probes=["final"], dtype="float32"
        )
    )
    with h5py.File(out, "r+") as f:  # as an older driftkit wrote it, and interrupted
        h = f[S.FINAL_HIDDEN][()]
        del f[S.FINAL_HIDDEN]
        f.create_dataset(S.FINAL_HIDDEN, data=h.astype(np.float16))
        f[S.SAMPLES_DONE][0] = False
        f.attrs["complete"] = False
    with pytest.raises(DriftkitError, match="stored at another dtype"):
        capture(
            CaptureConfig(
                model=str(tiny_model),
                prompts=str(tiny_prompts),
                out=out,
                probes=["final"],
                dtype="float32",
                resume=True,
            )
        )


def test_inspect_shows_final_hidden_dtype(tiny_model: Path, tiny_prompts: Path, tmp_path: Path) -> None:
    from driftkit.cli.inspect import describe

    out = capture(
        CaptureConfig(
            model=str(tiny_model), prompts=str(tiny_prompts), out=tmp_path / "c.h5", probes=["final"], dtype="bfloat16"
        )
    )
    arrays = {a["path"]: a["dtype"] for a in describe(out)["arrays"]}
    assert arrays[S.FINAL_HIDDEN] == arrays[S.FINAL_UNEMBED] == "bfloat16"
