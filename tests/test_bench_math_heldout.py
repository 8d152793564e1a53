"""The bundled held-out math benchmark: its data is the bundled file in every mode, never a training row,
and its scorer accepts the worked solutions' own answers and rejects wrong ones."""

from __future__ import annotations

import pytest

from driftkit.plugins.benchmarks.math_heldout import MathHeldout
from driftkit.plugins.trainers.mathdata import load_math_data


@pytest.mark.parametrize("mode", ["auto", "hub", "fixtures"])
def test_bundled_data_in_every_mode_without_a_fallback_note(mode: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # "hub" must not even try the network: no hub copy exists
    data = MathHeldout().load(mode, limit=16)
    assert len(data.items) == 16
    prov = data.provenance
    assert prov["source"] == "bundled" and prov["fixture_sha256"] and "fallback" not in prov


def test_items_are_heldout_and_never_trained_on():
    items = MathHeldout().load("auto").items
    train_problems = {r["problem"] for r in load_math_data("bundled:math-train").rows}
    assert len(items) == 300 and all(it["_id"].startswith("math-heldout-") for it in items)
    assert not train_problems & {it["problem"] for it in items}


def test_scorer_accepts_the_solution_answer_and_rejects_a_wrong_one():
    b = MathHeldout()
    for it in b.load("auto", limit=20).items:
        final = it["solution"].split("</think>")[-1]  # what a model answers after its reasoning block
        assert b.score(it, final)["correct"], it
        assert not b.score(it, "The answer is $\\boxed{" + it["answer"] + " + 1}$.")["correct"]
    assert "\\boxed{}" in b.build_prompt(it)[0]["content"]
