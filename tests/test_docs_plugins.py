"""docs/plugins.md's Python blocks run as written, so the plugin author's guide cannot drift from the code.

Blocks run in order in one namespace (later blocks use earlier classes), inside a temporary folder.
A block preceded by the line ``<!-- docs-test: skip -->`` is not run (it needs a package that does
not exist, say).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docs_blocks import python_blocks, run_blocks

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_doc_has_runnable_blocks() -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    assert all("driftkit.registry" not in code for _, code in blocks), "the guide uses public names only"


def test_plugins_md_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_blocks(DOC.read_text(), "docs/plugins.md", {"__name__": "docs_plugins"})
