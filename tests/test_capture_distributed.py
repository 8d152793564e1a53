"""Capture across processes: shares, shard files stitched by HDF5 virtual datasets, 2 gloo ranks.

The stitched capture must be the one-process capture, array for array (np.array_equal), so every
comparison here is exact. ``max_batch_tokens=1`` puts each sample in a batch of its own in both runs:
batch composition changes float rounding (see test_batching_does_not_change_values), and that is
the batching's doing, not the sharding's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import driftkit
from driftkit.capturing import CaptureConfig, CaptureEngine, capture
from driftkit.capturing.distributed import FAIL_RANK_ENV, capture_sharded, share_range
from driftkit.errors import DriftkitError
from driftkit.store.reader import CaptureReader
from driftkit.store.stitch import shard_path, stitch
from driftkit.store.verify import verify_file


def _all_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a capture, links and virtual datasets followed."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:

        def walk(g: h5py.Group) -> None:
            for k in g:
                obj = g[k]
                if isinstance(obj, h5py.Group):
                    walk(obj)
                else:
                    out[obj.name] = obj[()]

        walk(f)
    return out


def _assert_identical(a: Path, b: Path) -> None:
    da, db = _all_datasets(a), _all_datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        x, y = da[name], db[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        same = np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
        assert same, name


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("dist") / "p.jsonl"
    texts = [
        "What is 2 + 3?",
        "Solve for x: 2x + 4 = 10.",
        "Write a poem about the sea.",
        "If all cats are animals and Tom is a cat, then Tom is an animal. Yes or no?",
        "def add(a, b):",
    ]
    p.write_text(
        "".join(json.dumps({"id": f"s{i}", "domain": "dm"[i % 2], "text": t}) + "\n" for i, t in enumerate(texts))
    )
    return p


def _cfg(model: Path, prompts: Path, out: Path, **kw: object) -> CaptureConfig:
    return CaptureConfig(model=str(model), prompts=str(prompts), out=out, max_batch_tokens=1, **kw)


def test_shares_are_contiguous_balanced_and_never_empty() -> None:
    budgets = [5, 5, 5, 5, 100, 5, 5, 5]
    shares = [share_range(budgets, r, 3) for r in range(3)]
    assert shares[0][0] == 0 and shares[-1][1] == len(budgets)
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:])) and all(lo < hi for lo, hi in shares)
    assert share_range([10] * 8, 0, 2) == (0, 4) and share_range([10] * 8, 1, 2) == (4, 8)
    assert share_range([1, 1, 1, 1, 1000], 1, 2) == (4, 5)  # the long sample alone: balanced by tokens
    assert [share_range([1000, 1, 1], r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(DriftkitError, match="cannot be shared by 3"):
        share_range([1, 2], 0, 3)


def _sharded_in_process(cfg: CaptureConfig, world: int = 2) -> Path:
    """Every rank's engine run in this process (what run_rank does minus the process group), then stitched."""
    for r in range(world):
        CaptureEngine(replace(cfg, out=shard_path(cfg.out, r, world), shard=[r, world])).run()
    return stitch(cfg.out, [shard_path(cfg.out, r, world) for r in range(world)])


def test_stitched_shards_equal_one_process_and_move_with_their_folder(
    tiny_model: Path, prompts: Path, tmp_path: Path
) -> None:
    one = capture(_cfg(tiny_model, prompts, tmp_path / "one.h5"))
    st = _sharded_in_process(_cfg(tiny_model, prompts, tmp_path / "run" / "st.h5"))
    with h5py.File(st, "r") as f:
        assert f["sites/residual.0"].is_virtual and f["tokens/ids"].is_virtual
        assert isinstance(f.get("final/unembed", getlink=True), h5py.ExternalLink)
        assert verify_file(f).ok
    _assert_identical(one, st)
    assert os.path.getsize(st) < os.path.getsize(one) / 4  # the stitched file holds no activations (HDF5 metadata)
    # the folder moves, and is opened from another working directory: relative sources still resolve
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(tmp_path / "run"), moved)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        _assert_identical(one, moved / "st.h5")
        with CaptureReader(Path("elsewhere/run/st.h5")) as r:
            assert r.complete and r.n_samples == 5
    finally:
        os.chdir(cwd)
    shutil.rmtree(moved / "st.h5.shards")
    with pytest.raises(DriftkitError, match="st.h5.shards/ next to st.h5"):
        CaptureReader(moved / "st.h5")


def test_tokens_from_and_generate_shard(tiny_model: Path, prompts: Path, tmp_path: Path) -> None:
    gen = _sharded_in_process(_cfg(tiny_model, prompts, tmp_path / "gen.h5", generate=True, max_new_tokens=4))
    with CaptureReader(gen) as r:
        assert r.complete and list(r.sample_ids) == [f"s{i}" for i in range(5)]
        assert (np.diff(r.offsets) - r.prompt_len == 4).all()  # every prompt answered once, in its own shard
    src = tmp_path / "src.h5"
    shutil.copy(gen, src)  # tokens-from reads through the stitched file's virtual datasets
    shutil.copytree(tmp_path / "gen.h5.shards", tmp_path / "src.h5.shards")
    cfg = CaptureConfig(model=str(tiny_model), tokens_from=src, out=tmp_path / "tf.h5", max_batch_tokens=1)
    one = capture(replace(cfg, out=tmp_path / "tf1.h5"))
    _assert_identical(one, _sharded_in_process(cfg))


@pytest.mark.parametrize("store", ["pooled", "sample:3"])
def test_store_modes_stitch(tiny_model: Path, prompts: Path, tmp_path: Path, store: str) -> None:
    """pooled/* (per sample) and sample:K rows (with sites/positions shifted by the tokens before) stitch exactly."""
    one = capture(_cfg(tiny_model, prompts, tmp_path / "one.h5", store=store, layers="0,2"))
    st = _sharded_in_process(_cfg(tiny_model, prompts, tmp_path / "st.h5", store=store, layers="0,2"))
    _assert_identical(one, st)
    with h5py.File(st, "r") as f:
        assert verify_file(f).ok


def test_shards_share_one_unembedding_file(tiny_model: Path, prompts: Path, tmp_path: Path) -> None:
    """--shared-unembed: every shard links one file, and so does the stitched capture (relative to itself)."""
    cfg = _cfg(tiny_model, prompts, tmp_path / "run" / "st.h5", shared_unembed=tmp_path / "u.h5")
    st = _sharded_in_process(cfg)
    with h5py.File(st, "r") as f:
        assert f.get("final/unembed", getlink=True).filename == "../u.h5"
    one = capture(_cfg(tiny_model, prompts, tmp_path / "one.h5"))
    _assert_identical(one, st)


def test_two_gloo_ranks_fail_resume_and_equal_one_process(
    tiny_model: Path, prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real launcher: 2 processes, gloo. Rank 1 fails after its first batch; the run fails naming it,
    rank 0's shard is complete and kept; --resume finishes rank 1 only; the result is the one-process capture."""
    out = tmp_path / "st.h5"
    cfg = _cfg(tiny_model, prompts, out)
    monkeypatch.setenv(FAIL_RANK_ENV, "1")
    with pytest.raises(DriftkitError, match=r"(?s)failed on rank 1 of 2.*test failure of rank 1.*resume=True"):
        capture_sharded(cfg, nproc=2)
    monkeypatch.delenv(FAIL_RANK_ENV)
    assert not out.exists()
    with CaptureReader(shard_path(out, 0, 2)) as r0:
        created = r0.attrs["created"]
    with CaptureReader(shard_path(out, 1, 2), allow_incomplete=True) as r1:
        assert not r1.complete and 0 < r1.done.sum() < r1.n_samples  # its first batch was kept
    with pytest.raises(DriftkitError, match="already exists"):
        capture_sharded(cfg, nproc=2)  # shard 0 is there: refused without --resume, before any work
    assert capture_sharded(replace(cfg, resume=True), nproc=2) == out
    with CaptureReader(shard_path(out, 0, 2)) as r0:
        assert r0.attrs["created"] == created  # the finished shard was reused, not captured again
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))  # as each rank had: float sums split by thread
    try:
        one = capture(_cfg(tiny_model, prompts, tmp_path / "one.h5"))
    finally:
        torch.set_num_threads(threads)
    _assert_identical(one, out)
    report = driftkit.compare([one, out], analyses=["kl", "cka"], positions="all").to_dict()["analyses"]
    assert report["kl"]["summary"]["kl_forward"] == 0.0 and report["kl"]["summary"]["js"] == 0.0


def test_cli_nproc_errors(tiny_model: Path, prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any process starts: --nproc 0, --nproc inside torchrun, an existing shard."""
    from typer.testing import CliRunner

    from driftkit.cli.main import app

    def run(*args: object):
        return CliRunner().invoke(app, ["capture", str(tiny_model), "--prompts", str(prompts), *map(str, args)])

    r = run("--out", tmp_path / "o.h5", "--nproc", "0")
    assert r.exit_code == 1 and "--nproc 0 must be at least 1" in r.output
    shard_path(tmp_path / "o.h5", 1, 2).parent.mkdir()
    shard_path(tmp_path / "o.h5", 1, 2).write_bytes(b"")
    r = run("--out", tmp_path / "o.h5", "--nproc", "2")
    assert r.exit_code == 1 and "rank-00001-of-00002.h5 already exists" in r.output and "--resume" in r.output
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = run("--out", tmp_path / "o.h5", "--nproc", "2")
    assert r.exit_code == 1 and "inside a torchrun job of 2 processes" in r.output


def test_module_entry_point_for_torchrun() -> None:
    """``torchrun -m driftkit.cli capture ...`` needs ``python -m driftkit.cli`` to be the command."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "driftkit.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("driftkit "), r.stderr
