"""docs/plugins.md's Python blocks run as written, so the plugin author's guide cannot drift from the code.

Blocks run in order in one namespace (later blocks use earlier classes), inside a temporary folder.
A block preceded by the line ``<!-- docs-test: skip -->`` is not run (it needs a package that does
not exist, say).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
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


def test_doc_has_runnable_blocks() -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    assert all("driftkit.registry" not in code for _, code in blocks), "the guide uses public names only"


def test_plugins_md_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_plugins"}
    for line, code in python_blocks(DOC.read_text()):
        try:
            exec(compile(code, f"{DOC.name}:{line}", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"docs/plugins.md block at line {line} failed: {exc!r}") from exc
