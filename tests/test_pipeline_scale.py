"""`driftkit run` at paper scale: the [capture] store / nproc / backend / device_map and [compare] jobs
keys reach the capture and compare calls, enter the step hashes, are validated up front, and a study
of pooled captures renders and says which analyses it could not run (token CKA)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomllib

from driftkit.errors import DriftkitError
from driftkit.pipeline.experiment import from_dict, validate_dict
from driftkit.pipeline.manifest import Manifest
from driftkit.pipeline.runner import plan, run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _config(base: Path, tuned: Path, prompts: Path, out: Path, **capture: Any) -> dict[str, Any]:
    """A quick study: one existing tuned model, no training, benchmarks or drift; tiny prompts and answers."""
    return {
        "experiment": {"name": "scale", "base": str(base), "out": str(out), "seed": 0},
        "models": [{"name": "other", "path": str(tuned)}],
        "bench": {"enabled": False},
        "capture": {
            "prompts": str(prompts),
            "chat_prompts": str(prompts),
            "chat_limit": 3,
            "max_new_tokens": 4,
            "max_batch_tokens": 64,
            **capture,
        },
        # no UMAP: it would be skipped on pooled files anyway, and its import alone costs seconds
        "compare": {"raw_analyses": ["cka", "similarity", "pca_shift"]},
        "drift": {"enabled": False},
    }


@pytest.fixture(scope="module")
def pooled_run(tiny_model: Path, tiny_tuned: Path, tiny_prompts: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = _config(tiny_model, tiny_tuned, tiny_prompts, tmp_path_factory.mktemp("scale") / "pooled", store="pooled")
    return cfg, run_experiment(from_dict(cfg), log=lambda m: None)


def test_pooled_study_skips_token_cka_and_says_so(pooled_run) -> None:
    from driftkit.store.reader import CaptureReader

    cfg, result = pooled_run
    caps = result.out / "captures"
    for name in ("base.raw.h5", "other.raw.h5"):
        with CaptureReader(caps / name) as r:
            assert r.store == "pooled"
    for name in ("other.gen.h5", "base_on_other.h5"):  # final/* only: per token whatever the store
        with CaptureReader(caps / name) as r:
            assert r.store == "tokens"
    study = json.loads(result.report_json.read_text())
    skipped = study["skipped"]["representations"]["other"]
    assert {"cka", "similarity"} <= set(skipped) and "pooled" in skipped["cka"]
    assert "pca_shift" not in skipped and study["skipped"]["distributions"] == {}
    rep = study["representations"]["other"]
    assert "pca_distance" in rep and all(v is not None for v in rep["pca_distance"].values())
    assert "cka_layers" not in rep and "kl" in study["distributions"]["other"]
    said = [f for f in study["findings"] if f.startswith("cka was not run on the representations")]
    assert said and '[capture] store = "tokens"' in said[0], study["findings"]
    html = result.report_html.read_text()
    assert "cka was not run" in html
    assert Manifest(result.out / "manifest.json").step("capture.raw.base")["settings"]["store"] == "pooled"


def test_drift_measures_of_a_skipped_analysis_are_none(pooled_run) -> None:
    """Drift over training on pooled captures: the CKA measure is None at every point, the others are numbers."""
    from driftkit.pipeline.runner import _measures

    cfg, result = pooled_run
    ex = from_dict(cfg)
    caps = result.out / "captures"
    measures = _measures(SimpleNamespace(ex=ex), caps / "base.raw.h5", caps / "base_on_other.h5")
    point = measures(caps / "other.raw.h5", caps / "other.gen.h5")
    assert point["cka"] is None and isinstance(point["kl"], float) and point["kl"] > 0


def test_changed_store_reruns_its_steps_under_resume(pooled_run, tmp_path: Path) -> None:
    """store is part of the raw captures' hash: --resume redoes them from scratch (no resume of a file of
    another store mode), and what reads them; the generation captures stay cached."""
    from driftkit.store.reader import CaptureReader

    cfg, result = pooled_run
    out = tmp_path / "copy"
    shutil.copytree(result.out, out)
    cfg = json.loads(json.dumps(cfg))
    cfg["experiment"]["out"] = str(out)
    cfg["capture"]["store"] = "sample:4"
    r = run_experiment(from_dict(cfg), resume=True, log=lambda m: None)
    assert set(r.executed) == {"capture.raw.base", "capture.raw.other", "compare.raw", "report"}
    with CaptureReader(out / "captures" / "base.raw.h5") as reader:
        assert reader.store == "sample:4"
    study = json.loads((out / "report" / "study.json").read_text())
    assert study["skipped"]["representations"] == {} and "cka_layers" in study["representations"]["other"]


def test_scale_keys_enter_the_hashes_only_when_set(tiny_model: Path, tiny_tuned: Path, tiny_prompts: Path) -> None:
    """Defaults keep the old settings (old runs stay cached); store, nproc and backend change the capture
    steps that use them; device_map and jobs are run-time knobs (same numbers) and change nothing."""

    def settings(**capture: Any) -> dict[str, Any]:
        cfg = _config(tiny_model, tiny_tuned, tiny_prompts, Path("/nonexistent"), **capture)
        if "jobs" in capture:
            cfg["compare"]["jobs"] = capture.pop("jobs")
            cfg["capture"].pop("jobs")
        cfg["train"] = [{"name": "t", "trainer": "sft", "data": "bundled:math-train", "options": {"save_steps": 1}}]
        cfg["drift"] = {"enabled": True}
        return {s.id: s.settings for s in plan(from_dict(cfg))}

    default = settings()
    assert not any(k in default["capture.raw.base"] for k in ("store", "nproc", "backend", "device_map"))
    assert "jobs" not in json.dumps(default["drift.t"])
    changed = settings(store="pooled", nproc=2, backend="vllm")
    assert changed["capture.raw.base"] == {**default["capture.raw.base"], "store": "pooled", "nproc": 2}
    assert changed["capture.gen.other"] == {**default["capture.gen.other"], "backend": "vllm", "nproc": 2}
    assert changed["capture.base_on.other"] == {**default["capture.base_on.other"], "nproc": 2}
    assert changed["drift.t"] != default["drift.t"]
    assert settings(device_map="auto", jobs=4) == default


def test_capture_keys_reach_the_capture_calls(
    tiny_model: Path, tiny_tuned: Path, tiny_prompts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nproc > 1 goes through capture_sharded with that many processes; store only to the raw captures,
    backend only to the generation captures, device_map to all (recorded, not run: no model loads)."""
    import driftkit.capturing
    import driftkit.capturing.distributed

    calls: list[tuple[Any, int]] = []

    def fake(cfg: Any, nproc: int = 1, progress: Any = None) -> Path:
        calls.append((cfg, nproc))
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).touch()
        return Path(cfg.out)

    monkeypatch.setattr(driftkit.capturing.distributed, "capture_sharded", fake)
    monkeypatch.setattr(driftkit.capturing, "capture", lambda cfg, progress=None: fake(cfg))
    cfg = _config(tiny_model, tiny_tuned, tiny_prompts, tmp_path / "a", store="sample:8", nproc=2, backend="vllm")
    run_experiment(from_dict(cfg), log=lambda m: None, only=["capture"])
    by = {Path(c.out).name: (c, n) for c, n in calls}
    assert set(by) == {"base.raw.h5", "other.raw.h5", "other.gen.h5", "base_on_other.h5"}
    assert all(n == 2 for _, n in by.values())
    assert [by[f][0].store for f in ("base.raw.h5", "other.gen.h5", "base_on_other.h5")] == [
        "sample:8",
        "tokens",
        "tokens",
    ]
    assert (by["other.gen.h5"][0].backend, by["base.raw.h5"][0].backend) == ("vllm", "hf")
    entry = Manifest(tmp_path / "a" / "manifest.json").step("capture.raw.base")
    assert entry["outputs"]["shards"] == "captures/base.raw.h5.shards"

    calls.clear()
    cfg = _config(tiny_model, tiny_tuned, tiny_prompts, tmp_path / "b", device_map="auto")
    run_experiment(from_dict(cfg), log=lambda m: None, only=["capture"])
    assert len(calls) == 4 and all(c.device_map == "auto" and n == 1 for c, n in calls)


def test_bad_scale_values_are_refused_with_the_fix(tmp_path: Path) -> None:
    """Every bad value at once, before any step, each naming what is accepted (and the near miss)."""
    doc = {
        "experiment": {"base": "x", "out": str(tmp_path)},
        "models": [{"name": "t", "path": "y"}],
        "capture": {"store": "poold", "nproc": 0, "backend": "vlm", "device_map": "autoo"},
        "compare": {"jobs": 0},
    }
    with pytest.raises(DriftkitError) as exc:
        from_dict(doc)
    text = " ".join(str(exc.value).split())
    for part in (
        "5 problem(s)",
        "'store' must be tokens (every layer per token), pooled",
        "got 'poold' (did you mean 'pooled'?)",
        "[capture]: 'nproc' (processes per capture) must be at least 1, got 0",
        "[compare]: 'jobs' (processes for the layers pass) must be at least 1, got 0",
        "'backend' must be hf or vllm",
        "got 'vlm' (did you mean 'vllm'?)",
        "'device_map' must be auto, balanced, balanced_low_0, sequential",
    ):
        assert part in text, (part, text)
    problems = validate_dict({**doc, "capture": {"device_map": "auto", "nproc": 8, "store": "sample:0"}, "compare": {}})
    assert len(problems) == 2 and "do not combine" in problems[1] and "sample:0" in problems[0]
    problems = validate_dict({**doc, "capture": {"nproc": "8", "store": "sample:64"}, "compare": {"jobs": 2}})
    assert problems == ["[capture]: 'nproc' must be an integer, got '8'"]


def test_docs_experiment_files_are_valid() -> None:
    """Every ```toml block of docs/pipeline.md and docs/scale.md passes the validator (they are not run: the
    14B study needs GPUs), and the paper-scale example sets what it says."""
    blocks = []
    for page in ("pipeline.md", "scale.md"):
        blocks += re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
    assert blocks
    for block in blocks:
        assert validate_dict(tomllib.loads(block)) == [], block
    big = [tomllib.loads(b) for b in blocks if "Qwen3-14B" in b]
    assert len(big) == 1
    ex = from_dict(big[0])
    assert (ex.capture["store"], ex.capture["nproc"], ex.capture["backend"]) == ("pooled", 8, "vllm")
    assert ex.capture["max_new_tokens"] == 4096 and len(ex.models) >= 2
