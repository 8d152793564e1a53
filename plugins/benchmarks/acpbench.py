"""ACPBench (other reasoning, planning): yes/no and four-option questions about planning problems.

Dataset: ``ibm-research/acp_bench``, 14 configs ``acp_<task>_<bool|mcq>`` for the seven tasks
(applicability, progression, reachability, action reachability, validation, justification,
landmarks), split ``test``; rows: id, group, context, question, answer (``yes``/``no`` for bool,
a letter for mcq; mcq rows also carry ``choices`` and ``query``). Prompting is 2-shot chain of
thought given as previous chat turns (as lm-eval's ``acp_*_cot_2shot`` tasks with
``--fewshot_as_multiturn``); the score is accuracy per subtask (config), macro-averaged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftkit.answers import extract_choice, extract_yes_no
from driftkit.registry.benchmark import Benchmark
from driftkit.scores import mean_stderr

TASKS = ("app", "areach", "just", "land", "prog", "reach", "val")
CONFIGS = tuple(f"acp_{t}_{kind}" for t in TASKS for kind in ("bool", "mcq"))

INSTRUCTION = {
    "bool": "Answer the question about the planning problem. Think step by step in **Thoughts**, then end with "
    "'**Final Answer**: yes' or '**Final Answer**: no'.",
    "mcq": "Answer the multiple-choice question about the planning problem. Think step by step in **Thoughts**, then "
    "end with '**Final Answer**: X' where X is the letter of the correct option.",
}

_BW = (
    "This is a blocksworld domain where blocks can be placed on top of each other or on the table. A robotic arm "
    "can pick up a clear block from the table, unstack a clear block from another block, put a held block down on "
    "the table, or stack a held block on a clear block. The arm holds at most one block. "
)
SHOTS: dict[str, list[tuple[str, str]]] = {
    "bool": [
        (
            _BW + "Currently block b1 is on the table, block b2 is on b1, block b2 is clear, and the arm is empty. "
            "Is the following action applicable in this state: pick up block b1 from the table?",
            "**Thoughts**: Picking up a block from the table requires the block to be clear and the arm to be empty. "
            "Block b2 is on b1, so b1 is not clear. The action is not applicable. **Final Answer**: no",
        ),
        (
            _BW + "Currently blocks b1 and b2 are on the table, both are clear, and the arm is empty. "
            "Is the following action applicable in this state: pick up block b2 from the table?",
            "**Thoughts**: b2 is on the table, b2 is clear and the arm is empty, so every precondition holds. "
            "**Final Answer**: yes",
        ),
    ],
    "mcq": [
        (
            _BW + "Currently block b1 is on the table, block b2 is on b1, block b2 is clear, and the arm is empty. "
            "Which of the following actions is applicable in this state? A. pick up block b1 from the table. "
            "B. unstack block b2 from block b1. C. put down block b2. D. stack block b1 on block b2.",
            "**Thoughts**: The arm is empty, so C and D (which need a held block) are not applicable. b1 is not clear, "
            "so A is not applicable. b2 is clear and on b1 with the arm empty, so B is applicable. **Final Answer**: B",
        ),
        (
            _BW + "Currently the arm holds block b1, block b2 is on the table and clear. Which of the following facts "
            "holds after the action 'stack block b1 on block b2'? A. the arm holds block b1. B. block b2 is clear. "
            "C. block b1 is on block b2. D. block b1 is on the table.",
            "**Thoughts**: Stacking b1 on b2 puts b1 on b2, empties the arm and makes b2 not clear. Only C holds. "
            "**Final Answer**: C",
        ),
    ],
}


def _kind(item: dict[str, Any]) -> str:
    cfg = str(item.get("_config") or "")
    if cfg.endswith("_mcq") or "choices" in item:
        return "mcq"
    return "bool"


class ACPBench(Benchmark):
    name = "acpbench"
    domain = "other"
    description = "ACPBench planning, bool + MCQ over 7 tasks, 2-shot CoT, macro-averaged accuracy"
    dataset_id = "ibm-research/acp_bench"
    dataset_config = CONFIGS
    split = "test"
    fixture = Path(__file__).parent / "fixtures" / "acpbench.jsonl"
    max_new_tokens = 128
    primary_metric = "accuracy"

    def item_id(self, item: dict[str, Any], index: int) -> str:
        return f"{item.get('_config', '')}/{item.get('id', index)}"

    def build_prompt(self, item: dict[str, Any]) -> list[dict[str, str]]:
        kind = _kind(item)
        question = str(item["question"]).strip()
        if kind == "mcq" and item.get("choices") and "A." not in question:
            ch = item["choices"]
            question += " " + " ".join(f"{lab}. {txt}" for lab, txt in zip(ch["label"], ch["text"]))
        msgs: list[dict[str, str]] = []
        for k, (q, a) in enumerate(SHOTS[kind]):
            prefix = INSTRUCTION[kind] + "\n\n" if k == 0 else ""
            msgs.append({"role": "user", "content": f"{prefix}**Question**: {q}"})
            msgs.append({"role": "assistant", "content": a})
        msgs.append({"role": "user", "content": f"**Question**: {str(item['context']).strip()} {question}"})
        return msgs

    def score(self, item: dict[str, Any], answer: str) -> dict[str, Any]:
        gold = str(item["answer"]).strip()
        if _kind(item) == "mcq":
            letters = "".join(item["choices"]["label"]) if item.get("choices") else "ABCD"
            got = extract_choice(answer, letters)
            ok = got is not None and got == gold.upper()
        else:
            got = extract_yes_no(answer)
            ok = got is not None and got == gold.lower()
        return {"correct": ok, "extracted": got, "gold": gold, "extraction_failed": got is None}

    def aggregate(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Accuracy per subtask (config), then the unweighted mean over subtasks (macro average);
        also the macro averages over the bool and the mcq subtasks alone."""
        by_cfg: dict[str, list[float]] = {}
        for r in results:
            by_cfg.setdefault(r["config"], []).append(
                sum(float(s["correct"]) for s in r["samples"]) / len(r["samples"])
            )
        n = len(results)
        recs = []

        def macro(cfgs: list[str]) -> tuple[float, float]:
            stats = [mean_stderr(by_cfg[c]) for c in cfgs]
            mu = sum(m for m, _ in stats) / len(stats)
            se = (sum(s * s for _, s in stats) ** 0.5) / len(stats)
            return 100 * mu, 100 * se

        mu, se = macro(sorted(by_cfg))
        recs.append(self.record("accuracy", mu, n, se, primary=True))
        for kind in ("bool", "mcq"):
            cfgs = sorted(c for c in by_cfg if c.endswith("_" + kind))
            if cfgs:
                mu, se = macro(cfgs)
                recs.append(self.record(f"accuracy_{kind}", mu, sum(len(by_cfg[c]) for c in cfgs), se))
        return recs
