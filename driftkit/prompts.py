"""Prompt sets: JSONL files, Hugging Face datasets, and the bundled ``bundled:`` sets.

A prompt is ``{"id", "domain", "text"}`` (raw text, the paper's PCA inputs) or
``{"id", "domain", "messages"}`` (chat), optionally with a ``"response"`` that is appended and
teacher-forced. The bundled sets carry the paper's three domain labels: ``math``, ``other``
(other reasoning: science, logic, coding, planning) and ``non`` (non-reasoning); they are declared by
the package that ships them (:mod:`driftkit.registry.data`), so this module names no file of theirs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError, opt
from driftkit.parsing import iter_jsonl
from driftkit.registry.data import PREFIX, bundled, bundled_name, data_sets


@dataclass
class Prompt:
    id: str
    domain: str = "other"
    text: str | None = None
    messages: list[dict[str, str]] | None = None
    response: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "domain": self.domain}
        if self.text is not None:
            d["text"] = self.text
        if self.messages is not None:
            d["messages"] = self.messages
        if self.response is not None:
            d["response"] = self.response
        return d


def _from_record(rec: Any, where: str, index: int) -> Prompt:
    if not isinstance(rec, dict):
        raise DriftkitError(
            f"{where}: expected a JSON object with 'id', 'domain' and 'text' or 'messages', got {type(rec).__name__}."
        )
    text, messages = rec.get("text"), rec.get("messages")
    if text is None and messages is None:
        raise DriftkitError(f"{where}: the record has neither 'text' nor 'messages'; each prompt needs one of them.")
    if messages is not None:
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        )
        if not ok or not messages:
            raise DriftkitError(f'{where}: \'messages\' must be a non-empty list of {{"role", "content"}} objects.')
    if text is not None and not isinstance(text, str):
        raise DriftkitError(f"{where}: 'text' must be a string.")
    resp = rec.get("response")
    if resp is not None and not isinstance(resp, str):
        raise DriftkitError(f"{where}: 'response' must be a string.")
    known = {"id", "domain", "text", "messages", "response"}
    return Prompt(
        id=str(rec.get("id", f"p{index:05d}")),
        domain=str(rec.get("domain", "other")),
        text=text,
        messages=messages,
        response=resp,
        extra={k: v for k, v in rec.items() if k not in known},
    )


def read_jsonl(path: Path, label: str | None = None) -> list[Prompt]:
    """Prompts of a JSONL file; errors name the file (or ``label``) and the line."""
    label = label or str(path)
    out: list[Prompt] = []
    example = '{"id": "q1", "domain": "math", "text": "What is 2+2?"}'
    for n, rec in iter_jsonl(path, "Prompt file", label, example=example):
        out.append(_from_record(rec, f"Prompt file {label} line {n}", len(out)))
    if not out:
        raise DriftkitError(
            f'Prompt file {label} has no prompts. Add JSON lines like {{"id": "q1", "domain": "math", "text": "What is '
            '2+2?"}.'
        )
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DriftkitError(
            f"Prompt file {label} repeats the id {dup!r}; sample ids must be unique so captures can be paired."
        )
    return out


def _bundled(name: str) -> list[Prompt]:
    out: list[Prompt] = []
    for path in bundled(name, "prompts").files:
        out.extend(read_jsonl(Path(path), f"{PREFIX}{name} ({Path(path).name})"))
    return out


def _hf(spec: str) -> list[Prompt]:
    """``hf:DATASET[:CONFIG]:SPLIT:FIELD`` through the real ``datasets.load_dataset``."""
    parts = spec.split(":")
    if len(parts) == 3:
        dataset, config, split, fld = parts[0], None, parts[1], parts[2]
    elif len(parts) == 4:
        dataset, config, split, fld = parts
    else:
        raise DriftkitError(
            f"Cannot parse 'hf:{spec}'. Use hf:DATASET[:CONFIG]:SPLIT:FIELD, e.g. hf:openai/gsm8k:main:test:question."
        )
    try:
        import datasets

        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # network, auth, unknown dataset: all the user's to fix
        raise DriftkitError(
            f"Could not load the dataset {dataset!r} (config {config!r}, split {split!r}): {str(exc).splitlines()[0]}. "
            f"Without network access, only local JSON/Parquet datasets or a JSONL prompt file work."
        ) from exc
    if fld not in ds.column_names:
        raise DriftkitError(f"Dataset {dataset} has no column {fld!r}; its columns are {', '.join(ds.column_names)}.")
    domain = "math" if any(k in dataset.lower() for k in ("math", "gsm", "aime")) else "other"
    return [Prompt(id=f"{dataset.split('/')[-1]}-{i:06d}", domain=domain, text=str(r[fld])) for i, r in enumerate(ds)]


def load_prompts(
    spec: str | Path | Iterable[dict[str, Any]], limit: int | None = None, seed: int | None = None
) -> list[Prompt]:
    """Load a prompt set from a JSONL path, ``bundled:NAME``, ``hf:...`` or a list of dicts.

    ``limit`` keeps the first N (after a seeded shuffle when ``seed`` is given), so a small run on a
    big dataset is still reproducible.
    """
    if not isinstance(spec, (str, Path)):
        prompts = [_from_record(r, f"prompt {i}", i) for i, r in enumerate(spec)]
        if not prompts:
            raise DriftkitError("The prompt list is empty.")
    else:
        s = str(spec)
        name = bundled_name(s)
        if name is not None:
            prompts = _bundled(name)
        elif s.startswith("hf:"):
            prompts = _hf(s[len("hf:") :])
        else:
            p = Path(s)
            if not p.is_file():
                raise DriftkitError(
                    f"Prompt file {s} does not exist. Give a JSONL file, a bundled set "
                    f"({', '.join(PREFIX + n for n in data_sets('prompts'))}) "
                    f"or a dataset as hf:DATASET[:CONFIG]:SPLIT:FIELD."
                )
            prompts = read_jsonl(p)
    if seed is not None:
        prompts = list(prompts)
        random.Random(seed).shuffle(prompts)
    if limit is not None:
        if limit <= 0:
            raise DriftkitError(f"{opt('limit', None)} must be positive, got {limit}.")
        prompts = prompts[:limit]
    return prompts


def stratified(prompts: list[Prompt], limit: int | None) -> list[Prompt]:
    """The first ``limit`` prompts taken round-robin over domains (file order within each domain),
    so a small subset still covers every domain evenly."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    by_domain: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_domain.setdefault(p.domain, []).append(p)
    out: list[Prompt] = []
    queues = [list(v) for v in by_domain.values()]
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    keep = {id(p) for p in out}
    return [p for p in prompts if id(p) in keep]


def encode_prompt(tokenizer: Any, prompt: Prompt, chat: bool) -> list[int]:
    """Token ids of the prompt part: raw text (with the tokenizer's own special tokens) or the chat
    template with the generation prompt appended."""
    if chat:
        if getattr(tokenizer, "chat_template", None) is None:
            raise DriftkitError(
                f"{opt('chat')} needs a tokenizer with a chat template; this tokenizer has none. "
                "Capture in raw-text mode instead."
            )
        messages = prompt.messages if prompt.messages is not None else [{"role": "user", "content": prompt.text}]
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return list(enc["input_ids"])
    if prompt.text is None:
        # A chat record in raw mode: join the contents, the closest raw-text reading of it.
        text = "\n".join(m["content"] for m in prompt.messages or [])
    else:
        text = prompt.text
    return list(tokenizer(text)["input_ids"])


def encode_response(tokenizer: Any, response: str, chat: bool) -> list[int]:
    """Token ids of a given response, with the end-of-turn token in chat mode."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if chat and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids
