"""The pipeline and the study report name no plugin: analyses bring their own rows, findings and
figures, trainers are named by the experiment, and UMAP is an analysis plugin like any other."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the only modules of the pipeline allowed to name plugins: the demo's and the defaults' settings
CONFIG_FILES = {"driftkit/pipeline/demo.py", "driftkit/pipeline/defaults.py"}
#: bundled result keys the core used to read by name
RESULT_KEYS = {"kl_forward", "linear_cka", "pca_distance", "shifted", "top_shifted_tokens"}


def _string_literals(path: Path) -> set[str]:
    """Every string constant of a module except docstrings."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    }


def test_no_plugin_name_in_pipeline_or_report() -> None:
    from driftkit import registry

    names = {n for kind in ("analysis", "trainer", "benchmark") for n in registry.available(kind)}
    assert {"cka", "kl", "token_rank", "pca_shift", "umap", "sft", "rl", "math500"} <= names
    checked = 0
    for folder in ("driftkit/pipeline", "driftkit/report"):
        for path in sorted((ROOT / folder).glob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in CONFIG_FILES:
                continue
            found = _string_literals(path) & (names | RESULT_KEYS)
            assert not found, f"{rel} names plugins or their result keys: {sorted(found)}"
            checked += 1
    assert checked >= 8


MINE = """
from driftkit.registry.analysis import Analysis


class Mine(Analysis):
    name = "mine"
    description = "A user's analysis: how many samples were compared."

    def run(self, pair):
        return {"summary": {"samples": pair.n_samples}}

    def study_rows(self, result):
        return [("my samples", result["summary"]["samples"], "d")]

    def findings(self, results):
        return [f"{lab}: my analysis saw {r['summary']['samples']} samples." for lab, r in results.items()]
"""


def test_user_analysis_reaches_the_study_without_core_change(
    tmp_path: Path, tiny_model: Path, tiny_tuned: Path, tiny_prompts: Path
) -> None:
    from driftkit.pipeline.experiment import from_dict
    from driftkit.pipeline.runner import run_experiment

    (tmp_path / "mine.py").write_text(MINE)
    cfg = {
        "experiment": {"name": "user-plugin", "base": str(tiny_model), "out": str(tmp_path / "run"), "seed": 0},
        "models": [{"name": "other", "path": str(tiny_tuned)}],
        "bench": {"enabled": False},
        "capture": {
            "prompts": str(tiny_prompts),
            "chat_prompts": str(tiny_prompts),
            "chat_limit": 3,
            "max_new_tokens": 3,
            "max_batch_tokens": 64,
        },
        "compare": {"raw_analyses": ["cka", f"{tmp_path / 'mine.py'}:Mine"], "gen_analyses": ["kl"]},
        "drift": {"enabled": False},
    }
    result = run_experiment(from_dict(cfg), log=lambda m: None)
    study = json.loads(result.report_json.read_text())
    row = next(r for r in study["drift_table"] if r["analysis"] == "mine")
    assert row["measure"] == "my samples" and row["values"] == {"other": 6}
    assert study["representations"]["other"]["mine"] == {"samples": 6.0}  # default study_entry: the summary
    assert "other: my analysis saw 6 samples." in study["findings"]
    html = result.report_html.read_text()
    assert "my samples" in html and "my analysis saw 6 samples" in html
    # the bundled ones still report through the same hooks
    assert any(r["measure"] == "mean CKA" for r in study["drift_table"]) and "kl" in study["distributions"]["other"]


def test_no_measurable_change_is_said_not_printed_as_zeros() -> None:
    """Issue 12: a model that did not move reads 'no measurable change', not '(0; ... 0, ... 0)'."""
    from driftkit import registry

    pca = registry.load("analysis", "pca_shift")()
    still = {"per_domain": {d: {"distance": 0.0} for d in ("math", "non", "other")}}
    moved = {"per_domain": {"math": {"distance": 0.5}, "non": {"distance": 0.1}, "other": {"distance": 0.2}}}
    text = pca.findings({"sft": moved, "rl": still})
    assert "rl: PCA shift: no measurable change on any domain." in text
    assert "sft: PCA shift is largest on math prompts (0.5; non-reasoning 0.1, other reasoning 0.2)." in text
    assert not any("(0;" in f for f in text)
    one = pca.findings({"sft": {"per_domain": {"other": {"distance": 5.661}}}})
    assert one[-1] == "sft: PCA shift on other reasoning prompts 5.66."  # was "largest on ... (5.66; )."
    cka = registry.load("analysis", "cka")()
    low = [0.99 if i in (0, 1, 8, 9, 10, 29) else 1.0 for i in range(30)]  # 30 layers: the lowest 6 are named
    drop = cka.findings({"sft": {"layers": [{"layer": i, "linear_cka": v} for i, v in enumerate(low)]}})
    assert drop[0].startswith("sft: lowest CKA to the base at layer(s) 0, 1, 8, 9, 10, 29 ")  # depth order
    same = {"layers": [{"layer": i, "linear_cka": 1.0} for i in range(4)]}
    assert cka.findings({"rl": same}) == ["rl: linear CKA to the base is 1 at every layer (no measurable change)."]


def test_expectations_and_pairs_are_checked_on_every_headline_measure() -> None:
    from driftkit.report.study_findings import expectation_findings

    measures = {
        "a": {"PCA shift": 2.0, "KL": 0.3, "shifted tokens": 0.1},
        "b": {"PCA shift": 1.0, "KL": 0.1, "shifted tokens": 0.2},
    }
    data = {"drift_measures": measures, "expect": ["a > b"], "expect_why": "The paper's pattern"}
    label = {"a": "a", "b": "b"}
    assert expectation_findings(data, label) == [
        "The paper's pattern (a drifts more than b) holds for PCA shift, KL only in this run (2/3 measures)."
    ]
    data = {"drift_measures": measures, "expect": []}
    assert expectation_findings(data, label) == ["a drifts more than b on 2 of 3 drift measures (PCA shift, KL)."]


def test_experiment_checks_measures_and_expectations() -> None:
    from driftkit.errors import DriftkitError
    from driftkit.pipeline.experiment import from_dict

    base = {"experiment": {"base": "x"}, "models": [{"name": "m1", "path": "p"}, {"name": "m2", "path": "q"}]}
    assert from_dict({**base, "study": {"expect": ["m1 > m2"]}}).study["expect"] == ["m1 > m2"]
    with pytest.raises(DriftkitError, match="expect 'm1 > zz' must read 'A > B'"):
        from_dict({**base, "study": {"expect": ["m1 > zz"]}})
    train = {"train": [{"name": "t", "trainer": "sft", "data": "d", "options": {"save_steps": 2}}]}
    with pytest.raises(DriftkitError, match="measures: x = 'nope.key'"):
        from_dict({**base, **train, "drift": {"measures": {"x": "nope.key"}, "headline": "x"}})


def test_umap_is_a_plugin_that_streams_through_compare(tiny_capture_pair) -> None:
    from driftkit import registry
    from driftkit.comparing import compare
    from driftkit.comparing.runner import resolve_analyses
    from driftkit.testing import check_plugin

    cls = registry.load("analysis", "umap")
    check_plugin(cls)
    defaults, _ = resolve_analyses(None, {})
    assert "umap" not in {a.name for a in defaults}  # not on a plain compare
    rep = compare(list(tiny_capture_pair), analyses=["umap"], positions="all").to_dict()
    res = rep["analyses"]["umap"]
    assert res["summary"]["n_samples"] == 6 and len(res["points"]) == 12
    assert {p["side"] for p in res["points"]} == {"a", "b"} and res["layer"] == 2
    again = compare(list(tiny_capture_pair), analyses=["umap"], positions="all").to_dict()["analyses"]["umap"]
    assert again["points"] == res["points"]  # seeded: the same picture twice
    assert cls().figures({"tuned": res})[0].svg.startswith("<svg")
    # response positions: one sample per model has a response, too few to embed: a clear refusal
    from driftkit.errors import DriftkitError

    with pytest.raises(DriftkitError, match="needs at least 6 pooled samples"):
        compare(list(tiny_capture_pair), analyses=["umap"], positions="response")
