"""``driftkit compare``: report contents (JSON keys, HTML, pandas, terminal), several captures,
third-party analyses, and every comparability error (exit 1, a clear message, no output file)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import driftkit
from driftkit.cli.main import app

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, ["compare", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def caps(tiny_capture_pair):
    return tiny_capture_pair


def _copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copy(src, dst)
    if edit is not None:
        with h5py.File(dst, "r+") as f:
            edit(f)
    return dst


def test_json_report_keys(caps, tmp_path: Path) -> None:
    a, b = caps
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    r = run(a, b, "--json", out, "--html", html)
    assert r.exit_code == 0, r.output
    body = json.loads(out.read_text())
    assert body["schema"] == "driftkit.report/1"
    assert {"captures", "n_samples", "n_tokens", "analyses"} <= set(body)
    assert [c["label"] for c in body["captures"]] == ["base", "tuned"] and body["captures"][0]["weights_sha256"]
    an = body["analyses"]
    assert set(an) == {"cka", "similarity", "kl", "token_rank", "pca_shift", "token_view", "logit_lens"}
    assert all({"layer", "linear_cka", "debiased_cka"} <= set(e) for e in an["cka"]["layers"])
    assert set(an["kl"]["summary"]) >= {"kl_forward", "kl_reverse", "js", "sampled_logratio"}
    assert set(an["kl"]["per_domain"]) == {"math", "other", "non"}
    assert all(
        set(v) >= {"kl_forward", "kl_reverse", "js", "sampled_logratio"} for v in an["kl"]["per_domain"].values()
    )
    assert set(an["token_rank"]["summary"]) >= {"unshifted", "marginal", "shifted", "rank_shift"}
    fr = an["token_rank"]["summary"]
    assert fr["unshifted"] + fr["marginal"] + fr["shifted"] == pytest.approx(1.0)
    assert all("distance" in v for v in an["pca_shift"]["per_domain"].values())
    assert isinstance(an["pca_shift"]["layers"], list) and an["pca_shift"]["layers"]
    # the terminal report names every analysis; the HTML is one self-contained file with figures
    for title in ("CKA", "KL", "URIAL", "PCA shift"):
        assert title in r.output
    text = html.read_text()
    assert text.count("<svg") >= 5
    assert not re.search(r'(src|href)="https?:', text) and "<link" not in text  # nothing fetched from outside


def test_python_api_frame_show_roundtrip(caps, tmp_path: Path) -> None:
    a, b = caps
    rep = driftkit.compare([a, b], analyses=["cka", "kl"])
    df = rep.to_frame()
    assert list(df.columns) == ["a", "b", "analysis", "scope", "item", "metric", "value"]
    row = df[(df.analysis == "kl") & (df.scope == "summary") & (df.metric == "kl_forward")]
    assert row.value.item() == pytest.approx(rep.to_dict()["analyses"]["kl"]["summary"]["kl_forward"])
    assert set(df[df.analysis == "cka"].scope) == {"layer", "summary"}
    con = Console(record=True, width=100)
    rep.show(con)
    shown = con.export_text()
    assert "biggest movers" in shown and "KL(B‖A)" in shown
    text = rep.to_json(tmp_path / "r.json")
    again = driftkit.Report.from_json(tmp_path / "r.json")
    assert again.to_dict() == rep.to_dict() == driftkit.Report.from_json(text).to_dict()
    assert "<svg" in again.to_html()


def test_three_captures_pairs_and_side_by_side(caps, tmp_path: Path) -> None:
    a, b = caps
    c = _copy(b, tmp_path / "rl.h5")
    out = tmp_path / "r3.json"
    r = run(a, b, c, "--analyses", "kl,cka", "--json", out)
    assert r.exit_code == 0, r.output
    body = json.loads(out.read_text())
    assert [p["b"] for p in body["pairs"]] == ["tuned", "rl"]
    assert body["pairs"][0]["analyses"]["kl"] == body["pairs"][1]["analyses"]["kl"]
    assert set(body["analyses"]["kl"]) == {"tuned", "rl"}
    assert body["analyses"]["kl"]["rl"]["kl_forward"] == body["pairs"][1]["analyses"]["kl"]["summary"]["kl_forward"]
    assert "side by side" in r.output


def test_json_to_stdout(caps) -> None:
    a, b = caps
    r = run(a, b, "--analyses", "token_rank", "--json", "-")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)["analyses"]) == {"token_rank"}


THIRD_PARTY = """
import torch
from driftkit import Analysis

class HiddenMSE(Analysis):
    name = "hidden_mse"
    title = "mean squared difference of final hidden states"
    options = {"scale": 1.0}

    def requirements(self, pair):
        return ["final/hidden"]

    def run(self, pair):
        total, n = 0.0, 0
        for idx, xa, xb in pair.iter_pair("final/hidden", pair.mask("states")):
            total += float(((xa - xb) ** 2).sum())
            n += xa.shape[0]
        return {"summary": {"mse": self.opts["scale"] * total / n, "n": n}}
"""


def test_third_party_analysis_from_file(caps, tmp_path: Path) -> None:
    a, b = caps
    f = tmp_path / "my_metric.py"
    f.write_text(THIRD_PARTY)
    out = tmp_path / "r.json"
    r = run(
        a,
        b,
        "--analyses",
        "kl",
        "--analysis",
        f"{f}:HiddenMSE",
        "--opt",
        "hidden_mse.scale=2",
        "--positions",
        "all",
        "--json",
        out,
    )
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())["analyses"]
    assert set(res) == {"kl", "hidden_mse"}
    with h5py.File(a) as fa, h5py.File(b) as fb:
        ref = 2 * float(((fa["final/hidden"][()].astype(np.float64) - fb["final/hidden"][()]) ** 2).sum(1).mean())
    assert res["hidden_mse"]["summary"]["mse"] == pytest.approx(ref, rel=1e-5)


def test_file_analysis_selectable_by_name(caps, tmp_path: Path, monkeypatch) -> None:
    """--analysis FILE:Class registers the class's name for --analyses (it runs once, in that order)."""
    a, b = caps
    f = tmp_path / "by_name.py"
    f.write_text(THIRD_PARTY.replace('"hidden_mse"', '"hidden_mse_by_name"'))
    out = tmp_path / "r.json"
    monkeypatch.chdir(tmp_path)  # a path relative to the current folder
    r = run(
        a,
        b,
        "--analysis",
        "by_name.py:HiddenMSE",
        "--analyses",
        "kl,hidden_mse_by_name",
        "--positions",
        "all",
        "--json",
        out,
    )
    assert r.exit_code == 0, r.output
    assert list(json.loads(out.read_text())["analyses"]) == ["kl", "hidden_mse_by_name"]


def test_module_analysis(caps, tmp_path: Path, monkeypatch) -> None:
    """package.module:Class is accepted wherever a file is (here an importable module on sys.path)."""
    a, b = caps
    (tmp_path / "my_metrics_mod.py").write_text(THIRD_PARTY.replace('"hidden_mse"', '"hidden_mse_mod"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r.json"
    r = run(a, b, "--analyses", "my_metrics_mod:HiddenMSE", "--positions", "all", "--json", out)
    assert r.exit_code == 0, r.output
    assert set(json.loads(out.read_text())["analyses"]) == {"hidden_mse_mod"}
    r = run(a, b, "--analyses", "no_such_module_xyz:Thing", "--json", out)
    assert r.exit_code == 1 and "Cannot import the module 'no_such_module_xyz'" in r.output


# -- comparability and input errors: exit 1, one clear message, no report file -------------------
def _token_edit(f):
    ids = f["tokens/ids"][()]
    ids[f["samples/offsets"][2] + 1] = (ids[f["samples/offsets"][2] + 1] + 1) % 300
    f["tokens/ids"][...] = ids


def _tokenizer_edit(f):
    _token_edit(f)
    f.attrs["tokenizer_sha256"] = "0" * 64


def _order_edit(f):
    ids = f["samples/id"][()]
    f["samples/id"][...] = ids[::-1]


def _ids_edit(f):
    ids = f["samples/id"][()]
    ids[0] = b"zzz"
    f["samples/id"][...] = ids


def _incomplete_edit(f):
    f.attrs["complete"] = False
    done = f["samples/done"][()]
    done[-1] = False
    f["samples/done"][...] = done


@pytest.mark.parametrize(
    "edit, needle",
    [
        (_token_edit, "different token ids for sample 'o1'"),
        (_tokenizer_edit, "different tokenizers"),
        (_order_edit, "different order"),
        (_ids_edit, "hold different samples"),
        (_incomplete_edit, "--allow-incomplete"),
    ],
)
def test_comparability_errors(caps, tmp_path: Path, edit, needle: str) -> None:
    a, b = caps
    bad = _copy(b, tmp_path / "bad.h5", edit)
    out = tmp_path / "r.json"
    r = run(a, bad, "--json", out)
    assert r.exit_code == 1, r.output
    assert needle in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output and not out.exists()


def test_token_error_says_same_tokenizer(caps, tmp_path: Path) -> None:
    a, b = caps
    r = run(a, _copy(b, tmp_path / "bad.h5", _token_edit))
    assert "tokenizers are the same" in " ".join(r.output.split()) and "--tokens-from" in r.output


def test_allow_incomplete_uses_done_samples(caps, tmp_path: Path) -> None:
    a, b = caps
    part = _copy(b, tmp_path / "part.h5", _incomplete_edit)
    out = tmp_path / "r.json"
    r = run(a, part, "--allow-incomplete", "--analyses", "kl", "--json", out)
    assert r.exit_code == 0, r.output
    body = json.loads(out.read_text())
    with h5py.File(a) as f:
        n = len(f["samples/id"])
    assert body["n_samples"] == n - 1
    assert any("captured in both" in note for note in body["notes"])


def test_missing_sites_skipped_or_error(caps, tmp_path: Path) -> None:
    a, b = caps

    def drop(f):
        del f["sites/residual.3"]
        del f["final/hidden"]

    c = _copy(b, tmp_path / "c.h5", drop)
    out = tmp_path / "r.json"
    r = run(a, c, "--json", out)  # default analyses: skip what cannot run, say so
    assert r.exit_code == 0, r.output
    body = json.loads(out.read_text())
    assert "residual.3" in " ".join(body["notes"]) and "kl skipped" in " ".join(body["notes"])
    assert "kl" not in body["analyses"] and [e["layer"] for e in body["analyses"]["cka"]["layers"]] == [
        "embed",
        0,
        1,
        2,
    ]
    r = run(a, c, "--analyses", "kl", "--json", tmp_path / "r2.json")  # explicit: an error
    assert r.exit_code == 1 and "final/hidden" in r.output and not (tmp_path / "r2.json").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--positions", "middle"], "--positions must be one of"),
        (["--analyses", "nope"], "Unknown analysis 'nope'"),
        (["--opt", "cka.unit"], "e.g. --opt cka.unit=sample"),
        (["--opt", "cka.bogus=1"], "has no option 'bogus'"),
        (["--opt", "cka.unti=sample"], "did you mean 'unit'?"),
        (["--opt", "cka.unit=pooled"], "Option 'unit' of analysis 'cka' must be one of token, sample; got 'pooled'"),
        (["--opt", "kl.top=many"], "Option 'top' of analysis 'kl' takes an int (a whole number), got 'many'"),
        (["--domains", "poetry"], "--domains poetry not found"),
        (["--layers", "7"], "Unknown layer 7"),
        (["--analyses", "cka", "--layers", "1", "--max-tokens", "2"], "at least 4"),
    ],
)
def test_bad_options(caps, tmp_path: Path, args: list[str], needle: str) -> None:
    a, b = caps
    r = run(a, b, *args, "--json", tmp_path / "r.json")
    assert r.exit_code == 1, r.output
    assert needle in " ".join(r.output.split()), r.output
    assert not (tmp_path / "r.json").exists()


def test_missing_file_and_single_file(caps, tmp_path: Path) -> None:
    a, _ = caps
    r = run(a, tmp_path / "nope.h5")
    assert r.exit_code == 1 and "does not exist" in r.output
    r = run(a)
    assert r.exit_code == 1 and "at least two capture files" in r.output
