"""Capture integrity (issue 11): resume refuses any setting that shapes the file, ``complete`` only
after every row is verified, length checks and --truncate, the output lock, and honest messages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from driftkit.capturing import CaptureConfig, capture
from driftkit.capturing.lock import CaptureLock, holder_of, lock_path
from driftkit.errors import DriftkitError
from driftkit.models import load_model
from driftkit.store import schema as S
from driftkit.store.verify import verify_file

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: object):
    from driftkit.cli.main import app

    return runner.invoke(app, [str(a) for a in args])


def _kill_after(path: Path, n_done: int = 3) -> None:
    """Make a complete capture look like one killed after ``n_done`` samples."""
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False
        done = f[S.SAMPLES_DONE][()]
        done[n_done:] = False
        f[S.SAMPLES_DONE][...] = done
        w = f[S.SAMPLES_SITES_WRITTEN][()]
        w[n_done:] = False
        f[S.SAMPLES_SITES_WRITTEN][...] = w


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A private copy of the tiny model (the weights test swaps its safetensors)."""
    d = tmp_path_factory.mktemp("own") / "m"
    shutil.copytree(tiny_model, d)
    return d


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, model_copy: Path, tiny_prompts: Path) -> tuple[Path, Path]:
    """An all-layers capture killed after 3 of 6 samples, and the (private, editable) prompts it used."""
    d = tmp_path_factory.mktemp("killed")
    prompts = d / "p.jsonl"
    shutil.copy(tiny_prompts, prompts)
    out = capture(CaptureConfig(model=str(model_copy), prompts=str(prompts), out=d / "k.h5", max_batch_tokens=64))
    _kill_after(out)
    return out, prompts


@pytest.fixture(scope="module")
def loaded(model_copy: Path):
    return load_model(str(model_copy), device="cpu")


def _resume(out: Path, model: Path, prompts: Path, loaded, **kw) -> Path:
    cfg = CaptureConfig(model=str(model), prompts=str(prompts), out=out, resume=True, max_batch_tokens=64, **kw)
    return capture(cfg, loaded)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"layers": "0,2"}, "residual option layers"),
        ({"probe_options": {"topk": "5"}}, "final option topk"),
        ({"storage_dtype": "bfloat16"}, "storage_dtype"),
        ({"probes": ["residual"]}, "probes"),
    ],
)
def test_resume_refuses_other_settings(killed, model_copy, loaded, change, named) -> None:
    out, prompts = killed
    before = out.read_bytes()
    with pytest.raises(DriftkitError) as e:
        _resume(out, model_copy, prompts, loaded, **change)
    msg = str(e.value)
    assert named in msg and "overwrite=True" in msg and "original settings" in msg, msg
    assert out.read_bytes() == before  # nothing written


def test_resume_refuses_prompts_edited_in_place(killed, model_copy, loaded) -> None:
    out, prompts = killed
    original = prompts.read_text()
    rows = [json.loads(line) for line in original.splitlines()]
    rows[1]["text"] = "Edited: " + rows[1]["text"]  # same ids, other text
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        with pytest.raises(DriftkitError, match=r"prompt contents \(sha256\)"):
            _resume(out, model_copy, prompts, loaded)
    finally:
        prompts.write_text(original)


def test_resume_refuses_other_weights(killed, model_copy, tiny_tuned, tmp_path) -> None:
    out, prompts = killed
    other = tmp_path / "same-path-other-weights"
    shutil.copytree(model_copy, other)
    shutil.copy(tiny_tuned / "model.safetensors", other / "model.safetensors")
    # the same model path string as the file records, so only the weights hash can tell them apart
    mine = model_copy.parent / "swap"
    shutil.move(str(model_copy), str(mine))
    shutil.move(str(other), str(model_copy))
    try:
        with pytest.raises(DriftkitError, match="model weights_sha256"):
            _resume(out, model_copy, prompts, load_model(str(model_copy), device="cpu"))
    finally:
        shutil.rmtree(model_copy)
        shutil.move(str(mine), str(model_copy))


def test_resume_with_same_settings_completes_and_verifies(killed, model_copy, loaded, tmp_path) -> None:
    out, prompts = killed
    mine = tmp_path / "k.h5"
    shutil.copy(out, mine)
    _resume(mine, model_copy, prompts, loaded)
    with h5py.File(mine, "r") as f:
        assert bool(f.attrs["complete"]) and verify_file(f).ok
        assert f[S.SAMPLES_SITES_WRITTEN][()].all()
    r = cli("inspect", "--verify", mine)
    assert r.exit_code == 0 and "verified" in r.output, r.output


def test_verify_names_a_missing_site_row(killed, tmp_path) -> None:
    out, _ = killed
    hole = tmp_path / "hole.h5"
    shutil.copy(out, hole)
    with h5py.File(hole, "r+") as f:
        f[S.SAMPLES_DONE][...] = True  # every sample claims done ...
        w = f[S.SAMPLES_SITES_WRITTEN][()]
        w[:] = True
        cols = json.loads(f[S.SAMPLES_SITES_WRITTEN].attrs["sites"])
        w[4, cols.index("sites/residual.1")] = False  # ... but one site row was never written
        f[S.SAMPLES_SITES_WRITTEN][...] = w
        sid = f[S.SAMPLES_ID][4].decode()
    r = cli("inspect", "--verify", hole)
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert "sites/residual.1" in text and repr(sid) in text, text


def test_writer_never_marks_complete_with_a_hole(tmp_path) -> None:
    """A batch that lacks one dataset leaves its samples undone and finalize refuses ``complete``."""
    import torch

    from driftkit.store.writer import ArraySpec, CaptureWriter

    specs = [ArraySpec("sites/residual.0", (4,)), ArraySpec("sites/residual.1", (4,))]
    w = CaptureWriter.create(tmp_path / "w.h5", {}, ["a", "b"], ["math", "math"], [[1, 2], [3]], [1, 1], specs)
    w.write_samples(
        [0, 1],
        {
            "sites/residual.0": [torch.ones(2, 4), torch.ones(1, 4)],
            "sites/residual.1": [torch.ones(2, 4), torch.ones(1, 4)],
        },
    )
    w.write_samples([1], {"sites/residual.0": [torch.ones(1, 4)]})  # fine: residual.1 of b was written before
    assert w.done.all()
    w2 = CaptureWriter.create(tmp_path / "w2.h5", {}, ["a", "b"], ["math", "math"], [[1, 2], [3]], [1, 1], specs)
    w2.write_samples([0, 1], {"sites/residual.0": [torch.ones(2, 4), torch.ones(1, 4)]})
    assert not w2.done.any()
    with pytest.raises(DriftkitError, match=r"site sites/residual.1|never captured"):
        w2.finalize()
    w2.close()
    with h5py.File(tmp_path / "w2.h5", "r") as f:
        assert not bool(f.attrs["complete"])


def test_writer_after_a_failed_write_drops_the_file_without_hdf5s_close(tmp_path, monkeypatch) -> None:
    """After a write fails (ENOSPC here), close() must not run h5py's File.close: it flushes what HDF5
    could not write and crashed the interpreter in 1 of 5 disk-full captures (test_capture_cli's
    small-tmpfs test); a writer that never failed still closes normally."""
    import errno

    import torch

    from driftkit.errors import StorageError
    from driftkit.store.writer import ArraySpec, CaptureWriter

    specs = [ArraySpec("sites/residual.0", (4,))]
    w = CaptureWriter.create(tmp_path / "w.h5", {}, ["a"], ["math"], [[1, 2]], [1], specs)
    f = w.f
    closed: list[bool] = []
    monkeypatch.setattr(h5py.File, "close", lambda self: closed.append(True))

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.File, "flush", full)
    with pytest.raises(StorageError, match="disk is full"):
        w.write_samples([0], {"sites/residual.0": [torch.ones(2, 4)]})
    assert w.io_failed
    w.close()
    w.close()  # twice (the engine's error path may): still nothing
    assert not closed and w.f is None
    monkeypatch.undo()
    f.close()
    ok = CaptureWriter.create(tmp_path / "ok.h5", {}, ["a"], ["math"], [[1, 2]], [1], specs)
    ok.close()
    assert not ok.f.id.valid


# -- length checks ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("short") / "m", "llama", max_positions=32)


@pytest.fixture(scope="module")
def long_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("long") / "long.jsonl"
    rows = [
        {"id": "ok", "domain": "math", "text": "What is 2 + 3?"},
        {"id": "huge", "domain": "other", "text": "The quick brown fox jumps over the lazy dog. " * 12},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_over_long_prompt_refused_before_the_file(short_model, long_prompts, tmp_path) -> None:
    out = tmp_path / "x.h5"
    r = cli("capture", short_model, "--prompts", long_prompts, "--out", out)
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "'huge'" in text and "maximum of 32 positions" in text and "--truncate" in text, text
    assert not out.exists() and not lock_path(out).exists()


def test_generate_counts_max_new_tokens(short_model, long_prompts, tmp_path) -> None:
    with pytest.raises(DriftkitError, match=r"'ok' \(\d+ tokens = prompt \d+ \+ up to 30 generated\)"):
        capture(
            CaptureConfig(
                model=str(short_model),
                prompts=str(long_prompts),
                limit=1,
                generate=True,
                max_new_tokens=30,
                out=tmp_path / "g.h5",
            )
        )


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncate_cuts_and_records(short_model, long_prompts, tmp_path, side) -> None:
    from driftkit.models import load_tokenizer
    from driftkit.store.reader import CaptureReader

    out = capture(
        CaptureConfig(model=str(short_model), prompts=str(long_prompts), out=tmp_path / f"{side}.h5", truncate=side)
    )
    text = "The quick brown fox jumps over the lazy dog. " * 12
    full = load_tokenizer(str(short_model))(text, add_special_tokens=False)["input_ids"]
    with CaptureReader(out) as r:
        assert r.complete and r.attrs["truncate"] == side
        cut = r.h5[S.SAMPLES_TRUNCATED][()]
        assert cut.tolist() == [0, len(full) - 32]
        kept = r.sample_tokens(1).tolist()
        assert kept == (full[-32:] if side == "left" else full[:32])
        assert int(r.prompt_len[1]) == 32


# -- locks --------------------------------------------------------------------------------------------
_HOLD = (
    "import sys, time; from driftkit.capturing.lock import CaptureLock; CaptureLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def test_second_capture_sees_the_live_one(tiny_model, tiny_prompts, tmp_path) -> None:
    out = tmp_path / "busy.h5"
    out.write_bytes(b"partially written")  # what the other capture has written so far
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        holder = holder_of(out)
        assert holder and holder["pid"] == p.pid
        for extra in ([], ["--overwrite"], ["--resume"]):
            r = cli("capture", tiny_model, "--prompts", tiny_prompts, "--out", out, *extra)
            text = " ".join(r.output.split())
            busy = f"is being written by another driftkit capture (pid {p.pid} on host"
            assert r.exit_code == 1 and busy in text, text
        assert out.read_bytes() == b"partially written"  # --overwrite wiped nothing
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # the holder died (kill -9): its lock file stays but is stale, so today's messages come back
    assert lock_path(out).exists() and holder_of(out) is None
    r = cli("capture", tiny_model, "--prompts", tiny_prompts, "--out", out)
    assert r.exit_code == 1 and "already exists" in r.output
    r = cli("capture", tiny_model, "--prompts", tiny_prompts, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not lock_path(out).exists()


def test_lock_is_exclusive_in_process(tmp_path) -> None:
    a = CaptureLock(tmp_path / "x.h5").acquire()
    with pytest.raises(DriftkitError, match=f"pid {os.getpid()}"):
        CaptureLock(tmp_path / "x.h5").acquire()
    a.release()
    with CaptureLock(tmp_path / "x.h5"):
        pass


# -- messages -----------------------------------------------------------------------------------------
def test_ctrl_c_while_loading_does_not_say_resume(tiny_model, tiny_prompts, tmp_path, monkeypatch) -> None:
    import driftkit.capturing.engine as engine

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "load_model", interrupted)
    out = tmp_path / "never.h5"
    r = cli("capture", tiny_model, "--prompts", tiny_prompts, "--out", out)
    assert r.exit_code == 130, r.output
    assert "--resume" not in r.output and "before any capture file was written" in " ".join(r.output.split())
    assert not out.exists()


def test_json_array_prompts_file(tiny_model, tmp_path) -> None:
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps([{"id": "a", "text": "hi"}, {"id": "b", "text": "ho"}], indent=2))
    r = cli("capture", tiny_model, "--prompts", p, "--out", tmp_path / "x.h5")
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "looks like a JSON array" in text and "JSONL" in text, text
