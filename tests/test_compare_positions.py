"""``--positions auto`` (the default) and the positions every summary records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import driftkit
from driftkit.capturing import CaptureConfig, capture
from driftkit.cli.main import app


@pytest.fixture(scope="module")
def raw_pair(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_tuned: Path) -> tuple[Path, Path]:
    """Two captures of raw text: prompts only, no response tokens."""
    d = tmp_path_factory.mktemp("raw")
    p = d / "p.jsonl"
    p.write_text(
        "\n".join(
            json.dumps({"id": f"s{i}", "domain": "math" if i % 2 else "non", "text": t})
            for i, t in enumerate(
                [
                    "What is 2 + 3?",
                    "Write a poem about the sea.",
                    "If all cats are animals, then",
                    "def add(a, b):",
                    "The quick brown fox jumps over the lazy dog.",
                ]
            )
        )
        + "\n"
    )
    a = capture(CaptureConfig(model=str(tiny_model), prompts=str(p), out=d / "a.h5"))
    b = capture(CaptureConfig(model=str(tiny_tuned), prompts=str(p), out=d / "b.h5"))
    return a, b


def test_auto_uses_response_tokens_when_both_hold_responses(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair  # one sample of the fixture prompts carries a response
    auto = driftkit.compare([a, b], analyses=["kl", "token_rank"]).to_dict()
    resp = driftkit.compare([a, b], analyses=["kl", "token_rank"], positions="response").to_dict()
    assert auto["positions"] == "response"
    for name in ("kl", "token_rank"):
        assert auto["analyses"][name]["positions"] == "response"
        assert auto["analyses"][name]["summary"] == resp["analyses"][name]["summary"]
    assert any("auto -> response" in n for n in auto["notes"])


def test_auto_uses_all_tokens_on_raw_text(raw_pair) -> None:
    a, b = raw_pair
    auto = driftkit.compare([a, b], analyses=["kl", "cka"]).to_dict()
    full = driftkit.compare([a, b], analyses=["kl", "cka"], positions="all").to_dict()
    assert auto["positions"] == "all"
    assert auto["analyses"]["cka"]["positions"] == "all"  # recorded by the engine for every analysis
    assert auto["analyses"]["kl"]["summary"] == full["analyses"]["kl"]["summary"]


def test_logratio_label_follows_the_positions_used(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair
    res = driftkit.compare([a, b], analyses=["kl"], positions="prompt").to_dict()["analyses"]["kl"]
    assert res["positions"] == "prompt" and res["logratio_positions"] == "prompt"


def test_terminal_header_shows_the_resolved_positions(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair
    r = CliRunner().invoke(app, ["compare", str(a), str(b), "--analyses", "kl"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "positions=response (auto)" in r.output


def test_unknown_positions_is_a_clear_error(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair
    r = CliRunner().invoke(app, ["compare", str(a), str(b), "--positions", "answer"])
    assert r.exit_code == 1
    assert "--positions must be one of auto, all, prompt, response" in r.output
