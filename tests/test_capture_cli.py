"""The capture/inspect CLI: happy path and every bad input the capture issue names (exit 1 + message)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftkit.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_capture_and_inspect(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    r = run(
        "capture",
        tiny_model,
        "--prompts",
        "bundled:math",
        "--limit",
        "5",
        "--layers",
        "every:2",
        "--out",
        out,
        "--json",
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 5 and summary["sites"] == ["embed", "residual.0", "residual.2"]
    r = run("inspect", out, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["complete"] and d["samples"] == 5 and d["tokens"] > 0
    assert {a["path"] for a in d["arrays"]} >= {"final/hidden", "final/unembed", "sites/residual.2", "tokens/ids"}
    r = run("inspect", out)
    assert r.exit_code == 0 and "complete" in r.stdout and "final/hidden" in r.stdout


def test_plugins_lists_bundled_probes() -> None:
    r = run("plugins", "--kind", "probe", "--json")
    assert r.exit_code == 0, r.output
    names = {p["name"]: p for p in json.loads(r.stdout)}
    assert {"residual", "final", "attn", "mlp"} <= set(names)
    assert names["residual"]["source"] == "bundled" and "layers" in names["residual"]["options"]


def _assert_user_error(r, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    for n in needles:
        assert n in text, text
    assert "Traceback" not in r.output


def test_model_path_missing(tmp_path: Path) -> None:
    _assert_user_error(
        run("capture", tmp_path / "nope", "--prompts", "bundled:math", "--out", tmp_path / "o.h5"), "does not exist"
    )
    assert not (tmp_path / "o.h5").exists()


def test_model_folder_without_safetensors(tiny_model: Path, tmp_path: Path) -> None:
    d = tmp_path / "pickled"
    shutil.copytree(tiny_model, d)
    for f in d.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    _assert_user_error(
        run("capture", d, "--prompts", "bundled:math", "--out", tmp_path / "o.h5"), "no *.safetensors", "pickle"
    )
    assert not (tmp_path / "o.h5").exists()


def test_empty_and_malformed_prompt_files(tiny_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    _assert_user_error(run("capture", tiny_model, "--prompts", empty, "--out", tmp_path / "o.h5"), "has no prompts")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": oops}\n')
    _assert_user_error(
        run("capture", tiny_model, "--prompts", bad, "--out", tmp_path / "o.h5"), "line 2", "not valid JSON"
    )
    notext = tmp_path / "notext.jsonl"
    notext.write_text('{"id": "a", "domain": "math"}\n')
    _assert_user_error(
        run("capture", tiny_model, "--prompts", notext, "--out", tmp_path / "o.h5"),
        "line 1",
        "neither 'text' nor 'messages'",
    )
    assert not (tmp_path / "o.h5").exists()


def test_unknown_layer_lists_valid_ones(tiny_model: Path, tmp_path: Path) -> None:
    _assert_user_error(
        run("capture", tiny_model, "--prompts", "bundled:math", "--layers", "0,9", "--out", tmp_path / "o.h5"),
        "Unknown layer 9",
        "0..3",
    )


def test_output_exists_needs_overwrite_or_resume(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    out.write_bytes(b"precious")
    _assert_user_error(
        run("capture", tiny_model, "--prompts", "bundled:math", "--out", out),
        "already exists",
        "--overwrite",
        "--resume",
    )
    assert out.read_bytes() == b"precious"


def test_tokens_from_other_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    from fixtures.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", "llama", vocab_size=300)
    src = tmp_path / "src.h5"
    assert run("capture", other, "--prompts", "bundled:math", "--limit", "2", "--out", src).exit_code == 0
    _assert_user_error(
        run("capture", tiny_model, "--tokens-from", src, "--out", tmp_path / "o.h5"), "another tokenizer"
    )
    assert not (tmp_path / "o.h5").exists()


def _cli_in_subprocess(*args: str) -> subprocess.CompletedProcess:
    """Disk-full runs go through a separate process: after ENOSPC, HDF5 objects that failed to
    flush can crash the interpreter when the garbage collector frees them much later, which would
    take the rest of the test session down with it (a driftkit command exits right after the error)."""
    import sys

    return subprocess.run([sys.executable, "-m", "driftkit.cli.main", *map(str, args)], capture_output=True, text=True)


def test_unwritable_output(tiny_model: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("x")
    p = _cli_in_subprocess(
        "capture", tiny_model, "--prompts", "bundled:math", "--limit", "2", "--out", not_a_dir / "o.h5"
    )
    assert p.returncode == 1 and "Writing the capture file" in " ".join(p.stderr.split()), p.stderr[-2000:]


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here to simulate a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_a_clear_error(tiny_model: Path, small_disk: Path) -> None:
    p = _cli_in_subprocess("capture", tiny_model, "--prompts", "bundled:general-mix", "--out", small_disk / "o.h5")
    text = " ".join(p.stderr.split())
    assert p.returncode == 1 and "disk is too full" in text and "choose another --out" in text, p.stderr[-2000:]
    assert not (small_disk / "o.h5").exists()


def test_disk_full_mid_write_is_a_clear_error(tiny_model: Path, small_disk: Path) -> None:
    """When the disk fills up after the size check (compressed files skip it), the write error is still clear."""
    p = _cli_in_subprocess(
        "capture", tiny_model, "--prompts", "bundled:general-mix", "--out", small_disk / "o.h5", "--compression", "lzf"
    )
    text = " ".join(p.stderr.split())
    assert p.returncode == 1 and "disk is full" in text and "--resume" in text, p.stderr[-2000:]


def test_stratified_subset_covers_every_domain() -> None:
    from driftkit.prompts import load_prompts, stratified

    ps = load_prompts("bundled:general-mix")
    sub = stratified(ps, 7)
    assert len(sub) == 7 and {p.domain for p in sub} == {"math", "other", "non"}
    assert [p.id for p in sub] == [p.id for p in ps if p in sub]  # file order kept
    assert stratified(ps, None) == ps


def test_old_probes_prefix_still_works_with_a_note(tiny_model: Path, tmp_path: Path) -> None:
    """``probes:NAME`` was renamed ``bundled:NAME``; the old spelling keeps working for now."""
    out = tmp_path / "old.h5"
    r = run("capture", tiny_model, "--prompts", "probes:math", "--limit", "2", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert "note:" in r.output and "bundled:math" in r.output
    from driftkit.prompts import load_prompts

    with pytest.warns(DeprecationWarning, match="bundled:general-mix"):
        assert len(load_prompts("probes:general-mix")) == 90
