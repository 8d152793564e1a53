"""Importing lm-evaluation-harness output (results_*.json + samples_*.jsonl) as driftkit scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftkit.plugins.benchmarks.lm_eval_import import import_lm_eval
from driftkit.scores import read_items, read_scores


def _acp(task: str, v: float, se: float) -> dict:
    return {"alias": f" - {task}", "exact_match,none": v, "exact_match_stderr,none": se}


def write_lm_eval_run(root: Path, model: str = "Qwen/Qwen3-14B-Base") -> Path:
    """An lm-eval 0.4-style output folder: <output_path>/<model_sanitized>/results_<ts>.json + samples."""
    d = root / model.replace("/", "__")
    d.mkdir(parents=True)
    ts = "2025-07-01T10-00-00.000000"
    results = {
        "results": {
            "minerva_math500": {
                "alias": "minerva_math500",
                "exact_match,none": 0.604,
                "exact_match_stderr,none": 0.0219,
                "math_verify,none": 0.62,
                "math_verify_stderr,none": 0.0217,
            },
            "gpqa_diamond_cot_zeroshot": {
                "alias": "gpqa_diamond_cot_zeroshot",
                "exact_match,strict-match": 0.30,
                "exact_match_stderr,strict-match": 0.0326,
                "exact_match,flexible-extract": 0.40,
                "exact_match_stderr,flexible-extract": 0.0349,
            },
            "acp_bench": {"alias": "acp_bench", "exact_match,none": 0.55, "exact_match_stderr,none": "N/A"},
            "acp_app_bool": _acp("acp_app_bool", 0.50, 0.04),
            "acp_app_mcq": _acp("acp_app_mcq", 0.70, 0.04),
            "acp_val_bool": _acp("acp_val_bool", 0.60, 0.05),
            "ifeval": {
                "alias": "ifeval",
                "prompt_level_strict_acc,none": 0.70,
                "prompt_level_strict_acc_stderr,none": 0.0197,
                "inst_level_strict_acc,none": 0.78,
                "inst_level_strict_acc_stderr,none": "N/A",
                "prompt_level_loose_acc,none": 0.74,
                "prompt_level_loose_acc_stderr,none": 0.0189,
                "inst_level_loose_acc,none": 0.81,
                "inst_level_loose_acc_stderr,none": "N/A",
            },
            "hellaswag": {"alias": "hellaswag", "acc,none": 0.5, "acc_stderr,none": 0.005},
        },
        "groups": {"acp_bench": {"alias": "acp_bench", "exact_match,none": 0.55}},
        "group_subtasks": {
            "acp_bench": ["acp_app_bool", "acp_app_mcq", "acp_val_bool"],
            "minerva_math500": [],
            "ifeval": [],
        },
        "configs": {},
        "versions": {
            "minerva_math500": 1.0,
            "gpqa_diamond_cot_zeroshot": 1.0,
            "acp_app_bool": 1.0,
            "acp_app_mcq": 1.0,
            "acp_val_bool": 1.0,
            "ifeval": 4.0,
            "hellaswag": 1.0,
        },
        "n-shot": {
            "minerva_math500": 0,
            "gpqa_diamond_cot_zeroshot": 0,
            "acp_app_bool": 2,
            "acp_app_mcq": 2,
            "acp_val_bool": 2,
            "ifeval": 0,
            "hellaswag": 0,
        },
        "n-samples": {
            "minerva_math500": {"original": 500, "effective": 500},
            "gpqa_diamond_cot_zeroshot": {"original": 198, "effective": 198},
            "acp_app_bool": {"original": 130, "effective": 130},
            "acp_app_mcq": {"original": 130, "effective": 130},
            "acp_val_bool": {"original": 130, "effective": 130},
            "ifeval": {"original": 541, "effective": 541},
            "hellaswag": {"original": 10042, "effective": 10042},
        },
        "config": {
            "model": "hf",
            "model_args": f"pretrained={model},dtype=bfloat16",
            "batch_size": "auto",
            "limit": None,
            "gen_kwargs": None,
        },
        "model_name": model,
        "lm_eval_version": "0.4.8",
        "fewshot_as_multiturn": False,
        "chat_template": None,
    }
    (d / f"results_{ts}.json").write_text(json.dumps(results))
    with open(d / f"samples_ifeval_{ts}.jsonl", "w") as fh:
        for i in range(3):
            fh.write(
                json.dumps(
                    {
                        "doc_id": i,
                        "doc": {"key": i},
                        "target": 0,
                        "arguments": {},
                        "resps": [["resp"]],
                        "filtered_resps": ["resp"],
                        "filter": "none",
                        "metrics": ["prompt_level_strict_acc", "inst_level_strict_acc"],
                        "prompt_level_strict_acc": i % 2 == 0,
                        "inst_level_strict_acc": [True],
                    }
                )
                + "\n"
            )
    return root


def test_import_maps_tasks_metrics_and_macro_averages(tmp_path: Path):
    root = write_lm_eval_run(tmp_path / "out")
    model, scores, prov, items, unmapped = import_lm_eval(root)
    assert model == "Qwen/Qwen3-14B-Base"
    by = {(s["benchmark"], s["metric"]): s for s in scores}
    m = by[("math500", "accuracy")]
    assert (
        m["value"] == pytest.approx(60.4)
        and m["stderr"] == pytest.approx(2.19)
        and m["n"] == 500
        and m["domain"] == "math"
        and m["primary"]
    )
    assert by[("math500", "math_verify")]["value"] == pytest.approx(62.0) and not by[("math500", "math_verify")].get(
        "primary"
    )
    g = by[("gpqa", "accuracy")]
    assert g["value"] == pytest.approx(40.0) and g["primary"] and g["domain"] == "other"  # flexible-extract is primary
    assert by[("gpqa", "accuracy_strict")]["value"] == pytest.approx(30.0)
    acp = by[("acpbench", "accuracy")]  # macro average of the subtasks; the group row is not counted again
    assert acp["value"] == pytest.approx(100 * (0.5 + 0.7 + 0.6) / 3)
    assert acp["stderr"] == pytest.approx(100 * math.sqrt(0.04**2 + 0.04**2 + 0.05**2) / 3)
    assert acp["n"] == 390
    assert by[("ifeval", "prompt_level_strict_acc")]["primary"] and by[("ifeval", "inst_level_loose_acc")][
        "value"
    ] == pytest.approx(81.0)
    assert by[("ifeval", "inst_level_strict_acc")]["stderr"] is None
    assert unmapped == ["hellaswag"]
    assert prov["benchmarks"]["acpbench"]["tasks"] == ["acp_app_bool", "acp_app_mcq", "acp_val_bool"]
    assert prov["benchmarks"]["acpbench"]["n_shot"]["acp_app_bool"] == 2
    assert len(items) == 3 and items[0]["benchmark"] == "ifeval" and items[0]["id"] == "ifeval/0"


def test_user_mapping_extends_and_overrides(tmp_path: Path):
    root = write_lm_eval_run(tmp_path / "out")
    user = tmp_path / "map.toml"
    user.write_text(
        '[[rule]]\ntask = "hellaswag"\nmetric = "acc"\nbenchmark = "hellaswag"\ndomain = "non"\nprimary = true\n'
    )
    _, scores, _, _, unmapped = import_lm_eval(root, user_map=user)
    hs = [s for s in scores if s["benchmark"] == "hellaswag"]
    assert hs and hs[0]["value"] == pytest.approx(50.0) and hs[0]["metric"] == "accuracy" and unmapped == []


def test_cli_import_writes_score_file(tmp_path: Path):
    from driftkit.cli.main import app

    root = write_lm_eval_run(tmp_path / "out")
    out = tmp_path / "scores" / "sft.json"
    r = CliRunner().invoke(app, ["bench", "--import-lm-eval", str(root), "--model", "ckpt/sft", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = read_scores(out)
    assert doc["model"] == "ckpt/sft" and doc["provenance"]["settings"]["source"] == "lm-eval"
    assert len(read_items(out)) == 3
    assert "hellaswag" in " ".join(r.output.split())  # the skipped task is named


def test_cli_import_refusals(tmp_path: Path):
    from driftkit.cli.main import app

    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["bench", "--import-lm-eval", str(empty), "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "No results_*.json" in " ".join(r.output.split())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results_1.json").write_text(json.dumps({"results": {"hellaswag": {"acc,none": 0.5}}}))
    r = CliRunner().invoke(app, ["bench", "--import-lm-eval", str(bad), "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "--lm-eval-map" in " ".join(r.output.split())
    assert not (tmp_path / "x.json").exists()
    badmap = tmp_path / "m.toml"
    badmap.write_text("[[rule]]\ntask = 'x'\n")
    root = write_lm_eval_run(tmp_path / "o2")
    r = CliRunner().invoke(
        app, ["bench", "--import-lm-eval", str(root), "--lm-eval-map", str(badmap), "--out", str(tmp_path / "x.json")]
    )
    assert r.exit_code == 1 and "lacks metric" in " ".join(r.output.split())
