"""Each bundled benchmark's scorer on hand-written outputs: right, wrong, malformed, and a reasoning
block whose decoy answer must not count."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from driftkit.plugins.benchmarks.acpbench import ACPBench
from driftkit.plugins.benchmarks.gpqa import GPQADiamond
from driftkit.plugins.benchmarks.humaneval import HumanEval, pass_at_k
from driftkit.plugins.benchmarks.ifeval import IFEval
from driftkit.plugins.benchmarks.ifeval_checks import check, count_sentences
from driftkit.plugins.benchmarks.math500 import Math500
from driftkit.registry.benchmark import extract_choice, extract_yes_no, last_boxed, strip_think


# ----------------------------------------------------------------------------- shared extraction
def test_strip_think_rules():
    assert strip_think("<think>maybe 5</think>The answer is 7") == "The answer is 7"
    assert strip_think("reasoning with 5 </think> final 7") == "final 7"  # template opened <think> in the prompt
    assert strip_think("<think>never closed, answer 5") == ""  # cut-off reasoning gives no answer
    assert strip_think("<THINK>a</THINK>b<think>c</think>d") == "bd"
    assert strip_think("plain answer") == "plain answer"


def test_last_boxed_balanced_braces():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize(
    "text,want",
    [
        ("Answer: B", "B"),
        ("**Answer**: (C)", "C"),
        ("Thus, the answer is (D).", "D"),
        (r"so \boxed{A}", "A"),
        ("the answer is a tough one, but B", "B"),  # lower-case 'a' is an article, not option A
        ("I first thought A. No wait, it must be C", "C"),
        ("nothing useful here", None),
        ("", None),
    ],
)
def test_extract_choice(text, want):
    assert extract_choice(text) == want


def test_extract_yes_no():
    assert extract_yes_no("**Final Answer**: Yes") == "yes"
    assert extract_yes_no("No... wait. The answer is yes.") == "yes"
    assert extract_yes_no("yes, hmm, no") == "no"
    assert extract_yes_no("unclear") is None


# ----------------------------------------------------------------------------- MATH-500
def _first(bench_cls, **kw):
    b = bench_cls(**kw)
    data = b.load("fixtures")
    return b, data.items


def test_math500_scorer():
    b = Math500()
    item = {"problem": "x", "answer": "\\frac{2}{3}", "unique_id": "t"}
    assert b.score(item, r"We simplify. The answer is $\boxed{\frac{2}{3}}$.")["correct"]
    assert b.score(item, r"The answer is $\boxed{4/6}$")["correct"]  # equivalent forms verify
    assert not b.score(item, r"The answer is $\boxed{\frac{3}{2}}$")["correct"]
    bad = b.score(item, "I do not know")
    assert not bad["correct"] and bad["extraction_failed"]
    # decoy inside a reasoning block: stripping happens before scoring, so only the final answer counts
    out = strip_think(r"<think>maybe \boxed{\frac{2}{3}}? no</think> Final: $\boxed{5}$")
    assert not b.score(item, out)["correct"]
    out = strip_think(r"<think>maybe \boxed{5}</think> Final: $\boxed{\frac{2}{3}}$")
    assert b.score(item, out)["correct"]


def test_math500_fixture_gold_answers_verify():
    b, items = _first(Math500)
    assert 20 <= len(items) <= 30
    for it in items:
        assert b.score(it, f"so the answer is $\\boxed{{{it['answer']}}}$")["correct"], it["unique_id"]


# ----------------------------------------------------------------------------- GPQA
def test_gpqa_shuffle_is_seeded_and_scoring():
    b, items = _first(GPQADiamond)
    b2, items2 = _first(GPQADiamond)
    assert [i["_options"] for i in items] == [i["_options"] for i in items2]  # same seed, same order
    golds = Counter(i["_gold"] for i in items)
    assert len(golds) >= 3  # the correct option is not always A
    _, items3 = _first(GPQADiamond, seed=1)
    assert [i["_options"] for i in items] != [i["_options"] for i in items3]
    it = items[0]
    g = it["_gold"]
    wrong = next(L for L in "ABCD" if L != g)
    assert it["_options"]["ABCD".index(g)] == it["Correct Answer"]
    assert b.score(it, f"Let me think.\nAnswer: {g}")["correct"]
    assert not b.score(it, f"The answer is ({wrong})")["correct"]
    mal = b.score(it, "I cannot decide between these.")
    assert not mal["correct"] and mal["extraction_failed"]
    assert not b.score(it, strip_think(f"<think>Answer: {g}</think> Answer: {wrong}"))["correct"]
    assert b.score(it, strip_think(f"<think>Answer: {wrong}</think> Answer: {g}"))["correct"]
    res = [
        {"id": "1", "samples": [b.score(it, f"Answer: {g}")]},
        {"id": "2", "samples": [b.score(it, "no idea")]},
        {"id": "3", "samples": [b.score(it, f"Answer: {wrong}")]},
        {"id": "4", "samples": [b.score(it, f"Answer: {g}")]},
    ]
    recs = {r["metric"]: r for r in b.aggregate(res)}
    assert recs["accuracy"]["value"] == pytest.approx(50.0)
    assert recs["extraction_failure_rate"]["value"] == pytest.approx(25.0)
    assert recs["accuracy"]["primary"] and recs["accuracy"]["domain"] == "other"


# ----------------------------------------------------------------------------- ACPBench
def test_acpbench_scorer_and_macro_average():
    b, items = _first(ACPBench)
    assert {i["_config"] for i in items} >= {"acp_app_bool", "acp_app_mcq", "acp_val_mcq"}
    bool_it = next(i for i in items if i["_config"].endswith("_bool") and i["answer"] == "yes")
    mcq_it = next(i for i in items if i["_config"].endswith("_mcq"))
    assert b.score(bool_it, "**Thoughts**: the preconditions hold. **Final Answer**: yes")["correct"]
    assert not b.score(bool_it, "**Final Answer**: no")["correct"]
    assert b.score(bool_it, "blah")["extraction_failed"]
    assert not b.score(bool_it, strip_think("<think>Final Answer: yes</think> Final Answer: no"))["correct"]
    g = mcq_it["answer"]
    assert b.score(mcq_it, f"**Thoughts**: only one works. **Final Answer**: {g}")["correct"]
    assert not b.score(mcq_it, "**Final Answer**: " + ("A" if g != "A" else "B"))["correct"]
    # prompt: 2 few-shot turns then the question
    msgs = b.build_prompt(mcq_it)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    # macro average: config X 2/2 right, config Y 0/1, config Z_mcq 1/2 -> bools (1.0 + 0.0)/2, overall (1 + 0 + .5)/3
    res = [
        {"config": "acp_x_bool", "samples": [{"correct": True}]},
        {"config": "acp_x_bool", "samples": [{"correct": True}]},
        {"config": "acp_y_bool", "samples": [{"correct": False}]},
        {"config": "acp_z_mcq", "samples": [{"correct": True}]},
        {"config": "acp_z_mcq", "samples": [{"correct": False}]},
    ]
    recs = {r["metric"]: r for r in b.aggregate(res)}
    assert recs["accuracy"]["value"] == pytest.approx(100 * (1 + 0 + 0.5) / 3)
    assert recs["accuracy_bool"]["value"] == pytest.approx(50.0)
    assert recs["accuracy_mcq"]["value"] == pytest.approx(50.0)


def test_acpbench_limit_interleaves_subtasks():
    b = ACPBench()
    data = b.load("fixtures", limit=5)
    assert len({i["_config"] for i in data.items}) == 5


# ----------------------------------------------------------------------------- HumanEval
def test_humaneval_scorer_runs_code_in_sandbox():
    b, items = _first(HumanEval)
    it = next(i for i in items if i["entry_point"] == "add_numbers")
    full = "Here you go:\n```python\ndef add_numbers(a: int, b: int) -> int:\n    return a + b\n```\n"
    assert b.score(it, full)["correct"]
    assert b.score(it, "    return a + b\n")["correct"]  # a bare body completion
    wrong = b.score(it, "```python\ndef add_numbers(a, b):\n    return a - b\n```")
    assert not wrong["correct"] and wrong["status"] == "failed"
    assert not b.score(it, "```python\ndef add_numbers(a, b)\n    return\n```")["correct"]  # syntax error
    loop = b.score(it, "```python\ndef add_numbers(a, b):\n    while True:\n        pass\n```")
    assert not loop["correct"] and loop["status"] in ("timeout", "killed")
    decoy = strip_think(
        "<think>```python\ndef add_numbers(a, b):\n    return a + b\n```</think>```python\ndef add_numbers(a, b):\n    "
        "return 0\n```"
    )
    assert not b.score(it, decoy)["correct"]


def test_pass_at_k_matches_combinatorial_definition():
    from math import comb

    for n, c, k in [(5, 2, 1), (10, 3, 5), (4, 0, 2), (3, 3, 2), (10, 9, 3)]:
        want = 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(want)
    b = HumanEval()
    res = [{"samples": [{"correct": True}, {"correct": False}]}, {"samples": [{"correct": False}, {"correct": False}]}]
    recs = {r["metric"]: r["value"] for r in b.aggregate(res)}
    assert recs["pass@1"] == pytest.approx(25.0)


# ----------------------------------------------------------------------------- IFEval
def test_ifeval_checkers_strict_and_loose():
    assert check("punctuation:no_comma", "no commas here", {})
    assert not check("punctuation:no_comma", "a, b", {})
    assert check("length_constraints:number_words", "one two three", {"num_words": 4, "relation": "less than"})
    assert not check("length_constraints:number_words", "one two three four", {"num_words": 4, "relation": "less than"})
    assert check("detectable_format:number_bullet_lists", "* a\n* b\n- c", {"num_bullets": 3})
    assert check("detectable_format:title", "<<My Title>>\nbody", {})
    assert not check("detectable_format:title", "<<>> body", {})
    assert check("detectable_format:json_format", '```json\n{"a": [1, 2]}\n```', {})
    assert not check("detectable_format:json_format", "{a: 1}", {})
    assert check("change_case:english_lowercase", "the weather is very nice today and the sun is shining", {})
    assert not check("change_case:english_lowercase", "The weather is nice", {})
    assert check(
        "language:response_language",
        "Le soleil se lève lentement sur la mer et le ciel devient rose.",
        {"language": "fr"},
    )
    assert not check(
        "language:response_language", "The sun rises slowly over the sea and the sky turns pink.", {"language": "fr"}
    )
    assert check(
        "startend:end_checker",
        'Moon facts. "Is there anything else I can help with?"',
        {"end_phrase": "Is there anything else I can help with?"},
    )
    assert check("detectable_content:postscript", "Hi!\n\nP.S. see you", {"postscript_marker": "P.S."})
    assert check("combination:two_responses", "Shelly\n******\nTank", {})
    assert not check("combination:two_responses", "Shelly\n******\nShelly", {})
    assert check(
        "keywords:letter_frequency",
        "Best bakery bread",
        {"letter": "b", "let_frequency": 3, "let_relation": "at least"},
    )
    assert (
        check("length_constraints:number_paragraphs", "one\n* * *\ntwo", {"num_paragraphs": 2}) is False
    )  # '* * *' is not '***'
    assert check("length_constraints:number_paragraphs", "one\n***\ntwo", {"num_paragraphs": 2})
    assert count_sentences("Dr. Smith went home. He slept! Did he? Yes.") == 4
    # loose accepts a response whose first line breaks the rule
    resp = "Sure, here it is:\nno commas in this poem"
    assert not check("punctuation:no_comma", resp, {})
    assert check("punctuation:no_comma", resp, {}, loose=True)
    assert not check("punctuation:no_comma", "", {}, loose=True)


def test_language_detection_is_deterministic():
    from driftkit.plugins.benchmarks.ifeval_checks import detect_language

    text = "ok fine"  # short, ambiguous text is where langdetect's randomness shows
    assert len({detect_language(text) for _ in range(5)}) == 1


def test_ifeval_scorer_and_levels():
    b, items = _first(IFEval)
    assert 20 <= len(items) <= 30
    two = next(i for i in items if len(i["instruction_id_list"]) == 2)
    ok = b.score(two, "Cold WIND blows\nsnow falls on quiet hills\nwinter sleeps")
    assert ok["correct"] and ok["strict"] == [True, True]
    half = b.score(two, "cold wind, snow falls")
    assert not half["correct"] and half["strict"] == [False, False]
    one = b.score(two, "Cold WIND, snow")
    assert one["strict"] == [False, True]
    decoy = b.score(two, strip_think("<think>Cold WIND blows</think>cold wind, blows"))
    assert not decoy["correct"]
    recs = {r["metric"]: r["value"] for r in b.aggregate([{"samples": [ok]}, {"samples": [one]}])}
    assert recs["prompt_level_strict_acc"] == pytest.approx(50.0)
    assert recs["inst_level_strict_acc"] == pytest.approx(75.0)


def test_fixtures_are_in_dataset_format():
    """Fixture rows carry the real datasets' field names, so hub rows and fixture rows go through the same code."""
    from pathlib import Path

    d = Path(Math500.fixture).parent
    fields = {
        "math500.jsonl": {"problem", "solution", "answer", "subject", "level", "unique_id"},
        "gpqa_diamond.jsonl": {
            "Question",
            "Correct Answer",
            "Incorrect Answer 1",
            "Incorrect Answer 2",
            "Incorrect Answer 3",
            "Record ID",
        },
        "acpbench.jsonl": {"id", "group", "context", "question", "answer"},
        "humaneval.jsonl": {"task_id", "prompt", "canonical_solution", "test", "entry_point"},
        "ifeval.jsonl": {"key", "prompt", "instruction_id_list", "kwargs"},
    }
    for name, want in fields.items():
        rows = [json.loads(line) for line in (d / name).read_text().splitlines() if line.strip()]
        assert 20 <= len(rows) <= 30, name
        for r in rows:
            assert want <= set(r), (name, want - set(r))
