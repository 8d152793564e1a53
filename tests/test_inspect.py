"""``driftkit inspect`` lists every array of a capture exactly once, sites in layer order."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from driftkit.capturing import CaptureConfig, capture
from driftkit.cli.main import app


def test_inspect_table_lists_every_site_once(tmp_path: Path) -> None:
    from fixtures.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "m", "llama", num_layers=12, hidden_size=32)
    out = capture(CaptureConfig(model=str(model), prompts="bundled:math", limit=2, out=tmp_path / "c.h5"))
    r = CliRunner().invoke(app, ["inspect", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    listed = re.findall(r"(sites/\S+|final/\S+|tokens/\S+)", r.output)
    expected = [
        "final/entropy",
        "final/hidden",
        "final/logprob",
        "final/norm/weight",
        "final/topk_ids",
        "final/topk_logprobs",
        "final/unembed",
        "sites/embed",
        *[f"sites/residual.{i}" for i in range(12)],
        "tokens/ids",
    ]
    assert listed == expected
