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
data = "bundled:math-train"
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
prompts = "bundled:general-mix"   # raw-text prompts (PCA shift, CKA)
chat_prompts = "bundled:general-mix"  # prompts each tuned model answers (KL, token ranks)
chat_limit = 30           # taken round-robin over domains
max_new_tokens = 64
layers = "all"
store = "tokens"          # raw-text layer sites: tokens | pooled | sample:K (docs/scale.md)
nproc = 1                 # processes per capture (torch.distributed), one shard each
backend = "hf"            # what generates the answers: hf | vllm
# device_map = "auto"     # accelerate spreads each model over the GPUs (bigger than one device)

[compare]
raw_analyses = ["cka", "pca_shift"]
gen_analyses = ["kl", "token_rank"]
options = {}
jobs = 1                  # processes for the layers pass (same numbers as 1)

[transfer]
sigma = "pooled"

[drift]                   # drift over training, when trainers save intermediate checkpoints
enabled = true
bench = ["math500"]        # scored at every checkpoint
bench_limit = 10           # default: [bench].limit (then the base's and final model's scores are reused)
measures = { cka = "cka.mean_linear_cka", kl = "kl.kl_forward", shifted = "token_rank.shifted" }
headline = "kl"            # the measure whose half-way step the findings quote

[study]
expect = ["sft > other"]   # each "A > B": A is expected to drift more than B (checked on every drift measure)
expect_why = "The expected pattern"
```

Why TOML and a dataclass: the file is the unit of reproducibility; every field that changes a
result feeds the hash of the steps that depend on it, so editing one setting redoes only those.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError
from driftkit.pipeline.defaults import DEFAULTS


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
    revision: str | None = None  # branch, tag or commit of a hub model


@dataclass
class Experiment:
    name: str
    base: str
    out: Path
    seed: int = 0
    revision: str | None = None  # of the base model, when it is a hub id
    device: str = "auto"  # where every step loads its models: auto, cpu, cuda, cuda:N (not hashed: a runtime knob)
    dtype: str = "auto"  # the models' compute dtype for training, benchmarks and captures (hashed when set)
    train: list[TrainSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    bench: dict[str, Any] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    source: str = "<python>"

    @property
    def tuned_names(self) -> list[str]:
        return [t.name for t in self.train] + [m.name for m in self.models]


SECTIONS = ("experiment", "train", "models", "bench", "capture", "compare", "transfer", "drift", "study")

#: accepted keys and their types, per table; a tuple of types means any of them ("list" = list of str)
_STR, _INT, _BOOL, _TABLE, _LIST = (str,), (int,), (bool,), (dict,), ("list",)
SCHEMA: dict[str, dict[str, tuple[Any, ...]]] = {
    "experiment": {
        "name": _STR,
        "base": _STR + (Path,),
        "out": _STR + (Path,),
        "seed": _INT,
        "revision": _STR,
        "device": _STR,
        "dtype": _STR,
    },
    "train": {"name": _STR, "trainer": _STR, "data": _STR + (Path,), "options": _TABLE},
    "models": {"name": _STR, "path": _STR + (Path,), "revision": _STR},
    "bench": {"suite": _STR, "benchmarks": _LIST, "limit": _INT, "data": _STR, "options": _TABLE, "enabled": _BOOL},
    "capture": {
        "prompts": _STR,
        "chat_prompts": _STR,
        "chat_limit": _INT,
        "max_new_tokens": _INT,
        "layers": _STR + _INT,
        "max_batch_tokens": _INT,
        "storage_dtype": _STR,
        "store": _STR,
        "nproc": _INT,
        "backend": _STR,
        "device_map": _STR + _TABLE,
    },
    "compare": {"raw_analyses": _LIST, "gen_analyses": _LIST, "options": _TABLE, "jobs": _INT},
    "transfer": {"sigma": _STR + _TABLE},
    "drift": {
        "enabled": _BOOL,
        "bench": _LIST,
        "bench_limit": _INT,
        "layers": _STR + _INT,
        "measures": _TABLE,
        "headline": _STR,
    },
    "study": {"expect": _LIST, "expect_why": _STR},
}
OPTIONAL_NONE = ("chat_limit", "bench_limit", "benchmarks", "device_map")  # may be given as None from Python
REQUIRED = {"experiment": ("base",), "train": ("name", "trainer", "data"), "models": ("name", "path")}


def _type_ok(value: Any, types: tuple[Any, ...]) -> bool:
    for t in types:
        if t == "list":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return True
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, t):
            return True
    return False


def _type_name(types: tuple[Any, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "true or false",
        dict: "a table",
        "list": "a list of strings",
        Path: "a path",
    }
    return " or ".join(names[t] for t in types)


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def validate_dict(d: Any) -> list[str]:
    """Every problem of an experiment document at once: unknown sections and keys (with did-you-mean
    suggestions), missing required keys, and values of the wrong type. Empty when the document is valid.

    Why all at once: a study runs for hours; finding the second typo only after fixing the first
    (or after training has started) wastes a run."""
    if not isinstance(d, dict):
        return ["the document must be a TOML table"]
    problems: list[str] = []
    for sec in d:
        if sec not in SECTIONS:
            problems.append(f"unknown section [{sec}]{_suggest(sec, SECTIONS)}; known: {', '.join(SECTIONS)}")
    for sec in SECTIONS:
        if sec not in d:
            if sec == "experiment":
                problems.append(
                    "[experiment] is missing; it needs 'base' (the base model: an HF id, a folder or smollm2-135m)"
                )
            continue
        value = d[sec]
        array = sec in ("train", "models")
        if array:
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                problems.append(f"[[{sec}]] must be an array of tables ([[{sec}]] blocks)")
                continue
            entries = [(f"[[{sec}]] entry {i + 1}", t) for i, t in enumerate(value)]
        else:
            if not isinstance(value, dict):
                problems.append(f"[{sec}] must be a table")
                continue
            entries = [(f"[{sec}]", value)]
        known = SCHEMA[sec]
        for where, table in entries:
            for key, v in table.items():
                if key not in known:
                    problems.append(f"{where}: unknown key '{key}'{_suggest(key, known)}; known: {', '.join(known)}")
                elif not (v is None and key in OPTIONAL_NONE) and not _type_ok(v, known[key]):
                    problems.append(f"{where}: '{key}' must be {_type_name(known[key])}, got {v!r}")
            for key in REQUIRED.get(sec, ()):
                if key not in table:
                    problems.append(f"{where}: '{key}' is required")
    return problems + _check_values(d)


def _check_values(d: dict[str, Any]) -> list[str]:
    """Problems of the scale keys' values (``[capture]`` store, nproc, backend, device_map and
    ``[compare]`` jobs), given that their types are right: the capture and compare calls would refuse
    them too, but only when that step starts, possibly hours into the run. (Imports only for the
    keys given: they load torch.)"""
    cap = d.get("capture") if isinstance(d.get("capture"), dict) else {}
    cmp = d.get("compare") if isinstance(d.get("compare"), dict) else {}
    out: list[str] = []
    store = cap.get("store")
    if isinstance(store, str):
        from driftkit.capturing.pooling import parse_store

        try:
            parse_store(store)
        except DriftkitError:
            out.append(
                f"[capture]: 'store' must be tokens (every layer per token), pooled (per sample: prompt mean, "
                f"response mean, last prompt token) or sample:K with K >= 1, got {store!r}"
                f"{_suggest(store, ('tokens', 'pooled', 'sample:64'))}"
            )
    for where, table, key, what in (
        ("[capture]", cap, "nproc", "processes per capture"),
        ("[compare]", cmp, "jobs", "processes for the layers pass"),
    ):
        v = table.get(key)
        if _type_ok(v, _INT) and v < 1:
            out.append(f"{where}: '{key}' ({what}) must be at least 1, got {v}")
    backend = cap.get("backend")
    if isinstance(backend, str):
        from driftkit.generation_backends import BACKENDS

        if backend not in BACKENDS:
            out.append(
                f"[capture]: 'backend' must be {' or '.join(sorted(BACKENDS))} (what generates the tuned models' "
                f"answers), got {backend!r}{_suggest(backend, BACKENDS)}"
            )
    dm = cap.get("device_map")
    if isinstance(dm, str):
        from driftkit.models import DEVICE_MAPS

        if dm not in DEVICE_MAPS:
            out.append(
                f"[capture]: 'device_map' must be {', '.join(DEVICE_MAPS)} or a table of module = device, got "
                f"{dm!r}{_suggest(dm, DEVICE_MAPS)}"
            )
    nproc = cap.get("nproc")
    if dm is not None and _type_ok(nproc, _INT) and nproc > 1:
        out.append(
            "[capture]: 'device_map' and 'nproc' > 1 do not combine: every process would spread its own copy of the "
            "model over all the GPUs. Use nproc (one model per GPU) when a model fits on one device, else device_map "
            "with nproc = 1"
        )
    return out


def _merge(section: str, given: Any) -> dict[str, Any]:
    return {**DEFAULTS[section], **(given or {})}


def from_dict(d: dict[str, Any], where: str = "<dict>", base_dir: Path | None = None) -> Experiment:
    problems = validate_dict(d)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise DriftkitError(
            f"{where} has {len(problems)} problem(s); nothing was run:\n{listed}\nSee docs/pipeline.md "
            f"for every accepted key."
        )
    ex = d.get("experiment") or {}
    name = str(ex.get("name", "experiment"))
    out = Path(ex.get("out", f"runs/{name}"))
    if base_dir is not None and not out.is_absolute():
        out = base_dir / out
    train, models = [], []
    names: set[str] = {"base"}
    for t in d.get("train") or []:
        train.append(TrainSpec(str(t["name"]), str(t["trainer"]), str(t["data"]), dict(t.get("options") or {})))
    for m in d.get("models") or []:
        path = str(m["path"])
        if base_dir is not None and path.startswith("."):
            path = str((base_dir / path).resolve())
        models.append(ModelSpec(str(m["name"]), path, m.get("revision")))
    for n in [t.name for t in train] + [m.name for m in models]:
        if n in names or not n.replace("-", "").replace("_", "").isalnum():
            raise DriftkitError(
                f"{where}: model name {n!r} is repeated, reserved ('base') or not a simple name (letters, digits, - "
                "and _)."
            )
        names.add(n)
    sections = {k: _merge(k, d.get(k)) for k in DEFAULTS}
    drift_runs = sections["drift"]["enabled"] and any(int(t.options.get("save_steps", 0) or 0) > 0 for t in train)
    problems = _check_study(sections, [t.name for t in train] + [m.name for m in models], drift_runs)
    if problems:
        raise DriftkitError(f"{where}: " + " ".join(problems) + " See docs/pipeline.md.")
    if not train and not models:
        raise DriftkitError(
            f"{where}: nothing to compare. Add [[train]] runs that make tuned checkpoints, or [[models]] that exist."
        )
    return Experiment(
        name=name,
        base=str(ex["base"]),
        out=out,
        seed=int(ex.get("seed", 0)),
        revision=ex.get("revision"),
        device=str(ex.get("device", "auto")),
        dtype=str(ex.get("dtype", "auto")),
        train=train,
        models=models,
        source=where,
        **sections,
    )


def _check_study(sections: dict[str, dict[str, Any]], tuned: list[str], drift_runs: bool) -> list[str]:
    """Problems of the keys that refer to other parts of the file: drift measures (when drift over
    training runs) name an analysis of [compare] and one of its summary keys; expectations name two
    tuned models."""
    out = []
    measures = sections["drift"]["measures"] if drift_runs else {}
    ran = list(sections["compare"]["raw_analyses"]) + list(sections["compare"]["gen_analyses"])
    for key, spec in measures.items():
        an, _, stat = str(spec).partition(".")
        if not stat or an not in ran:
            out.append(
                f"[drift] measures: {key} = {spec!r} must be 'analysis.summary_key' with the analysis one of "
                f"[compare] raw_analyses or gen_analyses ({', '.join(ran)})."
            )
    if measures and sections["drift"]["headline"] not in measures:
        out.append(
            f"[drift] headline {sections['drift']['headline']!r} is not one of its measures "
            f"({', '.join(sections['drift']['measures'])})."
        )
    for e in sections["study"]["expect"]:
        a, sep, b = (x.strip() for x in e.partition(">"))
        if not sep or a not in tuned or b not in tuned or a == b:
            out.append(
                f"[study] expect {e!r} must read 'A > B' with A and B two different tuned models ({', '.join(tuned)})."
            )
    return out


def load_experiment(path: str | Path) -> Experiment:
    from driftkit.parsing import load_toml

    p = Path(path)
    if not p.is_file():
        raise DriftkitError(
            f"Experiment file {p} does not exist. Start from examples/experiment.toml in the driftkit "
            "repository (every section, with comments); docs/pipeline.md describes the keys."
        )
    return from_dict(load_toml(p, "Experiment file"), str(p), p.parent)
