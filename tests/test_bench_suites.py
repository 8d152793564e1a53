"""Suites are data (plugins/benchmarks/suites.toml, entry point group driftkit.suites), not core code."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftkit.bench import resolve_benchmarks
from driftkit.errors import DriftkitError
from driftkit.registry.suites import read_suites, suites


def test_bundled_suites_are_the_former_table() -> None:
    assert suites() == {
        "default": {"math500": None, "gpqa": None, "acpbench": None, "humaneval": None, "ifeval": None},
        "quick": {"math_heldout": 48, "gpqa": 32, "ifeval": 48},
        "math": {"math500": None},
        "other": {"gpqa": None, "acpbench": None, "humaneval": None},
        "non": {"ifeval": None},
    }
    assert list(resolve_benchmarks(None, "quick")) == ["math_heldout", "gpqa", "ifeval"]
    assert resolve_benchmarks("gpqa,ifeval", "quick") == {"gpqa": None, "ifeval": None}
    with pytest.raises(DriftkitError, match="available suites: default, quick"):
        resolve_benchmarks(None, "nope")


def test_core_keeps_no_suite_table() -> None:
    src = (Path(__file__).parents[1] / "driftkit" / "bench.py").read_text()
    assert "SUITES" not in src and '"quick"' not in src and '"math_heldout"' not in src


def test_malformed_suite_file(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[suite.x]\nbenchmarks = "gpqa"\n')
    with pytest.raises(DriftkitError, match=r"\[suite.x\] needs benchmarks"):
        read_suites(f)
    f.write_text('[suite.x]\nbenchmarks = ["gpqa"]\nmax_new_tokens = {ifeval = 3}\n')
    with pytest.raises(DriftkitError, match="not in its benchmarks"):
        read_suites(f)
