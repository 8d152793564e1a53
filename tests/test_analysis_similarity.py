"""The ``similarity`` analysis on real tiny captures (float16 stored layers) vs direct computations from
the raw arrays; sharing the layer sums with ``cka``; identical captures; report and study hooks."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import driftkit
from driftkit.registry import load
from driftkit.testing import check_plugin
from tests.test_compare_analyses import _load
from tests.test_metrics_cka import _gram_biased, _gram_debiased
from tests.test_metrics_similarity import _knn_brute as knn_brute
from tests.test_metrics_similarity import _procrustes_ref as procrustes_ref
from tests.test_metrics_similarity import _zscore as zscore


@pytest.fixture(scope="module")
def pair(tiny_capture_pair):
    a, b = tiny_capture_pair
    return a, b, _load(a), _load(b)


@pytest.fixture(scope="module")
def result(pair) -> dict:
    a, b, _, _ = pair
    rep = driftkit.compare([a, b], analyses=["cka", "similarity"], chunk_tokens=16, positions="all")
    return rep.to_dict()["analyses"]


def test_plugin_contract_and_registration() -> None:
    cls = load("analysis", "similarity")
    check_plugin(cls)
    assert cls.default is True and "layers" in cls.consumes


def test_layers_vs_direct_references(pair, result) -> None:
    _, _, da, db = pair
    with h5py.File(pair[0], "r") as f:
        assert f["sites/residual.0"].dtype == np.float16  # the layers are stored as float16
    res = result["similarity"]
    names = ["embed"] + [f"residual.{i}" for i in range(4)]
    assert [e["site"] for e in res["layers"]] == names
    assert [d["layer"] for d in res["dominant"]] == [e["layer"] for e in res["layers"]]
    off = da["samples/offsets"]
    n_s = len(off) - 1
    assert res["k"] == n_s - 1 and any("clipped" in n for n in res["notes"])
    for e, dom in zip(res["layers"], res["dominant"]):
        assert {"layer", "standardized_cka", "procrustes", "mutual_knn"} <= set(e)
        x, y = da["sites"][e["site"]], db["sites"][e["site"]]
        zx, zy = zscore(x), zscore(y)
        assert e["standardized_cka"] == pytest.approx(_gram_biased(zx, zy), abs=1e-6)
        assert e["standardized_cka_debiased"] == pytest.approx(_gram_debiased(zx, zy), abs=1e-6)
        assert e["procrustes"] == pytest.approx(procrustes_ref(x, y), abs=1e-6)
        assert e["linear_cka"] == pytest.approx(_gram_biased(x, y), abs=1e-6)
        pa = np.stack([x[off[s] : off[s + 1]].mean(0) for s in range(n_s)])
        pb = np.stack([y[off[s] : off[s + 1]].mean(0) for s in range(n_s)])
        k = res["k"]
        ka, kb = knn_brute(pa, k), knn_brute(pb, k)
        assert e["mutual_knn"] == pytest.approx(np.mean([len(set(ka[i]) & set(kb[i])) / k for i in range(n_s)]))
        var = ((x - x.mean(0)) ** 2).sum(0)
        top = np.argsort(-var, kind="stable")[: res["top_k"]]
        assert dom["top_features"] == top.tolist()
        assert dom["top_share"] == pytest.approx(var[top].sum() / var.sum(), rel=1e-9)
    assert set(result["similarity"]["summary"]) >= {"mean_standardized_cka", "mean_procrustes", "mean_mutual_knn"}


def test_shared_sums_leave_cka_unchanged(pair, result) -> None:
    a, b, _, _ = pair
    alone = driftkit.compare([a, b], analyses=["cka"], chunk_tokens=16, positions="all").to_dict()["analyses"]["cka"]
    assert alone["layers"] == result["cka"]["layers"]
    for s, c in zip(result["similarity"]["layers"], result["cka"]["layers"]):
        assert s["linear_cka"] == pytest.approx(c["linear_cka"], abs=1e-12)
    # a narrower mask for one of them: separate sums, still right
    only = driftkit.compare([a, b], analyses=["similarity"], chunk_tokens=16, positions="all").to_dict()
    assert only["analyses"]["similarity"]["layers"] == result["similarity"]["layers"]


def test_identical_captures_give_exact_ideal_values(pair) -> None:
    a, _, _, _ = pair
    res = driftkit.compare([a, a], analyses=["similarity"], chunk_tokens=16, positions="all").to_dict()
    res = res["analyses"]["similarity"]
    for e in res["layers"]:
        assert e["standardized_cka"] == 1.0 and e["standardized_cka_debiased"] == 1.0
        assert e["procrustes"] == 0.0 and e["mutual_knn"] == 1.0 and e["linear_cka"] == 1.0


def test_report_dominance_findings_and_study_hooks(pair, result) -> None:
    a, b, _, _ = pair
    cls = load("analysis", "similarity")
    an = cls(threshold=0.01)
    res = dict(result["similarity"])
    res["threshold"] = 0.01
    lines = cls.dominance_lines(res)
    assert lines and "Raw CKA is dominated" in lines[0]
    tuned = {k: v for k, v in res.items()}
    tuned["layers"] = [dict(e, standardized_cka=e["standardized_cka"] - 0.1) for e in res["layers"]]
    tuned["dominated_layers"] = [d["layer"] for d in res["dominant"]]
    found = an.findings({"sft": tuned, "rl": res})
    assert found[0].startswith("1 − standardized CKA: sft drifts more")
    assert any(f.startswith("Procrustes angle:") for f in found) and any("mutual k-NN" in f for f in found)
    assert "Raw CKA is dominated" in found[-1]
    m = an.drift_measures(tuned)
    assert set(m) == {"1 − standardized CKA", "Procrustes angle", "1 − mutual k-NN"}
    assert m["1 − standardized CKA"] == pytest.approx(1 - np.mean([e["standardized_cka"] for e in tuned["layers"]]))
    same = an.findings({"x": result["similarity"] | {"layers": [dict(e, **_ideal) for e in res["layers"]]}})
    assert same[0].endswith("no measurable change for any tuned model.")
    entry = an.study_entry(res)
    assert {"similarity_layers", "dominant_features"} == set(entry)
    rows = [r[0] for r in an.study_rows(res)]
    assert rows == ["1 − mean standardized CKA", "mean Procrustes (rad)", "mean mutual k-NN"]
    figs = an.figures({"sft": tuned, "rl": res})
    assert figs and figs[0].svg.startswith("<svg")
    rep = driftkit.compare([a, b], analyses=["similarity"], options={"similarity": {"threshold": "0.01"}})
    from rich.console import Console

    con = Console(record=True, width=140)
    con.print(cls(threshold=0.01).render(rep.to_dict()["analyses"]["similarity"]))
    assert "Raw CKA is dominated" in con.export_text()


_ideal = {"standardized_cka": 1.0, "procrustes": 0.0, "mutual_knn": 1.0}


def test_options_are_validated(pair) -> None:
    from driftkit.errors import DriftkitError

    a, b, _, _ = pair
    with pytest.raises(DriftkitError, match="threshold"):
        driftkit.compare([a, b], analyses=["similarity"], options={"similarity": {"threshold": "2"}})
    res = driftkit.compare(
        [a, b], analyses=["similarity"], positions="all", options={"similarity": {"debiased": "false", "k": "2"}}
    ).to_dict()["analyses"]["similarity"]
    assert res["k"] == 2 and "notes" not in res
    assert all(e["standardized_cka_debiased"] is None for e in res["layers"])
    assert torch.isfinite(torch.tensor([e["standardized_cka"] for e in res["layers"]])).all()


def test_missing_layers_are_skipped(tmp_path: Path) -> None:
    from driftkit.registry.analysis import Analysis

    class _P:
        def layer_sites(self):
            return []

    an = load("analysis", "similarity")()
    assert isinstance(an, Analysis) and "residual" in an.check(_P())


def test_dominance_sentence_reads_plainly_and_reaches_the_html_caption(pair, result) -> None:
    """The sentence names the recurring feature and its layer count in words (it read "507 at 27, ...,
    17 at 2 of them"), and the figure caption carries it, since the HTML report has no terminal notes."""
    cls = load("analysis", "similarity")
    res = dict(result["similarity"], threshold=0.01)
    rows = [d for d in res["dominant"] if d["top_share"] > 0.01]
    count: dict[int, int] = {}
    for d in rows:
        for f in d["top_features"]:
            count[f] = count.get(f, 0) + 1
    top = min(count, key=lambda f: (-count[f], f))
    line = cls.dominance_lines(res)[0]
    assert f"feature {top} is one of them at {count[top]} of those layers" in line and "of them)" not in line
    caption = cls(threshold=0.01).figures({"sft": res})[0].caption
    assert line.rstrip(".") in caption
    res["threshold"] = 1.0  # nothing dominated: the caption is the plain one
    assert "Raw CKA" not in cls().figures({"sft": res})[0].caption
