"""The whole pipeline (`driftkit demo --quick`) on a tiny model: artifacts, hashes, caching,
dependency-aware reruns, kill + resume, and the HTML report in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from driftkit.pipeline.demo import demo_config, demo_experiment
from driftkit.pipeline.experiment import from_dict
from driftkit.pipeline.manifest import Manifest
from driftkit.pipeline.runner import plan, run_experiment, step_hash

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    ex = demo_experiment(out, quick=True)
    result = run_experiment(ex, log=lambda m: None)
    return ex, result


def test_every_artifact_exists_and_manifest_hashes_match(quick_run) -> None:
    ex, result = quick_run
    steps = plan(ex)
    assert result.executed == [s.id for s in steps]  # a cold run does every step, in plan order
    man = Manifest(ex.out / "manifest.json")
    for s in steps:
        entry = man.step(s.id)
        assert entry["status"] == "done" and entry["executions"] == 1, s.id
        assert entry["hash"] == step_hash(s, man), s.id  # recorded hash = hash of settings + dependencies
        for rel in entry["outputs"].values():
            assert (ex.out / rel).exists(), (s.id, rel)
    for rel in (
        "report/study.html",
        "report/study.json",
        "transfer.json",
        "scores/base.json",
        "scores/sft.json",
        "scores/rl.json",
        "captures/base.raw.h5",
        "captures/sft.gen.h5",
        "captures/base_on_rl.h5",
        "reports/raw.json",
        "reports/gen_sft.json",
        "drift/sft.json",
        "train/sft/driftkit_run.json",
    ):
        assert (ex.out / rel).exists(), rel
    study = json.loads(result.report_json.read_text())
    assert study["models"] == ["base", "sft", "rl"]
    assert set(study["representations"]) == {"sft", "rl"} and set(study["distributions"]) == {"sft", "rl"}
    assert study["findings"] and all(isinstance(f, str) and f for f in study["findings"])
    pts = study["drift"]["sft"]
    assert [p["step"] for p in pts] == sorted(p["step"] for p in pts) and pts[0]["step"] == 0 and len(pts) >= 3
    html = result.report_html.read_text()
    assert html.count("<svg") >= 4 and "Findings" in html


def test_findings_are_computed_from_the_numbers(quick_run) -> None:
    """Each KL sentence quotes the measured KL of its model: no canned text."""
    ex, result = quick_run
    study = json.loads(result.report_json.read_text())
    for n in ("sft", "rl"):
        kl = study["distributions"][n]["kl"]["kl_forward"]
        assert any(f.startswith(f"{n}") and f"{kl:.3f} nats" in f for f in study["findings"]), (
            n,
            kl,
            study["findings"],
        )


def test_rerun_does_no_work(quick_run) -> None:
    ex, _ = quick_run
    again = run_experiment(demo_experiment(ex.out, quick=True), log=lambda m: None)
    assert again.executed == []
    assert len(again.skipped) == len(plan(ex))
    man = Manifest(ex.out / "manifest.json")
    assert all(e["executions"] == 1 for e in man.data["steps"].values())


def test_changing_one_setting_reruns_only_its_dependants(quick_run, tmp_path: Path) -> None:
    ex, _ = quick_run
    out = tmp_path / "copy"
    shutil.copytree(ex.out, out)
    cfg = demo_config(out, quick=True)
    cfg["transfer"] = {"sigma": "per-model"}
    r1 = run_experiment(from_dict(cfg), log=lambda m: None)
    assert r1.executed == ["transfer", "report"]
    cfg["capture"]["chat_limit"] = 6
    r2 = run_experiment(from_dict(cfg), log=lambda m: None)
    assert set(r2.executed) == {
        "capture.gen.sft",
        "capture.base_on.sft",
        "capture.gen.rl",
        "capture.base_on.rl",
        "compare.gen.sft",
        "compare.gen.rl",
        "drift.sft",
        "drift.rl",
        "report",
    }


KILL = """
import os, sys
from driftkit.pipeline.experiment import from_dict
from driftkit.pipeline.runner import run_experiment
import json
cfg = json.loads(open(sys.argv[1]).read())
kill = len(sys.argv) > 2
def progress(phase, done, total):
    # die in the middle of the second model's generation capture, mid-batch
    caps = cfg["experiment"]["out"] + "/captures/"
    mid_second = os.path.exists(caps + "rl.gen.h5") and not os.path.exists(caps + "base_on_rl.h5")
    if kill and phase == "capture" and done > 0 and mid_second:
        os.kill(os.getpid(), 9)
run_experiment(from_dict(cfg), resume=not kill, log=lambda m: None, progress=progress)
"""


def test_kill_midway_then_resume_gives_the_same_numbers(quick_run, tmp_path: Path) -> None:
    ex, _ = quick_run

    def cfg_for(out: Path) -> dict:
        return {
            "experiment": {"name": "resume", "base": str(ex.out / "tiny-base"), "out": str(out), "seed": 0},
            "models": [
                {"name": "sft", "path": str(ex.out / "train/sft")},
                {"name": "rl", "path": str(ex.out / "train/rl")},
            ],
            "bench": {"enabled": False},
            "capture": {"chat_limit": 9, "max_new_tokens": 8, "max_batch_tokens": 64},
            "drift": {"enabled": False},
        }

    script = tmp_path / "k.py"
    script.write_text(KILL)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = tmp_path / "killed"
    cf = tmp_path / "killed.json"
    cf.write_text(json.dumps(cfg_for(killed)))
    p = subprocess.run([sys.executable, str(script), str(cf), "kill"], env=env, capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-3000:]
    man = Manifest(killed / "manifest.json")
    assert man.step("capture.gen.sft")["status"] == "done" and man.step("capture.gen.rl")["status"] == "running"
    p = subprocess.run([sys.executable, str(script), str(cf)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    whole = run_experiment(from_dict(cfg_for(tmp_path / "whole")), log=lambda m: None)
    a = json.loads((killed / "report/study.json").read_text())
    b = json.loads(whole.report_json.read_text())
    for key in ("representations", "distributions", "findings"):
        assert a[key] == b[key], key


def test_html_report_renders_in_headless_chromium(quick_run, tmp_path: Path) -> None:
    ex, result = quick_run
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        pytest.skip(
            "Chromium is not installed (apt-get install chromium); the HTML report was checked structurally above"
        )
    shot = tmp_path / "report.png"
    p = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,3000",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            result.report_html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page with figures, not a blank one
    console_errors = [
        line for line in p.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "error" in line)
    ]
    assert not console_errors, console_errors


def test_example_experiment_file_parses_and_plans() -> None:
    from driftkit.pipeline.experiment import load_experiment

    ex = load_experiment(Path(__file__).resolve().parents[1] / "examples" / "experiment.toml")
    assert ex.tuned_names == ["sft", "rl"] and ex.bench["suite"] == "quick"


def test_missing_experiment_file_points_to_the_example_that_exists(tmp_path: Path) -> None:
    """The message names examples/experiment.toml, where the example lives (issue 12), and that file exists."""
    from driftkit.errors import DriftkitError
    from driftkit.pipeline.experiment import load_experiment

    with pytest.raises(DriftkitError, match="examples/experiment.toml") as exc:
        load_experiment(tmp_path / "missing.toml")
    assert "missing.toml does not exist" in str(exc.value)
    assert (Path(__file__).resolve().parents[1] / "examples" / "experiment.toml").is_file()


def test_bad_experiment_files_are_clear_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from driftkit.cli.main import app

    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nbase = "x"\n[capture]\nprompt = "bundled:math"\n')
    r = CliRunner().invoke(app, ["run", str(bad)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "[capture]: unknown key 'prompt' (did you mean 'prompts'?)" in text
    bad.write_text("[experiment\n")
    r = CliRunner().invoke(app, ["run", str(bad)])
    assert r.exit_code == 1 and "not valid TOML" in r.output
    bad.write_text('[experiment]\nbase = "x"\n')
    r = CliRunner().invoke(app, ["run", str(bad)])
    assert r.exit_code == 1 and "nothing to compare" in " ".join(r.output.split())


def test_run_lists_every_problem_before_starting(tmp_path: Path) -> None:
    """Unknown keys in every section (with did-you-mean), wrong types and missing keys, all in one message."""
    from typer.testing import CliRunner

    from driftkit.cli.main import app

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[experiment]\nbase = "x"\nnmae = "typo"\nseed = "abc"\n\n[[train]]\nname = "sft"\ntrainer = "sft"\n'
        'dataa = "bundled:math-train"\n\n[[models]]\nname = "t"\npath = "y"\ncolour = 1\n\n[bench]\n'
        'benchmarks = ["math500"]\nlimt = 3\n\n[capture]\nmax_new_tokens = "64"\n\n[drifft]\n'
    )
    r = CliRunner().invoke(app, ["run", str(bad)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1, text
    for part in (
        "[experiment]: unknown key 'nmae' (did you mean 'name'?)",
        "[experiment]: 'seed' must be an integer, got 'abc'",
        "[[train]] entry 1: unknown key 'dataa' (did you mean 'data'?)",
        "[[train]] entry 1: 'data' is required",
        "[[models]] entry 1: unknown key 'colour'",
        "[bench]: unknown key 'limt' (did you mean 'limit'?)",
        "[capture]: 'max_new_tokens' must be an integer",
        "unknown section [drifft] (did you mean 'drift'?)",
        "8 problem(s)",
    ):
        assert part in text, (part, text)
    assert "key 'benchmarks'" not in text  # [bench] benchmarks = [...] is accepted, as docs/pipeline.md says


def test_documented_experiment_files_pass_the_validator() -> None:
    """examples/experiment.toml, the TOML in the experiment module's docstring, and the key lists of
    docs/pipeline.md use only accepted keys (and the docs name every accepted key)."""
    import re

    import tomllib

    import driftkit.pipeline.experiment as E

    root = Path(__file__).resolve().parents[1]
    assert E.validate_dict(tomllib.loads((root / "examples" / "experiment.toml").read_text())) == []
    block = re.search(r"```toml\n(.*?)```", E.__doc__, re.S)
    assert block and E.validate_dict(tomllib.loads(block.group(1))) == []
    doc = " ".join((root / "docs" / "pipeline.md").read_text().split())
    listed = dict(re.findall(r"`\[{1,2}(\w+)\]{1,2}` \(([^)]*)\)", doc))
    assert set(listed) == set(E.SECTIONS), listed
    for sec, keys in listed.items():
        named = set(re.findall(r"\w+", keys)) - {"or"}
        assert named == set(E.SCHEMA[sec]), (sec, named ^ set(E.SCHEMA[sec]))


def test_revisions_reach_every_model_load(tiny_model: Path, tiny_tuned: Path, tmp_path: Path) -> None:
    """[experiment].revision and [[models]].revision are used (and hashed), not just accepted."""
    from types import SimpleNamespace

    from driftkit.pipeline.runner import _model_identity, model_revision

    ex = from_dict(
        {
            "experiment": {"name": "r", "base": str(tiny_model), "out": str(tmp_path), "revision": "v1"},
            "models": [{"name": "other", "path": str(tiny_tuned), "revision": "abc123"}],
        }
    )
    ctx = SimpleNamespace(ex=ex)
    assert (model_revision(ctx, "base"), model_revision(ctx, "other")) == ("v1", "abc123")
    assert _model_identity(str(tiny_model), "v1") != _model_identity(str(tiny_model))


def test_run_overrides_and_device_checks(tiny_model: Path, tmp_path: Path) -> None:
    """run --device/--dtype/--revision/--seed override [experiment]; an absent device fails before any step."""
    from typer.testing import CliRunner

    from driftkit.cli.main import app
    from driftkit.parsing import loads_toml

    toml = tmp_path / "e.toml"
    toml.write_text(
        f'[experiment]\nname = "d"\nbase = "{tiny_model}"\nout = "{tmp_path / "out"}"\ndtype = "float32"\n'
        f'[[models]]\nname = "other"\npath = "{tiny_model}"\n'
    )
    ex = from_dict(loads_toml(toml.read_text(), str(toml)))
    assert (ex.device, ex.dtype) == ("auto", "float32")
    r = CliRunner().invoke(app, ["run", str(toml), "--device", "cuda:7"])
    assert r.exit_code == 1 and "cuda" in r.output.lower()
    assert not (tmp_path / "out").exists()
