"""Every verb's --help shows its text as written (brackets included) and the root has --version."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from driftkit import __version__
from driftkit.cli.main import app

runner = CliRunner()


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"driftkit {__version__}"


@pytest.mark.parametrize(
    ("verb", "text"),
    [("train", "[sft]/[rl]"), ("bench", "[[rule]]"), ("run", "[experiment].out"), ("bench", "quick (math_heldout, ")],
)
def test_help_keeps_brackets(verb: str, text: str) -> None:
    r = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert text in r.output


@pytest.mark.parametrize("verb", ["capture", "inspect", "compare", "bench", "transfer", "train", "run", "plugins"])
def test_every_verb_has_help(verb: str) -> None:
    r = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "Usage:" in r.output
