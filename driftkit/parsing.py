"""The text formats driftkit reads from users: ``key=value`` lists, TOML files and JSONL files.

Why one module: each format used to be parsed in several places (seven ``key=value`` loops, three
TOML loaders, five JSONL readers), each with its own error wording and its own gaps (one reader
named the bad line, another did not; one stripped values, another kept the spaces). A user who
mistypes ``--opt``, ``--probe-opt``, ``-o`` or ``--sigma`` should get the same kind of message and
the same rules everywhere, so the parsing lives here and callers only say what they are reading.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from driftkit.errors import DriftkitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")


def parse_kv(
    spec: str | Iterable[str],
    *,
    what: str,
    example: str,
    convert: Callable[[str], T] = str,  # type: ignore[assignment]
    allow_empty: bool = False,
    expect: str = "a valid value",
) -> dict[str, T]:
    """Parse ``name=value`` pairs into a dict, keys and values stripped, order kept.

    Parameters
    ----------
    spec
        One string of comma-separated pairs (``"a=1,b=2"``), or an iterable of single pairs (the
        values of a repeated CLI option; a value may then contain commas).
    what
        How the user wrote it, for messages (``"--probe-opt"``, ``"--sigma"``).
    example
        A correct example, shown in every message (``"topk=50"``).
    convert
        Applied to each value; a ``ValueError``/``TypeError`` becomes a :class:`DriftkitError`.
    allow_empty
        Whether ``name=`` (an empty value) is accepted.
    expect
        What a value must be, for the message when ``convert`` fails (``"a number"``).

    Returns
    -------
    dict
        ``{name: convert(value)}``; a later pair overrides an earlier one with the same name.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, T] = {}
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or (not value and not allow_empty):
            raise DriftkitError(f"Cannot read {what} {part!r}: write name=value pairs, e.g. {what} {example}.")
        try:
            out[key] = convert(value)
        except (TypeError, ValueError):
            raise DriftkitError(
                f"Cannot read {what} {part!r}: {value!r} for {key!r} is not {expect}; write name=value pairs, "
                f"e.g. {what} {example}."
            ) from None
    return out


def load_toml(path: str | Path, what: str = "Config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error is a :class:`DriftkitError`
    (``"<what> PATH is not valid TOML (...)"``)."""
    p = Path(path)
    if not p.is_file():
        raise DriftkitError(f"{what} {p} does not exist.")
    return loads_toml(p.read_text(encoding="utf-8"), f"{what} {p}")


def loads_toml(text: str, where: str) -> dict[str, Any]:
    """TOML text as a dict; ``where`` names its source in the error (``"Experiment file x.toml"``)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DriftkitError(f"{where} is not valid TOML ({exc}). Fix it and retry.") from None


def iter_jsonl(
    path: str | Path, what: str = "File", label: str | None = None, example: str | None = None
) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSONL file, streamed.

    Errors name the file and the line: ``"<what> PATH line 3 is not valid JSON (...)"``. A file
    whose first value opens a JSON array gets the fix spelled out (convert with ``jq -c '.[]'``),
    since "line 1 is not valid JSON" would hide it. ``label`` replaces the path in messages (for
    bundled files, named by their set); ``example`` is one correct line, shown with the array hint.
    """
    p = Path(path)
    name = label or str(p)
    try:
        with open(p, encoding="utf-8") as fh:
            first = True
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                if first and line.lstrip().startswith("["):
                    raise DriftkitError(
                        f"{what} {name} looks like a JSON array, but it is read as JSONL: one JSON object per line"
                        f"{', e.g. ' + example if example else ''}. Convert it, e.g. "
                        f"jq -c '.[]' {p.name} > {p.stem}.jsonl."
                    )
                first = False
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DriftkitError(
                        f"{what} {name} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}). "
                        f"Fix or remove that line."
                    ) from None
    except UnicodeDecodeError as exc:
        raise DriftkitError(f"{what} {name} is not UTF-8 text ({exc}); save it as UTF-8 JSONL.") from None


def read_jsonl(
    path: str | Path, what: str = "File", label: str | None = None, objects: bool = True, example: str | None = None
) -> list[Any]:
    """All values of a JSONL file (see :func:`iter_jsonl`); with ``objects`` each must be a JSON object."""
    rows = []
    for lineno, value in iter_jsonl(path, what, label, example):
        if objects and not isinstance(value, dict):
            raise DriftkitError(
                f"{what} {label or path} line {lineno} is not a JSON object ({type(value).__name__}); "
                f"each line must be one {{...}} object."
            )
        rows.append(value)
    return rows
