"""Issue 12's consistency items: messages spelled for the interface in use, --json PATH on every verb,
the same model options on every model-loading verb, train --help defaults, result frames, report text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from driftkit.cli.main import app
from driftkit.errors import DriftkitError, cli_interface, opt

runner = CliRunner()
VERBS = ("capture", "inspect", "plugins", "compare", "bench", "transfer", "train", "run", "demo")


def _scores(tmp: Path) -> tuple[Path, Path]:
    from driftkit.scores import write_scores

    dom = {"math500": "math", "gpqa": "other", "ifeval": "non"}

    def recs(vals: dict[str, float]) -> list[dict[str, Any]]:
        return [{"benchmark": b, "domain": dom[b], "metric": "accuracy", "value": v, "n": 10} for b, v in vals.items()]

    return (
        write_scores(tmp / "b.json", "base", recs({"math500": 30.0, "gpqa": 20.0, "ifeval": 50.0}), {}),
        write_scores(tmp / "m.json", "rl", recs({"math500": 40.0, "gpqa": 25.0, "ifeval": 49.0}), {}),
    )


# -- messages name the right interface ---------------------------------------------------------------
def test_opt_spells_parameter_or_flag() -> None:
    assert opt("overwrite") == "overwrite=True" and opt("layers", "every:4") == "layers='every:4'"
    with cli_interface():
        assert opt("overwrite") == "--overwrite" and opt("layers", "every:4") == "--layers every:4"
        assert opt("allow_incomplete") == "--allow-incomplete" and opt("sigma", None) == "--sigma"
    assert opt("overwrite") == "overwrite=True"  # reset after the block


def test_existing_output_message_per_interface(tiny_model: Path, tmp_path: Path) -> None:
    import driftkit

    out = tmp_path / "c.h5"
    cfg = dict(model=str(tiny_model), prompts="bundled:math", limit=2, layers="0", out=out)
    driftkit.capture(driftkit.CaptureConfig(**cfg))
    with pytest.raises(DriftkitError) as e:
        driftkit.capture(driftkit.CaptureConfig(**cfg))
    assert "overwrite=True" in str(e.value) and "--overwrite" not in str(e.value)
    r = runner.invoke(app, ["capture", str(tiny_model), "--prompts", "bundled:math", "--limit", "2", "--out", str(out)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "--overwrite" in text and "overwrite=True" not in text


def test_trainer_folder_message_names_the_parameter(tmp_path: Path) -> None:
    from driftkit.registry.run_folder import prepare_out

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("x")
    with pytest.raises(DriftkitError, match=r"overwrite=True"):
        prepare_out(tmp_path / "run", overwrite=False, resume=False)
    with pytest.raises(DriftkitError, match=r"sigma="):
        from driftkit.metrics.transfer import parse_sigma

        parse_sigma("nonsense")


# -- consistent options ------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_takes_json_path(verb: str) -> None:
    r = runner.invoke(app, [verb, "--help"], terminal_width=200)
    assert r.exit_code == 0 and "--json" in r.output and "PATH" in r.output, r.output


@pytest.mark.parametrize("verb", ("capture", "bench", "train"))
def test_model_verbs_share_model_options(verb: str) -> None:
    r = runner.invoke(app, [verb, "--help"], terminal_width=200)
    for flag in ("--device", "--dtype", "--revision", "--seed"):
        assert flag in r.output, (verb, flag)


def test_json_path_dash_and_bare(tmp_path: Path) -> None:
    b, m = _scores(tmp_path)
    out = tmp_path / "ti.json"
    r = runner.invoke(
        app, ["transfer", "--base", str(b), str(m), "--sigma", "math=5,other=5,non=5", "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["schema"] == "driftkit.transfer/1"
    for tail in (["--json", "-"], ["--json"]):  # '-' and a bare trailing --json: stdout, nothing else
        r = runner.invoke(app, ["transfer", "--base", str(b), str(m), "--sigma", "math=5,other=5,non=5", *tail])
        assert r.exit_code == 0 and json.loads(r.stdout)["models"]["rl"]["ti"]["other"] is not None
    r = runner.invoke(app, ["plugins", "cka", "--json", "--kind", "analysis"])  # bare --json before an option
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "cka"


def test_json_refuses_to_overwrite_a_non_json_file(tmp_path: Path) -> None:
    b, m = _scores(tmp_path)
    precious = tmp_path / "capture.h5"
    precious.write_bytes(b"HDF")
    r = runner.invoke(
        app, ["transfer", "--base", str(b), str(m), "--sigma", "math=5,other=5,non=5", "--json", str(precious)]
    )
    assert r.exit_code == 1 and "not .json" in r.output and precious.read_bytes() == b"HDF"


def test_train_help_shows_defaults_from_trainer_options() -> None:
    r = runner.invoke(app, ["train", "--help"], terminal_width=250)
    text = " ".join(r.output.split())
    assert "[default: 100]" in text  # steps, shared by sft and rl
    assert "[sft 2e-05, rl 1e-06]" in text  # learning rate differs per trainer
    assert "--device" in text and "--revision" in text


def test_train_reports_phases_before_step_one(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from driftkit.cli.train import _Progress
    from driftkit.plugins.trainers.common import report_phase

    p = _Progress("train sft")
    report_phase(SimpleNamespace(progress=p), "loading model smollm2-135m")
    report_phase(SimpleNamespace(progress=None), "ignored without a display")
    assert "train sft: loading model smollm2-135m" in " ".join(capsys.readouterr().err.split())


# -- result objects ----------------------------------------------------------------------------------
def test_scores_and_transfer_frames_keep_dict_access(tmp_path: Path) -> None:
    import driftkit

    b, m = _scores(tmp_path)
    s = driftkit.read_scores(b)
    assert s["model"] == "base" and isinstance(s, dict)
    df = s.to_frame()
    assert list(df.columns) == ["model", "benchmark", "domain", "metric", "value", "n", "stderr", "primary"]
    assert df.set_index("benchmark").loc["math500", "value"] == 30.0 and df.primary.all()
    assert json.loads(s.to_json())["schema"] == "driftkit.scores/1"
    ti = driftkit.transferability(b, [m], sigma="math=5,other=5,non=5")
    f = ti.to_frame()
    di = f[(f.model == "rl") & (f.scope == "group") & (f.metric == "di")].set_index("item")["value"]
    assert di["math"] == pytest.approx(ti["models"]["rl"]["di"]["math"])
    assert f[(f.model == "base") & (f.metric == "score")].shape[0] == 3
    assert json.loads(ti.to_json()) == json.loads(json.dumps(ti))


def test_capture_reader_frame(tiny_capture_pair: tuple[Path, Path]) -> None:
    import driftkit

    with driftkit.CaptureReader(tiny_capture_pair[0]) as r:
        df = r.to_frame()
        assert len(df) == r.n_samples and (df.stop - df.start == df.n_tokens).all()
        assert (df.prompt_len + df.response_len == df.n_tokens).all()
        d = json.loads(r.to_json())
    assert d["n_tokens"] == int(df.n_tokens.sum()) and "final/hidden" in d["arrays"]


# -- report text -------------------------------------------------------------------------------------
def test_cka_movers_tell_near_identical_layers_apart() -> None:
    from rich.console import Console

    from driftkit.plugins.analyses.cka import CKAAnalysis

    layers = [{"layer": i, "linear_cka": 1 - g, "debiased_cka": 1 - g} for i, g in enumerate((2e-5, 3e-4, 7e-6))]
    res = {
        "layers": layers,
        "summary": {"mean_debiased_cka": 0.9999, "min_debiased_cka": 1 - 3e-4, "min_layer": 1},
        "n": 10,
        "unit": "token",
    }
    con = Console(record=True, width=200)
    con.print(CKAAnalysis().render(res))
    text = con.export_text()
    assert "1: 0.0003" in text and "0: 2e-05" in text and "2: 7e-06" in text


def test_transfer_title_names_the_base_once(tmp_path: Path) -> None:
    b, m = _scores(tmp_path)
    r = runner.invoke(
        app, ["transfer", "--base", str(b), str(m), "--sigma", "math=5,other=5,non=5"], terminal_width=200
    )
    assert r.exit_code == 0 and "vs base base" not in r.output and "vs the base" in r.output
