"""Held-out bundled math (math group): the 300 problems of ``bundled:math-train:heldout``.

Why a second math benchmark: MATH-500 is far beyond a 135M model, so on the CPU demo every model
sits at its floor and the math change that the transferability index divides by is zero. These
problems (arithmetic, sharing, linear equations) come from the same generator as the trainers'
``bundled:math-train`` data but were never trained on, so they measure whether math training
taught the task at all, the in-domain half of the paper's question. Prompt and scoring match the
trainers': the problem plus the reward's instruction to box the answer, math-verify on the final
``\\boxed{}``. No hub copy exists: the bundled file is the benchmark in every ``--data`` mode.
"""

from __future__ import annotations

from typing import Any

from driftkit.plugins.benchmarks.math500 import Math500
from driftkit.plugins.trainers.mathdata import bundled_file, load_math_data, user_prompt


class MathHeldout(Math500):
    name = "math_heldout"
    domain = "math"
    description = "held-out bundled math problems (never trained on), boxed answer verified with math-verify (accuracy)"
    dataset_id = ""
    split = "heldout"
    fixture = bundled_file("math-train")
    max_new_tokens = 96

    def load_fixture(self) -> list[dict[str, Any]]:
        return load_math_data("bundled:math-train:heldout").rows

    def item_id(self, item: dict[str, Any], index: int) -> str:
        return str(item["id"])

    def build_prompt(self, item: dict[str, Any]) -> list[dict[str, str]]:
        return [{"role": "user", "content": user_prompt(item["problem"])}]
