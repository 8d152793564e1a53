"""The math answer-correctness reward (driftkit.plugins.trainers.rewards) on hand-written cases."""

from __future__ import annotations

import threading
import time

import pytest

from driftkit.plugins.trainers.rewards import (
    accuracy,
    answer_reward,
    extract_answer,
    format_ok,
    math_accuracy_reward,
    math_format_reward,
    parse_gold,
    run_with_timeout,
)

RIGHT = "<think>\n23 + 45 = 68\n</think>\nThe answer is $\\boxed{68}$."


@pytest.mark.parametrize(
    "completion, gold, expected",
    [
        (RIGHT, "68", 1.0),  # right boxed answer after the reasoning block
        ("The answer is \\boxed{68}.", "68", 1.0),  # no reasoning block at all
        ("The answer is \\boxed{67}.", "68", 0.0),  # wrong answer
        ("23 + 45 = 68. The answer is 68.", "68", 0.0),  # no boxed answer
        ("The final answer within \\boxed{} is 68.", "68", 0.0),  # an empty box is no answer
        ("<think>so it is \\boxed{68}</think> I am not sure.", "68", 0.0),  # answer only inside the reasoning
        ("<think>it is \\boxed{68} and then", "68", 0.0),  # reasoning never closed: no answer
        ("<think>maybe \\boxed{5}</think> so \\boxed{68}", "68", 1.0),  # the box after </think> counts
        ("first \\boxed{5}, finally \\boxed{68}", "68", 1.0),  # the last box counts
        ("first \\boxed{68}, finally \\boxed{5}", "68", 0.0),
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),  # equivalence, not string equality
        ("\\boxed{\\frac{7}{6}}", "\\frac{7}{6}", 1.0),
        ("\\boxed{x = 2}", "2", 1.0),
        ("\\boxed{\\frac{1}{2", "\\frac{1}{2}", 0.0),  # cut off mid-answer
    ],
)
def test_answer_reward_cases(completion: str, gold: str, expected: float) -> None:
    assert answer_reward(completion, gold) == expected


@pytest.mark.parametrize("gold", ["???", "\\frac{", "", "   "])
def test_unparseable_gold_is_skipped_never_rewarded(gold: str) -> None:
    assert parse_gold(gold) is None
    # even a completion that repeats the broken label verbatim gets no reward: None means "skip"
    assert answer_reward(f"\\boxed{{{gold}}}", gold) is None
    assert answer_reward(RIGHT, gold) is None


def test_extract_answer_nested_braces() -> None:
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("\\fbox{42}") == "42"
    assert extract_answer("no answer here") is None


def test_trl_reward_signature_plain_and_conversational() -> None:
    plain = [RIGHT, "\\boxed{1}", "nothing"]
    conv = [[{"role": "assistant", "content": c}] for c in plain]
    golds = ["68", "68", "68"]
    assert math_accuracy_reward(plain, answer=golds, prompts=["p"] * 3) == [1.0, 0.0, 0.0]
    assert math_accuracy_reward(conv, answer=golds) == [1.0, 0.0, 0.0]
    assert math_accuracy_reward(["\\boxed{1}"], answer=["???"]) == [None]
    assert math_format_reward(conv) == [1.0, 1.0, 0.0]


def test_format_ok() -> None:
    assert format_ok(RIGHT)
    assert not format_ok("<think>a</think><think>b</think> \\boxed{1}")
    assert not format_ok("<think> never closed \\boxed{1}")
    assert not format_ok("\\boxed{2}\n\\boxed{2}\n\\boxed{2}")  # box spam is not an answer format
    assert format_ok("<think>maybe \\boxed{5}</think> so \\boxed{68}")  # boxes inside the reasoning don't count


def test_reward_works_off_the_main_thread() -> None:
    """math-verify's signal timeouts would raise ValueError in a thread; ours must not."""
    out: list[object] = []

    def work() -> None:
        try:
            out.append(answer_reward(RIGHT, "68"))
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            out.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert out == [1.0]


def test_own_timeout_interrupts_a_runaway_check() -> None:
    state = {"iterations": 0}

    def spin() -> None:
        while True:
            state["iterations"] += 1

    t0 = time.perf_counter()
    finished, value = run_with_timeout(spin, 0.2)
    assert (finished, value) == (False, None)
    assert time.perf_counter() - t0 < 2.0
    # the worker was stopped, not abandoned: the counter no longer moves
    time.sleep(0.05)
    before = state["iterations"]
    time.sleep(0.1)
    assert state["iterations"] == before
    # a function that finishes in time returns its value; its exceptions propagate
    assert run_with_timeout(lambda: 7, 1.0) == (True, 7)
    with pytest.raises(ZeroDivisionError):
        run_with_timeout(lambda: 1 / 0, 1.0)


def test_accuracy_ignores_skipped_samples() -> None:
    acc, n = accuracy([RIGHT, "\\boxed{3}", "\\boxed{1}"], ["68", "4", "???"])
    assert n == 2
    assert acc == pytest.approx(0.5)
