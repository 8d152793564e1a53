"""The transferability index against hand computations, and the refusals of `driftkit transfer`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftkit.errors import DriftkitError
from driftkit.metrics.transfer import parse_sigma, transferability
from driftkit.scores import read_scores, transfer, write_scores

BASE = {"m1": 40.0, "m2": 60.0, "o1": 50.0, "o2": 30.0, "n1": 70.0, "n2": 80.0}
A = {"m1": 50.0, "m2": 64.0, "o1": 53.0, "o2": 35.0, "n1": 68.0, "n2": 80.0}
B = {"m1": 45.0, "m2": 70.0, "o1": 44.0, "o2": 28.0, "n1": 75.0, "n2": 77.0}
DOM = {"m1": "math", "m2": "math", "o1": "other", "o2": "other", "n1": "non", "n2": "non"}
GROUPS = {"math": ["m1", "m2"], "other": ["o1", "o2"], "non": ["n1", "n2"]}


def _reference(base, model, sigma):
    """The paper's formula written out independently: loops and the statistics module."""
    di = {}
    for g, bs in GROUPS.items():
        total_head = sum(100 - base[b] for b in bs)
        acc = 0.0
        for b in bs:
            z = (model[b] - base[b]) / sigma[g]
            acc += (100 - base[b]) / total_head * math.copysign(math.sqrt(abs(z)), z)
        di[g] = acc
    return di, {g: 100 * di[g] / di["math"] for g in ("other", "non")}


def test_ti_per_model_hand_computed():
    # model A, by hand: math deltas (10, 4), sigma 3 -> s = (1.8257, 1.1547), w = (.6, .4), DI_math = 1.55733
    # other deltas (3, 5), sigma 1 -> s = (1.7321, 2.2361), w = (5/12, 7/12), DI_other = 2.02606
    # non deltas (-2, 0), sigma 1 -> s = (-1.4142, 0), w = (.6, .4), DI_non = -0.84853
    res = transferability(BASE, {"A": A}, DOM, sigma="per-model")
    m = res["models"]["A"]
    assert m["sigma"] == pytest.approx({"math": 3.0, "other": 1.0, "non": 1.0})
    assert m["di"]["math"] == pytest.approx(1.55733, abs=1e-5)
    assert m["di"]["other"] == pytest.approx(2.02606, abs=1e-5)
    assert m["di"]["non"] == pytest.approx(-0.84853, abs=1e-5)
    assert m["ti"]["other"] == pytest.approx(130.098, abs=1e-2)
    assert m["ti"]["non"] == pytest.approx(-54.486, abs=1e-2)
    # model B alone under per-model sigma is independent of A
    resB = transferability(BASE, {"A": A, "B": B}, DOM, sigma="per-model")
    sB = {g: statistics.pstdev([B[b] - BASE[b] for b in bs]) for g, bs in GROUPS.items()}
    di, ti = _reference(BASE, B, sB)
    assert resB["models"]["B"]["di"] == pytest.approx(di)
    assert resB["models"]["B"]["ti"] == pytest.approx(ti)
    assert resB["models"]["A"]["ti"] == pytest.approx(m["ti"])


def test_ti_pooled_sigma_over_all_models():
    res = transferability(BASE, {"A": A, "B": B}, DOM)  # pooled is the default
    assert res["sigma_mode"] == "pooled"
    pooled = {g: statistics.pstdev([M[b] - BASE[b] for M in (A, B) for b in bs]) for g, bs in GROUPS.items()}
    assert res["sigma"] == pytest.approx(pooled)
    # by hand for math: deltas 10, 4, 5, 10 -> mean 7.25, pstdev sqrt(((2.75)^2+(3.25)^2+(2.25)^2+(2.75)^2)/4) = 2.7726
    assert pooled["math"] == pytest.approx(2.7726, abs=1e-4)
    for name, M in (("A", A), ("B", B)):
        di, ti = _reference(BASE, M, pooled)
        assert res["models"][name]["di"] == pytest.approx(di)
        assert res["models"][name]["ti"] == pytest.approx(ti)


def test_ti_explicit_sigma():
    sig = {"math": 16.1, "other": 18.4, "non": 20.5}
    res = transferability(BASE, {"A": A}, DOM, sigma="math=16.1,other=18.4,non=20.5")
    di, ti = _reference(BASE, A, sig)
    assert res["sigma_mode"] == "explicit"
    assert res["models"]["A"]["ti"] == pytest.approx(ti)
    # TI is scale-sensitive only through sqrt: with one sigma for all groups it is invariant to that sigma
    r1 = transferability(BASE, {"A": A}, DOM, sigma={"math": 2.0, "other": 2.0, "non": 2.0})
    r2 = transferability(BASE, {"A": A}, DOM, sigma={"math": 8.0, "other": 8.0, "non": 8.0})
    assert r1["models"]["A"]["ti"] == pytest.approx(r2["models"]["A"]["ti"])


def test_ti_edge_cases():
    with pytest.raises(DriftkitError, match="sigma"):
        parse_sigma("math=1,bogus=2")
    with pytest.raises(DriftkitError, match="per-model"):
        parse_sigma("sometimes")
    one = {"m1": 40.0, "o1": 50.0, "n1": 70.0}
    with pytest.raises(DriftkitError, match="zero or undefined"):  # one benchmark, one model: no spread
        transferability(
            one,
            {"A": {"m1": 50.0, "o1": 55.0, "n1": 60.0}},
            {"m1": "math", "o1": "other", "n1": "non"},
            sigma="per-model",
        )
    flat = transferability(BASE, {"A": dict(BASE)}, DOM)  # no change at all: DI 0, TI undefined
    assert flat["models"]["A"]["di"]["math"] == 0.0 and flat["models"]["A"]["ti"]["other"] is None
    with pytest.raises(DriftkitError, match="math"):
        transferability({"o1": 1.0, "o2": 2.0}, {"A": {"o1": 3.0, "o2": 5.0}}, {"o1": "other", "o2": "other"})


# ----------------------------------------------------------------------------- score files + CLI
def _prov(**over):
    bench = {
        b: {
            "dataset": f"org/{b}",
            "source": "fixture",
            "item_ids_sha256": "x",
            "max_new_tokens": 64,
            "prompt_template_sha256": "p",
        }
        for b in BASE
    }
    prov = {
        "settings": {"chat_template": True, "think": None, "generation": {"temperature": 0.0, "top_p": 1.0, "seed": 0}},
        "benchmarks": bench,
    }
    for k, v in over.items():
        prov[k] = v
    return prov


def _write(path: Path, model: str, vals: dict[str, float], prov=None, n=50) -> Path:
    scores = [
        {"benchmark": b, "domain": DOM[b], "metric": "accuracy", "value": v, "n": n, "stderr": 1.0, "primary": True}
        for b, v in vals.items()
    ]
    return write_scores(path, model, scores, prov or _prov())


@pytest.fixture()
def files(tmp_path: Path):
    return (
        _write(tmp_path / "base.json", "base", BASE),
        _write(tmp_path / "a.json", "A", A),
        _write(tmp_path / "b.json", "B", B),
    )


def _cli():
    from driftkit.cli.main import app

    return app


def test_transfer_from_files_and_cli_json(files, tmp_path: Path):
    base, a, b = files
    res = transfer(base, [a, b])
    ref = transferability(BASE, {"A": A, "B": B}, DOM)
    assert res["schema"] == "driftkit.transfer/1"
    assert res["models"]["A"]["ti"] == pytest.approx(ref["models"]["A"]["ti"])
    out = tmp_path / "ti.json"
    r = CliRunner().invoke(_cli(), ["transfer", "--base", str(base), str(a), str(b), "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert set(doc["models"]) == {"A", "B"}
    assert set(doc["models"]["A"]["ti"]) == {"other", "non"} and set(doc["models"]["A"]["di"]) == {
        "math",
        "other",
        "non",
    }
    assert doc["models"]["B"]["ti"]["non"] == pytest.approx(ref["models"]["B"]["ti"]["non"])
    r2 = CliRunner().invoke(_cli(), ["transfer", "--base", str(base), str(a), "--sigma", "per-model"])
    assert r2.exit_code == 0 and "TI other" in r2.output


def _refused(args, *needles):
    r = CliRunner().invoke(_cli(), args)
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    for n in needles:
        assert n in text, (n, text)
    return r


def test_refuses_mismatched_benchmarks_unless_forced(files, tmp_path: Path):
    base, a, _ = files
    fewer = dict(A)
    del fewer["o2"]
    p = _write(tmp_path / "fewer.json", "F", fewer)
    _refused(["transfer", "--base", str(base), str(p)], "lacks benchmark(s) o2", "--force")
    r = CliRunner().invoke(
        _cli(), ["transfer", "--base", str(base), str(p), "--force", "--sigma", "math=5,other=5,non=5", "--json", "-"]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout[r.stdout.index("{") :])
    assert "o2" not in doc["benchmarks"] and doc["forced"]


def test_refuses_mismatched_settings(files, tmp_path: Path):
    base, _, _ = files
    prov = _prov()
    prov["settings"]["generation"]["temperature"] = 0.7
    p = _write(tmp_path / "hot.json", "H", A, prov)
    _refused(["transfer", "--base", str(base), str(p)], "run settings differ", "generation.temperature", "0.0 vs 0.7")
    prov = _prov()
    prov["benchmarks"]["m1"]["source"] = "hub"
    p = _write(tmp_path / "hub.json", "H", A, prov)
    _refused(["transfer", "--base", str(base), str(p)], "m1 settings differ", "source")
    p = _write(tmp_path / "n.json", "N", A, n=20)
    _refused(["transfer", "--base", str(base), str(p)], "n 50", "20")


def test_refuses_bad_inputs(files, tmp_path: Path):
    base, a, _ = files
    _refused(["transfer", "--base", str(tmp_path / "missing.json"), str(a)], "does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other/1"}')
    _refused(["transfer", "--base", str(base), str(bad)], "schema")
    bad.write_text("{not json")
    _refused(["transfer", "--base", str(base), str(bad)], "not valid JSON")
    _refused(["transfer", "--base", str(base), str(a), "--sigma", "math=abc"], "not a number")
    _refused(["transfer", "--base", str(base), str(a), "--sigma", "math=1,other=2"], "non")


def test_score_file_validation(tmp_path: Path):
    with pytest.raises(DriftkitError, match="0-100"):
        write_scores(
            tmp_path / "x.json",
            "m",
            [{"benchmark": "b", "domain": "math", "metric": "acc", "value": 0.6 + 100, "n": 1}],
            {},
        )
    assert not (tmp_path / "x.json").exists()  # no partial output
    with pytest.raises(DriftkitError, match="domain"):
        write_scores(
            tmp_path / "x.json", "m", [{"benchmark": "b", "domain": "maths", "metric": "acc", "value": 1, "n": 1}], {}
        )
    p = write_scores(
        tmp_path / "y.json",
        "m",
        [{"benchmark": "b", "domain": "math", "metric": "acc", "value": 1, "n": 1}],
        {},
        items=[{"id": 1}],
    )
    doc = read_scores(p)
    assert doc["provenance"]["items_file"] == "y.items.jsonl" and (tmp_path / "y.items.jsonl").is_file()


def test_no_change_over_a_math_loss_is_zero_not_negative_zero():
    """The demo's RL case: math fell, the other groups did not move; TI is 0 and prints as 0.0."""
    dom = {"m": "math", "o": "other", "n": "non"}
    res = transferability(
        {"m": 18.8, "o": 6.2, "n": 25.0},
        {"rl": {"m": 9.4, "o": 6.2, "n": 25.0}, "sft": {"m": 18.8, "o": 6.2, "n": 18.8}},
        dom,
    )
    ti = res["models"]["rl"]["ti"]
    assert ti == {"other": 0.0, "non": 0.0}
    assert all(math.copysign(1.0, v) == 1.0 and f"{v:.1f}" == "0.0" for v in ti.values())
    assert res["models"]["sft"]["ti"] == {"other": None, "non": None}  # sft did not change math: undefined


def test_zero_pooled_sigma_says_why_ti_is_undefined(tmp_path) -> None:
    """No score moved: sigma 0, DI_math 0, TI null -- with the reason in the JSON and the terminal."""
    import json

    from typer.testing import CliRunner

    from driftkit.cli.main import app

    def doc(model: str) -> dict:
        return {
            "schema": "driftkit.scores/1",
            "model": model,
            "provenance": {},
            "scores": [
                {"benchmark": "m1", "domain": "math", "metric": "accuracy", "value": 50.0, "n": 10},
                {"benchmark": "o1", "domain": "other", "metric": "accuracy", "value": 40.0, "n": 10},
            ],
        }

    (tmp_path / "base.json").write_text(json.dumps(doc("base")))
    (tmp_path / "same.json").write_text(json.dumps(doc("tuned")))
    args = ["transfer", "--base", str(tmp_path / "base.json"), str(tmp_path / "same.json")]
    r = CliRunner().invoke(app, [*args, "--json", "-"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    m = res["models"]["tuned"]
    assert m["ti"] == {"other": None, "non": None} and res["sigma"]["math"] == 0.0
    assert "no math score changed" in m["ti_undefined_reason"] and "DI_math = 0" in m["ti_undefined_reason"]
    assert len(res["notes"]) == 1 and "TI is undefined for tuned" in res["notes"][0]
    r = CliRunner().invoke(app, args)
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "note: TI is undefined for tuned: no math score changed" in text, text
