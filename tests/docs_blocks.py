"""Shared helper of the docs tests: the ```python blocks of a Markdown page, to run as written.

A block preceded by the line ``<!-- docs-test: skip -->`` is not run (it needs a package that does
not exist, say). Used by test_docs_plugins.py (docs/plugins.md) and test_docs_python.py
(docs/python.md and the README's Python section).
"""

from __future__ import annotations

import re

SKIP = "<!-- docs-test: skip -->"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block not marked to skip."""
    out = []
    for m in BLOCK.finditer(text):
        if m.group("before").strip() == SKIP:
            continue
        out.append((text[: m.start("code")].count("\n") + 1, m.group("code")))
    return out


def run_blocks(text: str, where: str, namespace: dict) -> None:
    """Execute the page's blocks in order in one namespace; a failure names the block's line."""
    for line, code in python_blocks(text):
        try:
            exec(compile(code, f"{where}:{line}", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"{where} block at line {line} failed: {exc!r}") from exc
