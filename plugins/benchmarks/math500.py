"""MATH-500 (math group): competition problems, final answer in ``\\boxed{}``, scored with math-verify.

Dataset: ``HuggingFaceH4/MATH-500`` (split ``test``; fields problem, solution, answer, subject,
level, unique_id). Scoring is :func:`driftkit.answers.score_math`, the same rules as the RL reward:
the last boxed answer after the reasoning block, math-verify equivalence with the gold answer (gold
first). The benchmark's one leniency: an answer with no box is looked for in the text by math-verify.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftkit.answers import score_math
from driftkit.registry.benchmark import Benchmark

PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."


class Math500(Benchmark):
    name = "math500"
    domain = "math"
    description = "MATH-500 competition math, boxed answer verified with math-verify (accuracy)"
    dataset_id = "HuggingFaceH4/MATH-500"
    split = "test"
    fixture = Path(__file__).parent / "fixtures" / "math500.jsonl"
    max_new_tokens = 160
    primary_metric = "accuracy"

    def item_id(self, item: dict[str, Any], index: int) -> str:
        return str(item.get("unique_id") or index)

    def build_prompt(self, item: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": "user", "content": PROMPT.format(problem=item["problem"])}]

    def score(self, item: dict[str, Any], answer: str) -> dict[str, Any]:
        try:
            res = score_math(answer, str(item["answer"]), boxed_only=False)
        except Exception:  # a pathological expression must not stop a whole run
            return {"correct": False, "extracted": None, "extraction_failed": True}
        return {"correct": bool(res.correct), "extracted": res.extracted, "extraction_failed": res.extracted is None}

    def aggregate(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        recs = super().aggregate(results)
        n = len(results)
        failed = sum(all(s.get("extraction_failed") for s in r["samples"]) for r in results)
        recs.append(self.record("extraction_failure_rate", 100.0 * failed / max(n, 1), n, None))
        return recs
