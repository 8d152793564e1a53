"""The experiment file: one TOML that names the whole study.

```toml
[experiment]
name = "smollm2-math"
base = "smollm2-135m"
out = "runs/smollm2-math"
seed = 0

[[train]]                 # tuned checkpoints made by a trainer plugin
name = "sft"
trainer = "sft"
data = "probes:math-train"
options = { steps = 60, batch_size = 8, save_steps = 20 }

[[models]]                # tuned checkpoints that already exist (folders or HF ids)
name = "other"
path = "./ckpt/other"

[bench]
suite = "default"         # or benchmarks = ["math500", "ifeval"]
limit = 20
data = "auto"             # auto | fixtures | hub
options = {}              # BenchSettings fields (max_new_tokens, batch_size, ...)

[capture]
prompts = "probes:general-mix"   # raw-text prompts (PCA shift, CKA)
chat_prompts = "probes:general-mix"  # prompts each tuned model answers (KL, token ranks)
chat_limit = 30           # taken round-robin over domains
max_new_tokens = 64
layers = "all"

[compare]
raw_analyses = ["cka", "pca_shift"]
gen_analyses = ["kl", "token_rank"]
options = {}

[transfer]
sigma = "pooled"

[drift]                   # drift over training, when trainers save intermediate checkpoints
enabled = true
bench = ["math500"]        # scored at every checkpoint
bench_limit = 10           # default: [bench].limit (then the base's and final model's scores are reused)
```

Why TOML and a dataclass: the file is the unit of reproducibility; every field that changes a
result feeds the hash of the steps that depend on it, so editing one setting redoes only those.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError


@dataclass
class TrainSpec:
    name: str
    trainer: str
    data: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSpec:
    name: str
    path: str


@dataclass
class Experiment:
    name: str
    base: str
    out: Path
    seed: int = 0
    train: list[TrainSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    bench: dict[str, Any] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    source: str = "<python>"

    @property
    def tuned_names(self) -> list[str]:
        return [t.name for t in self.train] + [m.name for m in self.models]


DEFAULTS: dict[str, dict[str, Any]] = {
    "bench": {"suite": "default", "limit": 20, "data": "auto", "options": {}, "enabled": True},
    "capture": {"prompts": "probes:general-mix", "chat_prompts": "probes:general-mix", "chat_limit": None,
                "max_new_tokens": 64, "layers": "all", "max_batch_tokens": 4096, "storage_dtype": "float16"},
    "compare": {"raw_analyses": ["cka", "pca_shift"], "gen_analyses": ["kl", "token_rank"], "options": {}},
    "transfer": {"sigma": "pooled"},
    "drift": {"enabled": True, "bench": ["math500"], "bench_limit": None, "layers": "every:4"},
}
SECTIONS = ("experiment", "train", "models", "bench", "capture", "compare", "transfer", "drift")


def _merge(section: str, given: Any, where: str) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise DriftkitError(f"{where}: [{section}] must be a table.")
    unknown = set(given) - set(DEFAULTS[section])
    if unknown:
        raise DriftkitError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} in [{section}]; known: {', '.join(DEFAULTS[section])}.")
    return {**DEFAULTS[section], **given}


def from_dict(d: dict[str, Any], where: str = "<dict>", base_dir: Path | None = None) -> Experiment:
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise DriftkitError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}.")
    ex = d.get("experiment") or {}
    for key in ("base",):
        if key not in ex:
            raise DriftkitError(f"{where}: [experiment] needs '{key}' (the base model: an HF id, a folder or smollm2-135m).")
    name = str(ex.get("name", "experiment"))
    out = Path(ex.get("out", f"runs/{name}"))
    if base_dir is not None and not out.is_absolute():
        out = base_dir / out
    train, models = [], []
    names: set[str] = {"base"}
    for i, t in enumerate(d.get("train") or []):
        missing = [k for k in ("name", "trainer", "data") if k not in t]
        if missing:
            raise DriftkitError(f"{where}: [[train]] entry {i + 1} lacks {', '.join(missing)}.")
        train.append(TrainSpec(str(t["name"]), str(t["trainer"]), str(t["data"]), dict(t.get("options") or {})))
    for i, m in enumerate(d.get("models") or []):
        if "name" not in m or "path" not in m:
            raise DriftkitError(f"{where}: [[models]] entry {i + 1} needs 'name' and 'path'.")
        path = str(m["path"])
        if base_dir is not None and path.startswith("."):
            path = str((base_dir / path).resolve())
        models.append(ModelSpec(str(m["name"]), path))
    for n in [t.name for t in train] + [m.name for m in models]:
        if n in names or not n.replace("-", "").replace("_", "").isalnum():
            raise DriftkitError(f"{where}: model name {n!r} is repeated, reserved ('base') or not a simple name (letters, digits, - and _).")
        names.add(n)
    sections = {k: _merge(k, d.get(k), where) for k in DEFAULTS}
    if not train and not models:
        raise DriftkitError(f"{where}: nothing to compare. Add [[train]] runs that make tuned checkpoints, or [[models]] that exist.")
    return Experiment(name=name, base=str(ex["base"]), out=out, seed=int(ex.get("seed", 0)), train=train, models=models,
                      source=where, **sections)


def load_experiment(path: str | Path) -> Experiment:
    p = Path(path)
    if not p.is_file():
        raise DriftkitError(f"Experiment file {p} does not exist. Start from the example in docs/pipeline.md.")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DriftkitError(f"Experiment file {p} is not valid TOML: {exc}.") from exc
    return from_dict(data, str(p), p.parent)
