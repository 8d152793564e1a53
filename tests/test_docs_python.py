"""docs/python.md and the README's Python section run as written (against the tiny random models), so
the documented result objects (``to_frame``/``to_json``) cannot drift from the code.

Substitutions: ``smollm2-135m`` (the bundled default model) becomes the tiny base model and
``./ckpt/sft`` the tiny tuned one; a finished study's ``demo-out/report/study.json`` is written
first (running a study takes minutes) from the same keys the pipeline writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from docs_blocks import python_blocks, run_blocks

ROOT = Path(__file__).resolve().parents[1]

STUDY = {
    "schema": "driftkit.study/1",
    "experiment": "demo",
    "base": "smollm2-135m",
    "models": ["base", "sft"],
    "scores": {
        "base": {"math500": {"value": 30.0, "domain": "math", "metric": "accuracy", "n": 10}},
        "sft": {"math500": {"value": 40.0, "domain": "math", "metric": "accuracy", "n": 10}},
    },
    "representations": {
        "sft": {
            "cka_layers": [{"layer": 0, "linear_cka": 0.99, "debiased_cka": 0.98}],
            "pca_distance": {"math": 1.5},
            "principal_angles": [],
        }
    },
    "distributions": {
        "sft": {
            "kl": {"kl_forward": 0.25, "js": 0.05},
            "kl_per_domain": {"math": {"kl_forward": 0.3}},
            "rank": {"shifted": 0.1},
            "rank_per_domain": {},
        }
    },
    "drift": {
        "sft": [
            {"step": 0, "cka": 1.0, "kl": 0.0, "score": {"math500": 30.0}},
            {"step": 10, "cka": 0.98, "kl": 0.25, "score": {"math500": 40.0}},
        ]
    },
    "findings": ["SFT moved the representations more than RL.", "KL is largest on math prompts."],
}


def _localise(text: str, tiny_model: Path, tiny_tuned: Path) -> str:
    return text.replace("smollm2-135m", str(tiny_model)).replace("./ckpt/sft", str(tiny_tuned))


def readme_python_section() -> str:
    text = (ROOT / "README.md").read_text()
    return "".join(f"\n```python\n{code}\n```\n" for _, code in python_blocks(text))


def test_python_md_documents_every_result() -> None:
    text = (ROOT / "docs" / "python.md").read_text()
    for name in ("CaptureReader", "compare", "read_scores", "transferability", "load_study", "to_frame", "to_json"):
        assert name in text
    assert len(python_blocks(text)) >= 5


def test_python_md_blocks_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: Path,
    tiny_tuned: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-out" / "report").mkdir(parents=True)
    (tmp_path / "demo-out" / "report" / "study.json").write_text(json.dumps(STUDY))
    text = _localise((ROOT / "docs" / "python.md").read_text(), tiny_model, tiny_tuned)
    run_blocks(text, "docs/python.md", {"__name__": "docs_python"})
    out = capsys.readouterr().out
    assert "overwrite=True" in out and "--overwrite" not in out
    assert json.loads((tmp_path / "ti.json").read_text())["schema"] == "driftkit.transfer/1"


def test_readme_python_section_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tiny_tuned: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    text = _localise(readme_python_section(), tiny_model, tiny_tuned)
    assert python_blocks(text), "the README has a Python section"
    run_blocks(text, "README.md", {"__name__": "docs_readme"})
