"""Captures of one checkpoint can share one unembedding file (opt-in): small files, same results."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

import driftkit
from driftkit.capturing import CaptureConfig, capture
from driftkit.cli.main import app
from driftkit.errors import DriftkitError
from driftkit.store.reader import CaptureReader


def test_two_captures_share_one_unembedding(tiny_model: Path, tiny_tuned: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "base_unembed.h5"
    own = capture(
        CaptureConfig(model=str(tiny_model), prompts="bundled:math", limit=3, layers="0", out=tmp_path / "own.h5")
    )
    a = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts="bundled:math",
            limit=3,
            layers="0",
            out=tmp_path / "a.h5",
            shared_unembed=shared,
        )
    )
    b = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts="bundled:math",
            limit=3,
            layers="0",
            out=tmp_path / "b.h5",
            shared_unembed=shared,
        )
    )
    with h5py.File(a) as f:
        assert isinstance(f.get("final/unembed", getlink=True), h5py.ExternalLink)
    with CaptureReader(own) as r0, CaptureReader(a) as ra:
        w0, wa = r0.unembedding().weight, ra.unembedding().weight
    assert torch.equal(w0, wa)  # the same exact matrix, read through the link
    v, d = w0.shape
    assert own.stat().st_size - a.stat().st_size >= 0.9 * v * d * w0.element_size()
    rep = driftkit.compare([a, b], analyses=["kl"]).to_dict()
    assert rep["analyses"]["kl"]["summary"]["kl_forward"] == 0.0

    # moved together, the captures still find the shared file (the link is relative)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(a, moved / "a.h5")
    (moved / "shared").mkdir()
    shutil.copy(shared, moved / "shared" / shared.name)
    with CaptureReader(moved / "a.h5") as r:
        assert torch.equal(r.unembedding().weight, w0)

    # other weights never use the file
    with pytest.raises(DriftkitError, match="other weights"):
        capture(
            CaptureConfig(
                model=str(tiny_tuned), prompts="bundled:math", limit=3, out=tmp_path / "t.h5", shared_unembed=shared
            )
        )


def test_missing_shared_file_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    shared = tmp_path / "u.h5"
    a = capture(
        CaptureConfig(
            model=str(tiny_model),
            prompts="bundled:math",
            limit=2,
            layers="0",
            out=tmp_path / "a.h5",
            shared_unembed=shared,
        )
    )
    shared.unlink()
    with CaptureReader(a) as r, pytest.raises(DriftkitError, match="shared file u.h5"):
        r.unembedding()


def test_cli_flag(tiny_model: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app,
        [
            "capture",
            str(tiny_model),
            "--prompts",
            "bundled:math",
            "--limit",
            "2",
            "--layers",
            "0",
            "--shared-unembed",
            str(tmp_path / "u.h5"),
            "--out",
            str(tmp_path / "c.h5"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "u.h5").is_file()
