"""Scale options a user can get wrong are refused before anything expensive happens.

Why: at 14B, loading the weights takes minutes and ``--nproc 8`` starts eight such loads; a typo in
``--store``, a missing vLLM or more processes than samples must be reported before that, with no
output (file or shards folder) left behind. Each test names a model that does not exist: the
expected error proves the check ran before the model was looked up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftkit.capturing import CaptureConfig, capture
from driftkit.capturing.distributed import capture_sharded
from driftkit.cli.main import app
from driftkit.errors import DriftkitError

NO_MODEL = "/nonexistent/model-folder"


def test_store_typo_refused_before_the_model_loads(tiny_prompts: Path, tmp_path: Path) -> None:
    with pytest.raises(DriftkitError, match=r"poold.*did you mean pooled"):
        capture(CaptureConfig(model=NO_MODEL, prompts=str(tiny_prompts), out=tmp_path / "x.h5", store="poold"))
    assert not list(tmp_path.iterdir())


def test_missing_vllm_refused_before_the_model_loads(
    tiny_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # find_spec -> None, import -> ImportError
    cfg = CaptureConfig(model=NO_MODEL, prompts=str(tiny_prompts), out=tmp_path / "x.h5", generate=True, backend="vllm")
    with pytest.raises(DriftkitError, match=r"pip install 'driftkit\[vllm\]'"):
        capture(cfg)
    assert not list(tmp_path.iterdir())


def test_more_processes_than_samples_refused_before_any_process(tiny_prompts: Path, tmp_path: Path) -> None:
    n = sum(1 for line in tiny_prompts.read_text().splitlines() if line.strip())
    cfg = CaptureConfig(model=NO_MODEL, prompts=str(tiny_prompts), out=tmp_path / "x.h5")
    with pytest.raises(DriftkitError, match=rf"{n} sample\(s\) cannot be shared by {n + 1} processes"):
        capture_sharded(cfg, nproc=n + 1)
    assert not list(tmp_path.iterdir())  # no OUT.shards folder either


def test_more_processes_than_source_samples_with_tokens_from(
    tiny_capture_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from driftkit.store.reader import CaptureReader

    base = tiny_capture_pair[0]
    with CaptureReader(base) as r:
        n = r.n_samples
    cfg = CaptureConfig(model=NO_MODEL, tokens_from=str(base), out=tmp_path / "x.h5")
    with pytest.raises(DriftkitError, match=rf"{n} sample\(s\) cannot be shared"):
        capture_sharded(cfg, nproc=n + 1)


def test_cli_error_text_is_printed_verbatim(tiny_prompts: Path, tmp_path: Path) -> None:
    """``sample:x: use`` holds ``:x:``, an emoji code to rich: the message must print as written."""
    r = CliRunner().invoke(
        app, ["capture", NO_MODEL, "--prompts", str(tiny_prompts), "--store", "sample:x", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 1, r.output
    assert "--store sample:x:" in " ".join(r.output.split())
    assert "\u274c" not in r.output
