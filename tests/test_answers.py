"""The RL reward and the math benchmarks read answers the same way (driftkit.answers).

Why this test exists: the study compares "reward went up" during RL with "accuracy went up" on the
math benchmarks afterwards; that is one claim only if both decide "the model's answer" and "equals
the gold answer" identically. Each text goes through the full benchmark path (the bench loop's think
stripping, then the plugin's ``score``) and through the TRL reward function.
"""

from __future__ import annotations

import pytest

from driftkit.answers import extract_choice, final_answer, last_boxed, strip_think
from driftkit.plugins.benchmarks.math500 import Math500
from driftkit.plugins.benchmarks.math_heldout import MathHeldout
from driftkit.plugins.trainers.rewards import answer_reward, math_accuracy_reward

CASES = [
    # (model output, gold, correct?)
    (r"The answer is $\boxed{\frac{2}{3}}$.", r"\frac{2}{3}", True),  # nested braces
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}", True),  # braces two levels deep
    (r"first \boxed{5}, then \boxed{7}", "7", True),  # several boxes: the last counts
    (r"first \boxed{7}, then \boxed{5}", "7", False),
    (r"\boxed{7} and an empty \boxed{} at the end", "7", True),  # an empty box is no answer
    (r"\boxed{7} then cut off \boxed{\frac{1}{", "7", True),  # an unbalanced box is skipped
    (r"<think>maybe \boxed{5}</think> so \boxed{7}", "7", True),  # a box inside reasoning never counts
    (r"<think>it is \boxed{7}</think> I am not sure.", "7", False),
    (r"<think>it is \boxed{7} and then", "7", False),  # reasoning never closed: no answer
    (r"reasoning in the prompt's block 5 </think> \boxed{7}", "7", True),  # lone </think>
    (r"<THINK>\boxed{5}</THINK> \boxed{7}", "7", True),  # tags in any case
    ("I do not know.", "7", False),  # no answer at all
    ("", "7", False),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),  # equivalence, not string equality
    (r"\boxed{x = 2}", "2", True),
]


@pytest.mark.parametrize("text, gold, correct", CASES)
def test_reward_and_math_benchmarks_agree(text: str, gold: str, correct: bool) -> None:
    reward = answer_reward(text, gold)
    assert reward == float(correct)
    assert math_accuracy_reward([text], answer=[gold]) == [float(correct)]
    for bench in (Math500(), MathHeldout()):
        scored = bench.score({"problem": "p", "answer": gold, "id": "t"}, strip_think(text))
        assert scored["correct"] == correct, (bench.name, text)


def test_extraction_rules() -> None:
    assert last_boxed(r"\boxed{a{b}c}") == "a{b}c"
    assert last_boxed(r"\fbox{42}") == "42"
    assert last_boxed(r"\boxed 5") == "5"
    assert last_boxed("nothing") is None
    assert final_answer(r"<think>\boxed{1}</think>\boxed{2}") == "2"
    assert final_answer(r"<think>\boxed{1}") is None
    assert strip_think("a <think>b</think> c") == "a  c"
    assert extract_choice(r"\boxed{\text{B}}") == "B"


def test_benchmark_leniency_is_the_only_difference() -> None:
    """Without any box the benchmark lets math-verify find the answer in the text; the reward pays
    only for a boxed answer (so it teaches the format it scores). Everything else agrees (above)."""
    text, gold = "So the result is 7.", "7"
    assert answer_reward(text, gold) == 0.0
    assert Math500().score({"answer": gold}, text)["correct"]


def test_unparseable_gold() -> None:
    assert answer_reward(r"\boxed{1}", "???") is None  # the reward skips the sample
    assert not Math500().score({"answer": "???"}, r"\boxed{1}")["correct"]  # the benchmark counts it wrong
