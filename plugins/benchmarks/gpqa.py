"""GPQA-Diamond (other reasoning, science QA): four-option questions, letter extraction.

Dataset: ``Idavidrein/gpqa``, config ``gpqa_diamond``, split ``train`` (198 items). It is gated:
accept its terms on the hub and log in (``huggingface-cli login`` or ``HF_TOKEN``); without a token
loading fails with a message that says so. Options are shuffled per item with a generator seeded
by (seed, Record ID), so every model sees the same order and the correct letter is not always A.
Letter extraction (in order): the last ``\\boxed{X}``, the last "answer is (X)" / "Answer: X", the
last standalone letter; the share of answers where none is found is reported as
``extraction_failure_rate``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from driftkit.answers import extract_choice
from driftkit.registry.benchmark import Benchmark

LETTERS = "ABCD"
PROMPT = (
    "Answer the following multiple choice question. Think step by step, then give your final answer on "
    "the last line in the form 'Answer: X' where X is one of A, B, C or D.\n\n{question}\n\n{options}"
)


class GPQADiamond(Benchmark):
    name = "gpqa"
    domain = "other"
    description = "GPQA-Diamond graduate-level science QA, seeded option shuffle, letter extraction (accuracy)"
    dataset_id = "Idavidrein/gpqa"
    dataset_config = "gpqa_diamond"
    split = "train"
    gated = True
    fixture = Path(__file__).parent / "fixtures" / "gpqa_diamond.jsonl"
    max_new_tokens = 128
    primary_metric = "accuracy"

    def item_id(self, item: dict[str, Any], index: int) -> str:
        return str(item.get("Record ID") or index)

    def normalize(self, row: dict[str, Any]) -> dict[str, Any]:
        item = dict(row)
        rid = str(row.get("Record ID") or row["Question"][:64])
        options = [
            row["Correct Answer"],
            row["Incorrect Answer 1"],
            row["Incorrect Answer 2"],
            row["Incorrect Answer 3"],
        ]
        options = [str(o).strip() for o in options]
        digest = hashlib.sha256(f"{self.seed}:{rid}".encode()).hexdigest()
        order = list(range(4))
        random.Random(int(digest[:16], 16)).shuffle(order)
        item["_options"] = [options[k] for k in order]
        item["_gold"] = LETTERS[order.index(0)]
        return item

    def build_prompt(self, item: dict[str, Any]) -> list[dict[str, str]]:
        opts = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(item["_options"]))
        return [{"role": "user", "content": PROMPT.format(question=str(item["Question"]).strip(), options=opts)}]

    def score(self, item: dict[str, Any], answer: str) -> dict[str, Any]:
        letter = extract_choice(answer, LETTERS)
        return {
            "correct": letter == item["_gold"],
            "extracted": letter,
            "gold": item["_gold"],
            "extraction_failed": letter is None,
        }

    def aggregate(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        recs = super().aggregate(results)
        n = len(results)
        failed = sum(sum(bool(s["extraction_failed"]) for s in r["samples"]) / len(r["samples"]) for r in results)
        recs.append(self.record("extraction_failure_rate", 100.0 * failed / max(n, 1), n, None))
        return recs
