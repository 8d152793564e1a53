"""Generate the bundled math training set ``bundled:math-train`` (``math_train.jsonl``).

Why generated, not downloaded: driftkit must train the default model offline, and the demo needs
problems a 135M-parameter model can learn within a few minutes on a CPU. Arithmetic and short word
problems have answers that are exact and checkable by math-verify, and their worked solutions are
written by this script, so every solution's final ``\\boxed{}`` answer is correct by construction
(the "teacher solutions, correct answers only" of the paper's SFT recipe).

Each line: ``{"id", "split", "kind", "problem", "answer", "solution"}``. ``split`` is ``train`` or
``heldout``; held-out problems never appear (as text) in the training split. The solution has a short
reasoning block ``<think>...</think>`` followed by the final answer, so ``--no-think`` has something to
strip. The output is deterministic for a given seed: rerun with no arguments to reproduce the file
byte for byte.

    python plugins/trainers/data/make_math_train.py            # writes math_train.jsonl next to this file
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

Item = tuple[str, str, str]  # problem, answer (LaTeX), reasoning (without the think tags)


def _add(r: random.Random) -> Item:
    a, b = r.randint(2, 99), r.randint(2, 99)
    return f"What is {a} + {b}?", str(a + b), f"{a} + {b} = {a + b}"


def _sub(r: random.Random) -> Item:
    a = r.randint(10, 99)
    b = r.randint(1, a - 1)
    return f"What is {a} - {b}?", str(a - b), f"{a} - {b} = {a - b}"


def _mul(r: random.Random) -> Item:
    a, b = r.randint(2, 12), r.randint(2, 12)
    return f"What is {a} * {b}?", str(a * b), f"{a} * {b} = {a * b}"


def _mul2(r: random.Random) -> Item:
    a, b = r.randint(11, 49), r.randint(2, 9)
    t, o = a // 10 * 10, a % 10
    return (
        f"What is {a} * {b}?",
        str(a * b),
        f"{a} * {b} = {t} * {b} + {o} * {b} = {t * b} + {o * b} = {a * b}",
    )


def _div(r: random.Random) -> Item:
    b, q = r.randint(2, 12), r.randint(2, 12)
    return f"What is {b * q} / {b}?", str(q), f"{b} * {q} = {b * q}, so {b * q} / {b} = {q}"


def _two_step(r: random.Random) -> Item:
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 20)
    if r.random() < 0.5:
        return (
            f"Compute {a} * {b} + {c}.",
            str(a * b + c),
            f"First {a} * {b} = {a * b}. Then {a * b} + {c} = {a * b + c}",
        )
    return (
        f"Compute ({a} + {c}) * {b}.",
        str((a + c) * b),
        f"First {a} + {c} = {a + c}. Then {a + c} * {b} = {(a + c) * b}",
    )


def _equation(r: random.Random) -> Item:
    a, x, b = r.randint(2, 9), r.randint(1, 12), r.randint(1, 30)
    c = a * x + b
    return (
        f"Solve for x: {a}x + {b} = {c}.",
        str(x),
        f"Subtract {b}: {a}x = {c - b}. Divide by {a}: x = {x}",
    )


def _fraction(r: random.Random) -> Item:
    b, d = r.choice([2, 3, 4, 5, 6, 8]), r.choice([2, 3, 4, 5, 6, 8])
    a, c = r.randint(1, b - 1), r.randint(1, d - 1)
    s = Fraction(a, b) + Fraction(c, d)
    ans = str(s.numerator) if s.denominator == 1 else f"\\frac{{{s.numerator}}}{{{s.denominator}}}"
    den = b * d // math.gcd(b, d)
    return (
        f"What is {a}/{b} + {c}/{d}? Give the answer as a fraction in lowest terms.",
        ans,
        f"Common denominator {den}: {a * den // b}/{den} + {c * den // d}/{den} = {a * den // b + c * den // d}/{den} "
        f"= {s}",
    )


_NAMES = ["Tom", "Anna", "Li", "Sara", "Omar", "Mia", "Ravi", "Eva", "Ken", "Nora"]
_THINGS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "cards", "shells"]


def _word_left(r: random.Random) -> Item:
    n, t = r.choice(_NAMES), r.choice(_THINGS)
    a = r.randint(8, 60)
    b = r.randint(1, a - 1)
    return (
        f"{n} has {a} {t} and gives away {b}. How many {t} does {n} have left?",
        str(a - b),
        f"{a} - {b} = {a - b}",
    )


def _word_more(r: random.Random) -> Item:
    n, t = r.choice(_NAMES), r.choice(_THINGS)
    a, b = r.randint(2, 50), r.randint(2, 50)
    return (
        f"{n} has {a} {t} and finds {b} more. How many {t} does {n} have now?",
        str(a + b),
        f"{a} + {b} = {a + b}",
    )


def _word_groups(r: random.Random) -> Item:
    t = r.choice(_THINGS)
    a, b = r.randint(2, 9), r.randint(2, 12)
    return (
        f"There are {a} boxes with {b} {t} in each box. How many {t} are there in total?",
        str(a * b),
        f"{a} * {b} = {a * b}",
    )


def _word_share(r: random.Random) -> Item:
    t = r.choice(_THINGS)
    k, q = r.randint(2, 8), r.randint(2, 10)
    return (
        f"{k * q} {t} are shared equally among {k} children. How many {t} does each child get?",
        str(q),
        f"{k * q} / {k} = {q}",
    )


def _word_money(r: random.Random) -> Item:
    n = r.choice(_NAMES)
    price, count = r.randint(2, 9), r.randint(2, 6)
    budget = price * count + r.randint(0, 20)
    return (
        f"{n} has {budget} dollars and buys {count} pens at {price} dollars each. How many dollars are left?",
        str(budget - price * count),
        f"{count} * {price} = {price * count}. {budget} - {price * count} = {budget - price * count}",
    )


#: (generator, weight): mostly problems a small model can learn, a few harder kinds for headroom.
KINDS: dict[str, tuple[Callable[[random.Random], Item], int]] = {
    "add": (_add, 14),
    "sub": (_sub, 12),
    "mul": (_mul, 14),
    "mul2": (_mul2, 6),
    "div": (_div, 8),
    "two_step": (_two_step, 8),
    "equation": (_equation, 6),
    "fraction": (_fraction, 4),
    "word_left": (_word_left, 8),
    "word_more": (_word_more, 8),
    "word_groups": (_word_groups, 6),
    "word_share": (_word_share, 3),
    "word_money": (_word_money, 3),
}


def generate(n_train: int = 3000, n_heldout: int = 300, seed: int = 1234) -> list[dict]:
    """Distinct problems, held-out ones drawn first so the training split never contains them."""
    r = random.Random(seed)
    names = list(KINDS)
    weights = [KINDS[k][1] for k in names]
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_heldout:
        kind = r.choices(names, weights)[0]
        problem, answer, reasoning = KINDS[kind][0](r)
        if problem in seen:
            continue
        seen.add(problem)
        split = "heldout" if len(rows) < n_heldout else "train"
        rows.append(
            {
                "id": f"math-{split}-{len(rows) if split == 'heldout' else len(rows) - n_heldout:05d}",
                "split": split,
                "kind": kind,
                "problem": problem,
                "answer": answer,
                "solution": f"<think>\n{reasoning}\n</think>\nThe answer is $\\boxed{{{answer}}}$.",
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("math_train.jsonl"))
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    rows = generate(a.train, a.heldout, a.seed)
    with open(a.out, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} items to {a.out}")


if __name__ == "__main__":
    main()
