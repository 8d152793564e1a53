"""IFEval (non-reasoning, instruction following): prompts with verifiable format constraints.

Dataset: ``google/IFEval``, split ``train`` (541 prompts; key, prompt, instruction_id_list, kwargs).
Each response is checked against each of its instructions with the checkers in
:mod:`ifeval_checks`; reported as prompt-level (all instructions followed) and instruction-level
accuracy, each strict and loose (loose: the response also counts when it follows the instruction
after dropping its first and/or last line or its ``*`` markup). The primary metric is
``prompt_level_strict_acc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError
from driftkit.plugins.benchmarks.ifeval_checks import CHECKERS, check
from driftkit.registry.benchmark import Benchmark
from driftkit.scores import mean_stderr

METRICS = ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc")


class IFEval(Benchmark):
    name = "ifeval"
    domain = "non"
    description = "IFEval verifiable instruction following (prompt/instruction level, strict/loose)"
    dataset_id = "google/IFEval"
    split = "train"
    fixture = Path(__file__).parent / "fixtures" / "ifeval.jsonl"
    max_new_tokens = 160
    primary_metric = "prompt_level_strict_acc"

    def item_id(self, item: dict[str, Any], index: int) -> str:
        return str(item.get("key", index))

    def normalize(self, row: dict[str, Any]) -> dict[str, Any]:
        unknown = [i for i in row["instruction_id_list"] if i not in CHECKERS]
        if unknown:
            raise DriftkitError(
                f"IFEval item {row.get('key')} uses instruction(s) {', '.join(unknown)} that driftkit has no checker "
                "for."
            )
        return row

    def build_prompt(self, item: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": "user", "content": item["prompt"]}]

    def score(self, item: dict[str, Any], answer: str) -> dict[str, Any]:
        ids = item["instruction_id_list"]
        kws = item.get("kwargs") or [{}] * len(ids)
        strict = [check(i, answer, kw) for i, kw in zip(ids, kws)]
        loose = [check(i, answer, kw, loose=True) for i, kw in zip(ids, kws)]
        return {"correct": all(strict), "strict": strict, "loose": loose, "loose_all": all(loose)}

    def aggregate(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Prompt level: mean over prompts; instruction level: mean over all (prompt, instruction)
        pairs, as the reference does (samples of an item are averaged first)."""
        vals: dict[str, list[float]] = {m: [] for m in METRICS}
        for r in results:
            ss = r["samples"]
            vals["prompt_level_strict_acc"].append(sum(all(s["strict"]) for s in ss) / len(ss))
            vals["prompt_level_loose_acc"].append(sum(all(s["loose"]) for s in ss) / len(ss))
            for k in range(len(ss[0]["strict"])):
                vals["inst_level_strict_acc"].append(sum(s["strict"][k] for s in ss) / len(ss))
                vals["inst_level_loose_acc"].append(sum(s["loose"][k] for s in ss) / len(ss))
        recs = []
        for m in METRICS:
            mu, se = mean_stderr(vals[m])
            recs.append(self.record(m, 100 * mu, len(vals[m]), 100 * se, primary=(m == self.primary_metric)))
        return recs
