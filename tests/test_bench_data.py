"""Loading benchmark data through `datasets.load_dataset` (stubbed: no hub here) and its errors."""

from __future__ import annotations

import json

import datasets
import pytest

from driftkit.errors import DriftkitError
from driftkit.plugins.benchmarks.acpbench import ACPBench
from driftkit.plugins.benchmarks.gpqa import GPQADiamond
from driftkit.plugins.benchmarks.math500 import Math500


def _rows(bench):
    return [json.loads(line) for line in open(bench.fixture) if line.strip()]


def test_hub_loading_calls_load_dataset_per_config(monkeypatch: pytest.MonkeyPatch):
    calls = []
    rows = _rows(ACPBench)

    def fake_load(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return [{k: v for k, v in r.items() if k != "_config"} for r in rows if r["_config"] == name]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    b = ACPBench(revision="abc123")
    data = b.load("hub", limit=7)
    assert {c[0] for c in calls} == {"ibm-research/acp_bench"} and len(calls) == 14
    assert all(c[2] == "test" and c[3] == "abc123" for c in calls)
    assert data.provenance["source"] == "hub" and data.provenance["revision"] == "abc123"
    assert len(data.items) == 7 and len({i["_config"] for i in data.items}) == 7  # interleaved subtasks
    assert "fallback" not in data.provenance


def test_gated_dataset_error_says_how_to_log_in(monkeypatch: pytest.MonkeyPatch):
    def fake_load(*a, **k):
        raise ConnectionError(
            "401 Client Error. Cannot access gated repo for url https://huggingface.co/datasets/Idavidrein/gpqa"
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(DriftkitError) as ei:
        GPQADiamond().load("hub")
    msg = str(ei.value)
    assert "gated" in msg and "HF_TOKEN" in msg and "data='fixtures'" in msg


def test_hub_error_is_not_silently_replaced_by_fixtures(monkeypatch: pytest.MonkeyPatch):
    import driftkit.registry.benchmark_data as rb

    def fake_load(*a, **k):
        raise FileNotFoundError("dataset not found")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(rb, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(DriftkitError, match="HuggingFaceH4/MATH-500"):
        Math500().load("auto")  # the hub answered, so its error is reported, not hidden behind the fixture


def test_fixture_problems_are_clear(tmp_path, monkeypatch: pytest.MonkeyPatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "answer": "1"}\n{broken\n')
    monkeypatch.setattr(Math500, "fixture", bad)
    with pytest.raises(DriftkitError, match="line 2"):
        Math500().load("fixtures")
