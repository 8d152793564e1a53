"""GRPO reward functions for math: answer correctness and answer format.

Why the reward lives beside the trainers but its rules do not: the paper's RL recipe rewards exactly
what its math benchmarks score, the final answer's mathematical equivalence to the gold answer. The
extraction and the equivalence check are :mod:`driftkit.answers`, which MATH-500 and the held-out
benchmark use too, so "reward went up" and "accuracy went up" stay the same claim (tested in
``tests/test_answers.py``). This module only adapts those rules to TRL's reward-function signature.

Rules (fixed, tested in tests/test_reward.py): see :mod:`driftkit.answers`. A gold answer
math-verify cannot parse gives ``None`` ("skip this sample"), never a reward: a broken label must
not teach the model anything. TRL treats ``None`` as NaN and, as every completion of that prompt
gets ``None``, the group's advantage is 0, so it contributes no gradient.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from driftkit.answers import (  # noqa: F401  (run_with_timeout, parse_gold: part of this module's API)
    DEFAULT_TIMEOUT_S,
    final_answer,
    last_boxed,
    parse_gold,
    run_with_timeout,
    score_math,
    strip_think,
)

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")

#: the final boxed answer of a completion after any reasoning block, or ``None``
extract_answer = final_answer


def answer_reward(completion: str, gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> float | None:
    """1.0 if the completion's final boxed answer equals ``gold``, 0.0 if not (or no answer, or the
    check timed out), ``None`` if ``gold`` cannot be parsed (skip the sample)."""
    correct = score_math(completion, gold, boxed_only=True, timeout_s=timeout_s).correct
    return None if correct is None else float(correct)


def format_ok(completion: str) -> bool:
    """Whether a completion is well formed: at most one reasoning block, closed, then exactly one
    boxed answer. "Exactly one" matters: a reward for "has a box" is hacked within a few GRPO steps
    by boxing everything (seen on the default model: ``\\boxed{2}\\n\\boxed{2}\\n...``)."""
    if completion.count(_THINK_OPEN) > 1 or completion.count(_THINK_CLOSE) > 1:
        return False
    if _THINK_OPEN in completion and _THINK_CLOSE not in completion:
        return False  # reasoning never closed: no answer
    region = strip_think(completion)
    if len(_BOXED.findall(region)) != 1:
        return False
    return last_boxed(region) is not None


def completion_text(completion: Any) -> str:
    """TRL passes completions as strings (plain data) or as message lists (conversational data)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def math_accuracy_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float | None]:
    """TRL GRPO reward function: answer correctness per completion (``answer`` is the dataset column)."""
    timeout_s = kwargs.get("timeout_s", DEFAULT_TIMEOUT_S)
    return [answer_reward(completion_text(c), g, timeout_s) for c, g in zip(completions, answer, strict=True)]


def math_format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """TRL GRPO reward function: 1.0 for a well-formed completion (see :func:`format_ok`), else 0.0."""
    return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]


def accuracy(
    completions: Sequence[str], golds: Sequence[str], timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> tuple[float, int]:
    """Mean correctness (0-1) over samples with a parseable gold answer, and how many were scored."""
    scores = [answer_reward(c, g, timeout_s) for c, g in zip(completions, golds, strict=True)]
    kept = [s for s in scores if s is not None]
    return (sum(kept) / len(kept) if kept else float("nan")), len(kept)
