"""Math training data: one loader for JSONL files, Hugging Face datasets and the bundled set.

Why a loader of its own: both trainers need the same three columns (``problem``, ``answer`` and, for
SFT, ``solution``) whatever the source calls them, the same prompt wording at training and at
evaluation time, and a content hash of exactly what was trained on for the run manifest.

Data specs (``--data``):

- ``path/to/file.jsonl``: one JSON object per line;
- ``hf:DATASET[:CONFIG]:SPLIT``: ``datasets.load_dataset(DATASET, CONFIG, split=SPLIT)``; DATASET may
  be a hub id or a local dataset folder;
- ``probes:math-train[:SPLIT]``: the bundled generated set (SPLIT ``train``, the default, or
  ``heldout``, a fixed set of problems that never occur in ``train``).

``--columns problem=question,answer=final_answer`` maps driftkit's names to the source's columns.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from driftkit.errors import DriftkitError

#: Instruction appended to every problem, at training and at evaluation time (the usual wording of
#: math RL/SFT recipes; the reward reads the final \boxed{} answer).
PROMPT_SUFFIX = " Put your final answer within \\boxed{}."

#: Bundled sets: name -> (package holding the file, file inside it). The file is package data of the
#: trainer plugins' package, found through importlib.resources (nothing of the plugin is imported).
BUNDLED_SETS: dict[str, tuple[str, str]] = {
    "math-train": ("driftkit.plugins.trainers", "data/math_train.jsonl"),
}
BUNDLED_SPLITS = ("train", "heldout")

COLUMNS = ("problem", "answer", "solution")

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


@dataclass
class MathData:
    """Loaded rows with driftkit's column names, plus where they came from."""

    rows: list[dict[str, Any]]  # each: id, problem, answer (str) and solution (str) when present
    spec: str
    columns: dict[str, str] = field(default_factory=dict)  # driftkit name -> source column

    def __len__(self) -> int:
        return len(self.rows)

    def sha256(self) -> str:
        """Content hash of the rows (driftkit's columns only, canonical JSON): equal data, equal hash."""
        return rows_sha256(self.rows)


def rows_sha256(rows: Iterable[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps({k: row.get(k) for k in ("id",) + COLUMNS}, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def bundled_file(name: str) -> Path:
    """Path of a bundled data file (``math-train``)."""
    if name not in BUNDLED_SETS:
        raise DriftkitError(f"Unknown bundled data set 'probes:{name}'. Bundled sets: {', '.join('probes:' + n for n in BUNDLED_SETS)}.")
    package, rel = BUNDLED_SETS[name]
    try:
        path = Path(str(resources.files(package).joinpath(rel)))
    except ModuleNotFoundError as exc:
        raise DriftkitError(f"The bundled data set probes:{name} lives in {package}, which is not installed; reinstall driftkit.") from exc
    if not path.is_file():
        raise DriftkitError(f"The bundled data file {path} is missing; reinstall driftkit (or run plugins/trainers/data/make_math_train.py).")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a bad line is reported by number."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DriftkitError(f"Data file {path} line {lineno} is not valid JSON ({exc.msg}). Fix the line or remove it.") from None
            if not isinstance(obj, dict):
                raise DriftkitError(f"Data file {path} line {lineno} is not a JSON object; each line must be {{\"problem\": ..., \"answer\": ...}}.")
            rows.append(obj)
    if not rows:
        raise DriftkitError(f"Data file {path} has no rows.")
    return rows


def _load_hf(rest: str, spec: str) -> list[dict[str, Any]]:
    parts = rest.split(":")
    if len(parts) == 1:
        name, config, split = parts[0], None, "train"
    elif len(parts) == 2:
        (name, split), config = parts, None
    elif len(parts) == 3:
        name, config, split = parts
    else:
        raise DriftkitError(f"Cannot read the data spec {spec!r}: write hf:DATASET:SPLIT or hf:DATASET:CONFIG:SPLIT.")
    if not name:
        raise DriftkitError(f"The data spec {spec!r} names no dataset: write hf:DATASET:SPLIT.")
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as exc:  # the library raises many types (not found, no network, bad config/split)
        msg = str(exc).strip().split("\n")[0]
        raise DriftkitError(
            f"Could not load the dataset {name!r} (config {config or 'default'}, split {split or 'train'}): {msg}. "
            f"Check the name, config and split; without network only local dataset folders and files load."
        ) from exc
    if isinstance(ds, datasets.DatasetDict):  # split="" style edge cases
        raise DriftkitError(f"{spec!r} selects several splits ({', '.join(ds)}); name one: hf:{name}:SPLIT.")
    return [dict(r) for r in ds]


def load_rows(spec: str) -> list[dict[str, Any]]:
    """Raw rows of a data spec, before column mapping."""
    if spec.startswith("probes:"):
        name, _, split = spec[len("probes:"):].partition(":")
        split = split or "train"
        if split not in BUNDLED_SPLITS:
            raise DriftkitError(f"Unknown split {split!r} of probes:{name}; use one of {', '.join(BUNDLED_SPLITS)}.")
        return [r for r in read_jsonl(bundled_file(name)) if r.get("split", "train") == split]
    if spec.startswith("hf:"):
        return _load_hf(spec[3:], spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return read_jsonl(path)
    raise DriftkitError(
        f"Cannot find the data {spec!r}. Give a JSONL file, hf:DATASET[:CONFIG]:SPLIT, or a bundled set "
        f"({', '.join('probes:' + n for n in BUNDLED_SETS)})."
    )


def load_math_data(
    spec: str,
    columns: dict[str, str] | None = None,
    need: tuple[str, ...] = ("problem", "answer"),
) -> MathData:
    """Load ``spec`` and rename its columns to driftkit's (``problem``, ``answer``, ``solution``).

    ``columns`` maps driftkit's names to the source's (``{"problem": "question"}``); names not mapped
    are looked up as is. Every column in ``need`` must exist, else the error names what is missing
    and what the data has. Answers are turned into strings (datasets often store numbers).
    """
    columns = dict(columns or {})
    bad = sorted(set(columns) - set(COLUMNS))
    if bad:
        raise DriftkitError(f"--columns maps unknown names {', '.join(bad)}; driftkit's columns are {', '.join(COLUMNS)} (write problem=YOUR_COLUMN,...).")
    raw = load_rows(spec)
    present = set().union(*(r.keys() for r in raw[:100]))
    mapping = {name: columns.get(name, name) for name in COLUMNS}
    missing = [f"{name!r}" + (f" (mapped to {mapping[name]!r})" if name in columns else "") for name in need if mapping[name] not in present]
    if missing:
        raise DriftkitError(
            f"The data {spec} lacks the column(s) {', '.join(missing)} this trainer needs; it has: "
            f"{', '.join(sorted(map(str, present))) or 'nothing'}. Map yours with --columns, e.g. "
            f"--columns problem=question,answer=final_answer{',solution=response' if 'solution' in need else ''}."
        )
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(raw):
        row: dict[str, Any] = {"id": str(r.get("id", i))}
        for name in COLUMNS:
            if mapping[name] in r and r[mapping[name]] is not None:
                row[name] = str(r[mapping[name]])
        if all(name in row for name in need):
            rows.append(row)
    if not rows:
        raise DriftkitError(f"The data {spec} has no row with all of {', '.join(need)} set.")
    used = {name: mapping[name] for name in COLUMNS if mapping[name] in present}
    return MathData(rows=rows, spec=spec, columns=used)


def strip_think(solution: str) -> str:
    """A solution without its reasoning blocks (the paper's "no-think" SFT targets)."""
    return _THINK_BLOCK.sub("", solution).strip()


def user_prompt(problem: str, suffix: str = PROMPT_SUFFIX) -> str:
    """The text of the user turn for a problem."""
    return problem.strip() + suffix


def plain_prompt(problem: str, suffix: str = PROMPT_SUFFIX) -> str:
    """The prompt for a tokenizer without a chat template (a raw base model)."""
    return f"Question: {user_prompt(problem, suffix)}\nAnswer: "


def prompt_for(problem: str, tokenizer: Any, suffix: str = PROMPT_SUFFIX) -> Any:
    """Training-data prompt: chat messages when the tokenizer has a chat template, else plain text.
    TRL applies the template itself; :func:`render_prompt` gives the same string for generation."""
    if getattr(tokenizer, "chat_template", None):
        return [{"role": "user", "content": user_prompt(problem, suffix)}]
    return plain_prompt(problem, suffix)


def render_prompt(problem: str, tokenizer: Any, suffix: str = PROMPT_SUFFIX) -> str:
    """The exact prompt string a model sees for ``problem`` (for evaluation by generation)."""
    p = prompt_for(problem, tokenizer, suffix)
    if isinstance(p, str):
        return p
    return tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
