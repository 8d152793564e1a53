"""HumanEval (other reasoning, coding): complete a Python function, run its unit tests, pass@k.

Dataset: ``openai/openai_humaneval``, split ``test`` (164 items; task_id, prompt,
canonical_solution, test, entry_point). The model's code is taken from its first fenced code
block (or the whole answer), joined to the prompt, followed by the tests and ``check(entry_point)``,
and run in :mod:`driftkit.sandbox` (own process, CPU/memory/process/file-size limits, wall-clock
timeout, temp dir, no inherited secrets). pass@1 with one greedy sample; with n samples per item,
the unbiased pass@k estimator of Chen et al. 2021: ``1 - C(n-c, k) / C(n, k)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from driftkit.plugins.benchmarks.sandbox import SandboxLimits, run_python
from driftkit.registry.benchmark import Benchmark
from driftkit.scores import mean_stderr

PROMPT = (
    "Complete the following Python function. Reply with the complete function, including its signature, in one "
    "```python code block.\n\n```python\n{prompt}```"
)
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for n samples of which c passed (Chen et al. 2021), numerically stable form."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def extract_code(answer: str, entry_point: str) -> str:
    """The code in a model answer: the first fenced block defining ``entry_point``, else the first
    fenced block, else the answer itself (a bare completion of the function body)."""
    blocks = _FENCE.findall(answer)
    for b in blocks:
        if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b):
            return b
    return blocks[0] if blocks else answer


def build_program(item: dict[str, Any], answer: str) -> str:
    code = extract_code(answer, item["entry_point"])
    if re.search(rf"def\s+{re.escape(item['entry_point'])}\s*\(", code):
        # keep the prompt's imports/helpers; the model's definition comes later and wins
        body = item["prompt"] + "\n    pass\n\n" + code
    else:
        body = item["prompt"] + code
    return f"{body}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"


class HumanEval(Benchmark):
    name = "humaneval"
    domain = "other"
    description = "HumanEval Python function completion, unit tests in a sandbox (pass@1)"
    dataset_id = "openai/openai_humaneval"
    split = "test"
    fixture = Path(__file__).parent / "fixtures" / "humaneval.jsonl"
    max_new_tokens = 160
    primary_metric = "pass@1"
    limits = SandboxLimits(
        wall_seconds=5.0, cpu_seconds=5, memory_bytes=1 << 30, max_processes=8, file_size_bytes=8 << 20
    )

    def item_id(self, item: dict[str, Any], index: int) -> str:
        return str(item.get("task_id") or index)

    def build_prompt(self, item: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": "user", "content": PROMPT.format(prompt=item["prompt"])}]

    def score(self, item: dict[str, Any], answer: str) -> dict[str, Any]:
        res = run_python(build_program(item, answer), self.limits)
        return {"correct": res.ok, "status": res.status, "reason": res.reason[:200]}

    def aggregate(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        n_s = min(len(r["samples"]) for r in results)
        recs = []
        for k in (1, 10, 100):
            if k > n_s:
                break
            vals = [pass_at_k(len(r["samples"]), sum(bool(s["correct"]) for s in r["samples"]), k) for r in results]
            mu, se = mean_stderr(vals)
            recs.append(self.record(f"pass@{k}", 100 * mu, len(results), 100 * se, primary=(k == 1)))
        return recs
