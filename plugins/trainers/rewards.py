"""Answer-correctness scoring for math: the RL reward and the accuracy metric of the training demo.

Why one module for both: the paper's RL recipe rewards exactly what its math benchmarks score, the
final answer's mathematical equivalence to the gold answer. Using the same function for the GRPO
reward and for the before/after accuracy keeps "reward went up" and "accuracy went up" the same claim.

Rules (fixed, tested in tests/test_reward.py):

- The answer is the **last** ``\\boxed{...}`` (or ``\\fbox{...}``) **after** the reasoning block: text
  up to the last ``</think>`` is ignored. A ``<think>`` that is never closed means the model never
  got to an answer (it was cut off while reasoning): no answer, reward 0.
- Equivalence is decided by math-verify (``parse`` + ``verify``), so ``\\frac{1}{2}``, ``0.5`` and
  ``1/2`` all match, and ``x = 2`` matches ``2``.
- A gold answer math-verify cannot parse (no math object, only its raw-string fallback) gives ``None`` ("skip this sample"), never a reward: a
  broken label must not teach the model anything. TRL treats ``None`` as NaN and, as every completion
  of that prompt gets ``None``, the group's advantage is 0, so it contributes no gradient.
- math-verify's own timeouts use ``signal.alarm``, which only works on the main thread (TRL and data
  loaders may call reward functions from other threads, and an alarm would also clobber the host's
  own SIGALRM handler). They are always disabled here; each check instead runs in a worker thread
  with a deadline of its own, and a check past its deadline is interrupted by an asynchronous
  exception (sympy is pure Python, so it stops at the next bytecode) and scores 0.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import re
import threading
from typing import Any, Callable, Sequence, TypeVar

#: default seconds one parse+verify may take before the sample scores 0
DEFAULT_TIMEOUT_S = 5.0

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")

T = TypeVar("T")

# math-verify warns once that timeouts are disabled "you must handle it yourself": we do.
logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
logging.getLogger("math_verify.grader").setLevel(logging.ERROR)


class CheckTimeout(BaseException):
    """Raised inside a worker thread whose check ran past its deadline.

    A ``BaseException`` on purpose: math-verify wraps its work in ``except Exception`` blocks, which
    would otherwise swallow the interruption and keep going.
    """


def run_with_timeout(fn: Callable[..., T], timeout_s: float | None, *args: Any, **kwargs: Any) -> tuple[bool, T | None]:
    """Run ``fn(*args, **kwargs)`` with a wall-clock deadline; returns ``(finished, result)``.

    Works from any thread (no signals). On timeout the worker thread gets a :class:`CheckTimeout`
    raised asynchronously, so a runaway sympy simplification stops instead of burning a core for the
    rest of the run. Exceptions raised by ``fn`` propagate.
    """
    if timeout_s is None or timeout_s <= 0:
        return True, fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except CheckTimeout:
            box["timeout"] = True
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="driftkit-math-verify", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(CheckTimeout))
        worker.join(1.0)
        return False, None
    if "error" in box:
        raise box["error"]
    if box.get("timeout"):
        return False, None
    return True, box.get("value")


def answer_region(text: str) -> str | None:
    """The part of a completion that may hold the final answer: after the last ``</think>``.

    ``None`` when a reasoning block was opened and never closed (the answer was never given).
    """
    close = text.rfind(_THINK_CLOSE)
    if close >= 0:
        return text[close + len(_THINK_CLOSE):]
    if _THINK_OPEN in text:
        return None
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` with balanced braces, or ``None``."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:  # an empty \boxed{} (echoing the instruction) is no answer
                        return content
                    break
        # unbalanced (cut off mid-answer): try an earlier box
    return None


def extract_answer(completion: str) -> str | None:
    """The final boxed answer of a completion after any reasoning block, or ``None``."""
    region = answer_region(completion)
    if region is None:
        return None
    return last_boxed(region)


def _extraction_configs() -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _as_math(text: str) -> str:
    """Wrap a bare answer in ``$...$`` so math-verify's LaTeX extractor sees it as math."""
    t = text.strip()
    if "$" in t or "\\boxed" in t or "\\(" in t or "\\[" in t:
        return t
    return f"${t}$"


@functools.lru_cache(maxsize=65536)
def _parse_gold_cached(gold: str) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(_as_math(gold), extraction_config=_extraction_configs(), parsing_timeout=None))


def parse_gold(gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> list[Any] | None:
    """math-verify's parse of a gold answer, or ``None`` when it cannot be parsed (or times out)."""
    if gold is None or not str(gold).strip():
        return None
    ok, parsed = run_with_timeout(_parse_gold_cached, timeout_s, str(gold))
    # math-verify falls back to the raw string when it finds no math (['???']): that is not a gold
    # answer a completion can be checked against, so it counts as unparseable.
    if not ok or not parsed or all(isinstance(p, str) for p in parsed):
        return None
    return list(parsed)


def _check(pred: str, gold_parsed: list[Any]) -> bool:
    from math_verify import parse, verify

    pred_parsed = parse(_as_math(pred), extraction_config=_extraction_configs(), parsing_timeout=None)
    if not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def answer_reward(completion: str, gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> float | None:
    """1.0 if the completion's final boxed answer equals ``gold``, 0.0 if not (or no answer, or the
    check timed out), ``None`` if ``gold`` cannot be parsed (skip the sample)."""
    gold_parsed = parse_gold(gold, timeout_s)
    if gold_parsed is None:
        return None
    pred = extract_answer(completion)
    if pred is None:
        return 0.0
    ok, correct = run_with_timeout(_check, timeout_s, pred, gold_parsed)
    return 1.0 if ok and correct else 0.0


def format_ok(completion: str) -> bool:
    """Whether a completion is well formed: at most one reasoning block, closed, then exactly one
    boxed answer. "Exactly one" matters: a reward for "has a box" is hacked within a few GRPO steps
    by boxing everything (seen on the default model: ``\\boxed{2}\\n\\boxed{2}\\n...``)."""
    if completion.count(_THINK_OPEN) > 1 or completion.count(_THINK_CLOSE) > 1:
        return False
    region = answer_region(completion)
    if region is None or len(_BOXED.findall(region)) != 1:
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


def accuracy(completions: Sequence[str], golds: Sequence[str], timeout_s: float | None = DEFAULT_TIMEOUT_S) -> tuple[float, int]:
    """Mean correctness (0-1) over samples with a parseable gold answer, and how many were scored."""
    scores = [answer_reward(c, g, timeout_s) for c, g in zip(completions, golds, strict=True)]
    kept = [s for s in scores if s is not None]
    return (sum(kept) / len(kept) if kept else float("nan")), len(kept)
