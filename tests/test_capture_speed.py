"""The capture hot path's shortcuts change nothing stored: packed one-write-per-batch HDF5 writes,
padding-capped batches and the final probe's row-gathered statistics."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from driftkit.capturing import CaptureConfig, capture
from driftkit.capturing import engine as engine_mod
from driftkit.capturing.batching import token_budget_batches
from driftkit.store.reader import CaptureReader
from driftkit.store.writer import ArraySpec, CaptureWriter


def test_packed_write_lands_every_sample_in_its_own_rows(tmp_path: Path) -> None:
    """Scattered samples (with an empty one and adjacent runs) written in one packed write per dataset
    read back exactly, per sample, as if each had been written alone."""
    g = torch.Generator().manual_seed(0)
    lengths = [3, 0, 5, 1, 4, 2, 6]
    tokens = [list(range(n)) for n in lengths]
    specs = [ArraySpec("sites/x", (4,)), ArraySpec("final/k", (2,), "int32"), ArraySpec("final/lp", (), "float32")]
    w = CaptureWriter.create(tmp_path / "p.h5", {}, [f"s{i}" for i in range(7)], ["d"] * 7, tokens, [1] * 7, specs)
    data = {
        i: {
            "sites/x": torch.randn(n, 4, generator=g).half().float(),
            "final/k": torch.randint(0, 99, (n, 2), generator=g),
            "final/lp": torch.randn(n, generator=g),
        }
        for i, n in enumerate(lengths)
    }
    for batch in ([5, 1, 2, 3], [6, 0, 4]):  # any batch order; packed rows follow increasing sample index
        order = sorted(batch)
        w.write_packed(order, {p: torch.cat([data[i][p] for i in order]) for p in ("sites/x", "final/k", "final/lp")})
    w.finalize()
    w.close()
    with CaptureReader(tmp_path / "p.h5") as r:
        assert r.complete
        for i in range(7):
            a, b = r.offsets[i], r.offsets[i + 1]
            assert torch.equal(r.read("sites/x", a, b), data[i]["sites/x"])
            assert torch.equal(r.read("final/k", a, b).long(), data[i]["final/k"])
            assert torch.equal(r.read("final/lp", a, b), data[i]["final/lp"])


def test_writer_files_have_the_data_sieve_off_and_h5pys_format(tmp_path: Path) -> None:
    """The writer opens its file (new, and again to resume) with HDF5's data sieve off, so each of a
    packed write's scattered row ranges is one plain write instead of a read-patch-write of 64 KB
    around it; everything else about the file access, the format's version bounds included, is
    what ``h5py.File`` gives (a file any reader opens as before)."""
    import h5py

    specs = [ArraySpec("sites/x", (4,))]
    w = CaptureWriter.create(tmp_path / "s.h5", {}, ["a", "b"], ["d", "d"], [[1, 2], [3]], [1, 1], specs)
    with h5py.File(tmp_path / "plain.h5", "w") as plain:
        default = plain.id.get_access_plist()
        assert default.get_sieve_buf_size() > 0  # HDF5's default, which the writer turns off
        assert w.f.id.get_access_plist().get_sieve_buf_size() == 0
        assert w.f.id.get_access_plist().get_libver_bounds() == default.get_libver_bounds()
        made, plain_made = w.f.id.get_create_plist(), plain.id.get_create_plist()
        assert made.get_obj_track_times() == plain_made.get_obj_track_times()
        assert made.get_link_creation_order() == plain_made.get_link_creation_order()
    w.write_packed([1], {"sites/x": torch.full((1, 4), 3.0)})
    w.close()
    r = CaptureWriter.open_resume(tmp_path / "s.h5", specs, "float16")
    assert r.f.id.get_access_plist().get_sieve_buf_size() == 0
    r.write_packed([0], {"sites/x": torch.arange(8.0).view(2, 4)})
    r.finalize()
    r.close()
    assert not r.f.id.valid
    with CaptureReader(tmp_path / "s.h5") as rd:
        assert rd.complete
        assert torch.equal(rd.read("sites/x", 0, 3), torch.cat([torch.arange(8.0).view(2, 4), torch.full((1, 4), 3.0)]))


def test_padding_capped_batches_cover_every_sample_once() -> None:
    lengths = [7, 27, 9, 9, 12, 26, 13, 8, 22, 19, 11, 11, 40, 3] * 9
    todo = [i for i in range(len(lengths)) if i % 5]
    batches = token_budget_batches(lengths, todo, 1024)
    assert sorted(i for b in batches for i in b) == sorted(todo)
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= 1024 or len(b) == 1
    old = token_budget_batches(lengths, todo, 1024, max_padding=1.0)
    pad = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert pad(batches) < pad(old)


def test_new_batching_stores_what_the_old_batching_stored(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """Padding-capped batches + packed writes vs pure token-budget batches: same tokens, offsets and
    (to float16 rounding of different batch shapes) the same arrays; then a resume of a half-done file
    completes it to the same values."""
    prompts = tmp_path / "p.jsonl"
    rows = [{"id": f"s{i}", "domain": "math", "text": "What is 2 + 3? " * (1 + (i * 5) % 9)} for i in range(24)]
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = dict(model=str(tiny_model), prompts=str(prompts), max_batch_tokens=256)
    new = capture(CaptureConfig(out=tmp_path / "new.h5", **cfg))
    with monkeypatch.context() as m:
        m.setattr(engine_mod, "token_budget_batches", functools.partial(token_budget_batches, max_padding=1.0))
        old = capture(CaptureConfig(out=tmp_path / "old.h5", **cfg))
    with CaptureReader(new) as a, CaptureReader(old) as b:
        assert np.array_equal(a.token_ids, b.token_ids) and np.array_equal(a.offsets, b.offsets)
        assert set(a.datasets()) == set(b.datasets())
        for path in a.datasets():
            x, y = a.read(path), b.read(path)
            if x.is_floating_point():
                torch.testing.assert_close(x.float(), y.float(), rtol=2e-3, atol=2e-3, equal_nan=True)
            elif path == "final/topk_ids":
                assert (x == y).float().mean() > 0.99  # near-ties may swap under other batch shapes
            else:
                assert torch.equal(x, y), path
    # resume: forget half the samples of a copy of the new file (and zero their rows); --resume redoes them
    import shutil

    import h5py

    part = tmp_path / "part.h5"
    shutil.copy(new, part)
    with h5py.File(part, "r+") as f:
        offsets = f["samples/offsets"][()]
        redo = np.arange(len(offsets) - 1) % 2 == 0
        f["samples/done"][...] = ~redo
        f.attrs["complete"] = False
        rows = np.repeat(redo, np.diff(offsets))
        for path in ("sites/residual.1", "final/logprob"):
            x = f[path][()]
            x[rows] = 0
            f[path][...] = x
    capture(CaptureConfig(out=part, resume=True, **cfg))
    with CaptureReader(part) as a, CaptureReader(new) as b:
        assert a.complete
        rows_t = torch.from_numpy(rows)
        for path in ("sites/residual.1", "final/logprob", "final/hidden"):
            x, y = a.read(path), b.read(path)
            assert torch.equal(torch.nan_to_num(x[~rows_t], 7.0), torch.nan_to_num(y[~rows_t], 7.0)), path  # kept as is
            torch.testing.assert_close(x[rows_t], y[rows_t], rtol=2e-3, atol=2e-3, equal_nan=True)  # redone


def test_packed_write_refuses_float16_overflow(tmp_path: Path) -> None:
    import pytest

    from driftkit.errors import DriftkitError

    w = CaptureWriter.create(
        tmp_path / "o.h5", {}, ["a", "b"], ["d", "d"], [[1, 2], [3]], [1, 1], [ArraySpec("sites/x", (2,))]
    )
    with pytest.raises(DriftkitError, match="bfloat16"):
        w.write_packed([0, 1], {"sites/x": torch.tensor([[1.0, 2.0], [3.0, -7e4], [0.0, 0.0]])})
    assert not w.done.any()
    w.close()


def test_writer_thread_runs_one_openmp_thread_and_leaks_no_setting() -> None:
    """The writer's torch ops use one OpenMP thread (its own team would compete with the forward's
    for the same cores); the caller keeps its threads, during and after, and so do threads started
    after the writer stops."""
    import threading

    import torch

    from driftkit.store.writer import BackgroundWriter

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: dict[str, int] = {}

        class _Writer:
            def write_packed(self, samples, arrays) -> None:
                seen["writer"] = torch.get_num_threads()

        bw = BackgroundWriter(_Writer())
        bw.put_packed([0], {})
        seen["caller_during"] = torch.get_num_threads()
        bw.close()
        later: list[int] = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == {"writer": 1, "caller_during": 2}
        assert torch.get_num_threads() == 2 and later == [2]
    finally:
        torch.set_num_threads(before)


def test_pack_batch_drops_padding_in_file_order_and_finishes_each_array() -> None:
    """Rows of real tokens only, samples in increasing file order; without padding and already in
    order the rows are the array itself (no copy); ``finish`` sees one packed array at a time and
    decides what is kept of it (here: a renamed, reduced array)."""
    from driftkit.capturing.engine import pack_batch

    lengths = {7: 3, 2: 1, 5: 2}  # sample index -> tokens
    batch_idx = [7, 2, 5]  # rows of the (3, 3) batch, in batch order
    t = torch.arange(9.0).view(3, 3)  # (B, S): row r holds 3r, 3r + 1, 3r + 2
    lens = [lengths.get(i, 0) for i in range(8)]
    seen: list[str] = []

    def finish(path: str, rows: torch.Tensor, in_order: list[int]) -> dict[str, torch.Tensor]:
        seen.append(path)
        return {path + "/sum": rows.sum().view(1)}

    order, packed = pack_batch({"x": t, "y": t * 10, "skip": t}, batch_idx, lens, 3, {"x", "y"})
    assert order == [2, 5, 7]
    assert packed["x"].tolist() == [3.0, 6.0, 7.0, 0.0, 1.0, 2.0]  # sample 2 (1 token), 5 (2), 7 (3)
    assert set(packed) == {"x", "y"}
    _, finished = pack_batch({"x": t, "y": t * 10}, batch_idx, lens, 3, {"x", "y"}, finish)
    assert seen == ["x", "y"] and finished["x/sum"].item() == 19.0 and finished["y/sum"].item() == 190.0
    full = torch.arange(6.0).view(2, 3)
    _, whole = pack_batch({"x": full}, [0, 1], [3, 3], 3, {"x"})
    assert whole["x"].tolist() == list(range(6)) and whole["x"].data_ptr() == full.data_ptr()


def test_capture_forward_builds_no_kv_cache_and_stores_the_same(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """The capture's forward passes ``use_cache=False`` where the model takes it (and nothing where it
    does not), and a capture made that way stores exactly what one made with the model's KV cache does."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids, attn = torch.zeros((1, 3), dtype=torch.long), torch.ones((1, 3), dtype=torch.long)
    assert engine_mod.forward_inputs(model, ids, attn)["use_cache"] is False

    class NoCacheArg(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return input_ids

    assert set(engine_mod.forward_inputs(NoCacheArg(), ids, attn)) == {"input_ids", "attention_mask"}

    prompts = tmp_path / "p.jsonl"
    rows = [{"id": f"s{i}", "domain": "math", "text": "Add 2 and 3. " * (1 + i % 4)} for i in range(6)]
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = dict(model=str(tiny_model), prompts=str(prompts), max_batch_tokens=64)
    without = capture(CaptureConfig(out=tmp_path / "without.h5", **cfg))
    with monkeypatch.context() as m:
        plain = engine_mod.forward_inputs
        m.setattr(engine_mod, "forward_inputs", lambda *a: {**plain(*a), "use_cache": True})
        cached = capture(CaptureConfig(out=tmp_path / "cached.h5", **cfg))
    with CaptureReader(without) as a, CaptureReader(cached) as b:
        assert set(a.datasets()) == set(b.datasets())
        for path in a.datasets():
            assert torch.equal(torch.nan_to_num(a.read(path), 7.0), torch.nan_to_num(b.read(path), 7.0)), path
