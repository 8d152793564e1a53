"""Answer extraction and math equivalence, shared by the RL reward and the benchmarks.

Why one module: the paper's claim is that RL on math keeps general abilities while SFT forgets them;
driftkit checks it by comparing rewards during training with benchmark accuracy after it. That
comparison only means something when "the model's answer" and "equals the gold answer" are decided
by the same code in both places, so the reward (``driftkit.plugins.trainers.rewards``), MATH-500 and
the held-out set (``driftkit.plugins.benchmarks``) and the multiple-choice extractors all read
answers through this module. ``tests/test_answers.py`` checks that reward and benchmark agree.

Rules:

- Reasoning is removed first (:func:`strip_think`, rule :data:`THINK_RULE`): a number inside a
  ``<think>`` block never counts, and a block that is never closed means no answer was given.
- The answer is the **last** non-empty ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces
  (:func:`last_boxed`); an empty box (an echo of the instruction) or one cut off mid-answer falls back
  to the box before it.
- Equivalence is math-verify's ``verify(gold, pred)`` (gold first), so ``\\frac{1}{2}``, ``0.5`` and
  ``1/2`` match and ``x = 2`` matches ``2``. A gold answer math-verify cannot parse is "no label":
  :func:`parse_gold` returns ``None`` and the reward skips the sample.
- math-verify's own timeouts use ``signal.alarm``, which only works on the main thread (TRL and data
  loaders may call reward functions from other threads, and an alarm would also clobber the host's
  own SIGALRM handler). They are always disabled here; each check instead runs in a worker thread
  with a deadline of its own, and a check past its deadline is interrupted by an asynchronous
  exception (sympy is pure Python, so it stops at the next bytecode) and counts as wrong.
- The one deliberate difference: without any box, a benchmark (``boxed_only=False``) lets
  math-verify find the answer in the text, as MATH-500 evaluations do; the reward pays only for a
  boxed answer, so it teaches the format it scores.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

#: default seconds one parse+verify may take before the answer counts as wrong
DEFAULT_TIMEOUT_S = 5.0

THINK_RULE = (
    "remove every <think>...</think> block; text before a lone </think> is reasoning and dropped; "
    "an unclosed <think> means the answer was never given (empty answer)"
)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s${}]+)")

T = TypeVar("T")

# math-verify warns once that timeouts are disabled "you must handle it yourself": we do.
logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
logging.getLogger("math_verify.grader").setLevel(logging.ERROR)


def strip_think(text: str) -> str:
    """Return only the answer part of a reasoning model's output (rule: :data:`THINK_RULE`).

    Why the unclosed case is empty: a reasoning trace cut by ``max_new_tokens`` often contains
    candidate answers ("maybe it is 5"); scoring those would reward unfinished reasoning.
    """
    out = _THINK_BLOCK.sub("", text)
    low = out.lower()
    if "</think>" in low:  # template put <think> in the prompt: everything before the close is reasoning
        out = out[low.rfind("</think>") + len("</think>") :]
        low = out.lower()
    if "<think>" in low:
        out = out[: low.find("<think>")]
    return out.strip()


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed{...}``/``\\fbox{...}`` (balanced braces), else of a
    trailing ``\\boxed X``; ``None`` when there is none.

    An empty box or one cut off before its closing brace is skipped for the one before it: the
    first echoes the prompt's instruction, the second is an unfinished answer.
    """
    for m in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(m.end(), len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    content = text[m.end() : i].strip()
                    if content:
                        return content
                    break
    bare = _BOXED_BARE.findall(text)
    return bare[-1] if bare else None


def final_answer(text: str) -> str | None:
    """The boxed answer of a model output after its reasoning, or ``None`` (see the module rules)."""
    return last_boxed(strip_think(text))


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The chosen option letter in a free-form answer, or None when none can be found.

    Order (most to least explicit): the last ``\\boxed{X}``; the last "answer is (X)" /
    "answer: X" / "Answer X"; the last standalone capital letter among ``letters``. Taking the
    *last* match of each kind is what makes "Is it (A)? No... the answer is (C)" score as C.
    """
    cls = f"[{letters}]"
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.search(rf"\b({cls})\b", re.sub(r"\\text\{(.*?)\}", r"\1", boxed))
        if m:
            return m.group(1)
    # "answer" case-insensitive, the letter itself case-sensitive ("the answer is a bit..." is no A)
    pats = [rf"answer\**\s*(?:is|:)?\s*\**\s*(?:option\s*)?[\(\[]?\$?\s*((?-i:{cls}))\s*\**[\)\]]?(?![A-Za-z0-9])"]
    found: list[tuple[int, str]] = []
    for p in pats:
        for m in re.finditer(p, text, re.IGNORECASE):
            if m.group(1).upper() in letters:
                found.append((m.start(), m.group(1).upper()))
    if found:
        return max(found)[1]
    standalone = re.findall(rf"(?<![A-Za-z0-9_'])\(?({cls})\)?(?![A-Za-z0-9_'])", text)
    return standalone[-1] if standalone else None


def extract_yes_no(text: str) -> str | None:
    """``"yes"``/``"no"`` from a free-form answer: the last "answer is yes/no", else the last
    standalone yes/no word; None when neither appears."""
    m = list(re.finditer(r"answer\**\s*(?:is|:)\s*\**\s*\"?(yes|no)\b", text, re.IGNORECASE))
    if m:
        return m[-1].group(1).lower()
    boxed = last_boxed(text)
    if boxed is not None:
        b = re.search(r"\b(yes|no)\b", boxed, re.IGNORECASE)
        if b:
            return b.group(1).lower()
    words = re.findall(r"\b(yes|no)\b", text, re.IGNORECASE)
    return words[-1].lower() if words else None


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


def equivalent(pred: str, gold_parsed: list[Any], timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the answer ``pred`` (a bare expression) equals a gold answer parsed by :func:`parse_gold`;
    a check past ``timeout_s`` counts as not equal."""
    ok, correct = run_with_timeout(_check, timeout_s, pred, gold_parsed)
    return bool(ok and correct)


@dataclass
class MathScore:
    """How one output scored against a gold answer."""

    correct: bool | None  # None: the gold answer cannot be parsed (no label)
    extracted: str | None  # the answer that was checked (None: no answer found)


def _parse_text(text: str) -> list[Any]:
    """math-verify's own extraction from free text (its default configs): the benchmark fallback."""
    from math_verify import parse

    return list(parse(text, parsing_timeout=None))


def score_math(
    text: str, gold: str, *, boxed_only: bool = True, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> MathScore:
    """Score a model output against ``gold`` by the module rules.

    Parameters
    ----------
    text
        The model's output; reasoning blocks are stripped here (stripping twice changes nothing).
    gold
        The gold answer as written in the data (``"\\frac{1}{2}"``, ``"68"``).
    boxed_only
        ``True`` (the reward): only a boxed answer counts. ``False`` (benchmarks): without a box,
        math-verify looks for the answer in the text.
    timeout_s
        Deadline of each math-verify call, in seconds (``None``: no deadline).

    Returns
    -------
    MathScore
        ``correct`` is ``None`` when ``gold`` cannot be parsed.
    """
    gold_parsed = parse_gold(gold, timeout_s)
    answer = strip_think(text)
    boxed = last_boxed(answer)
    if gold_parsed is None:
        return MathScore(None, boxed)
    if boxed is not None:
        return MathScore(equivalent(boxed, gold_parsed, timeout_s), boxed)
    if boxed_only or not answer.strip():
        return MathScore(False, None)
    ok, pred = run_with_timeout(_parse_text, timeout_s, answer)
    if not ok or not pred:
        return MathScore(False, None)
    ok, correct = run_with_timeout(_verify_parsed, timeout_s, gold_parsed, pred)
    return MathScore(bool(ok and correct), str(pred[-1]))


def _verify_parsed(gold_parsed: list[Any], pred_parsed: list[Any]) -> bool:
    from math_verify import verify

    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
