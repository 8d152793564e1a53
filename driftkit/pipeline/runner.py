"""``driftkit run``: the paper's controlled experiment as cached, resumable steps.

train (if asked) -> bench -> capture (raw text for representations; each tuned model answers the
chat prompts and the base scores those exact tokens) -> compare -> transfer -> drift over training
-> study report. Each step's identity is a hash of its settings and of the steps it reads (see
:mod:`driftkit.pipeline.manifest`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from driftkit.atomic import atomic_write
from driftkit.errors import DriftkitError
from driftkit.pipeline.experiment import Experiment
from driftkit.pipeline.manifest import Manifest, stable_hash

Log = Callable[[str], None]


@dataclass
class Step:
    id: str
    settings: dict[str, Any]
    deps: list[str]
    fn: Callable[[Ctx], dict[str, Any]]  # returns {"outputs": {name: relpath}, "summary": {...}}
    label: str = ""


@dataclass
class Ctx:
    ex: Experiment
    out: Path
    resume: bool
    manifest: Manifest
    log: Log
    progress: Callable[[str, int, int], None] | None = None
    #: the step being run was last recorded with the same hash (an interrupted run of the same settings):
    #: only then does ``--resume`` continue its partial output; a changed step starts over
    resumable: bool = False

    def path(self, rel: str) -> Path:
        return self.out / rel

    def outputs(self, step_id: str) -> dict[str, str]:
        entry = self.manifest.step(step_id)
        if not entry:
            raise DriftkitError(f"internal: step {step_id} has no recorded outputs")
        return entry["outputs"]


@dataclass
class RunResult:
    out: Path
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def report_html(self) -> Path:
        return self.out / "report" / "study.html"

    @property
    def report_json(self) -> Path:
        return self.out / "report" / "study.json"

    def study(self) -> Any:
        """The finished study as a :class:`driftkit.results.StudyResult` (``to_frame()``, ``to_json()``)."""
        from driftkit.results import load_study

        return load_study(self.report_json)


# -- model identities -------------------------------------------------------------------------------
def _model_identity(spec: str, revision: str | None = None) -> dict[str, Any]:
    from driftkit.models import resolve_model_path, weights_sha256

    # A local folder is identified by its weights, not its path, so a moved or copied run folder keeps
    # its cache; a hub id (no local weights to hash) by its name and revision.
    path = resolve_model_path(spec)
    ident: dict[str, Any] = {"weights": weights_sha256(path) or spec}
    if revision:
        ident["revision"] = revision
    return ident


def _tuned_path(ctx: Ctx, name: str) -> str:
    for t in ctx.ex.train:
        if t.name == name:
            return str(ctx.path(ctx.outputs(f"train.{name}")["model"]))
    for m in ctx.ex.models:
        if m.name == name:
            return m.path
    raise DriftkitError(f"internal: unknown model {name}")


def model_path(ctx: Ctx, name: str) -> str:
    return ctx.ex.base if name == "base" else _tuned_path(ctx, name)


def _load_settings(ex: Any) -> dict[str, Any]:
    """Trainer options that say how the base model is loaded, when the experiment sets them."""
    out: dict[str, Any] = {"revision": ex.revision} if ex.revision else {}
    out.update({k: getattr(ex, k) for k in ("device", "dtype") if getattr(ex, k) != "auto"})
    return out


def model_revision(ctx: Ctx, name: str) -> str | None:
    """The hub revision of a model of the experiment (None for trained folders and by default)."""
    if name == "base":
        return ctx.ex.revision
    return next((m.revision for m in ctx.ex.models if m.name == name), None)


# -- step bodies ------------------------------------------------------------------------------------
def _train(name: str) -> Callable[[Ctx], dict[str, Any]]:
    def run(ctx: Ctx) -> dict[str, Any]:
        from driftkit.registry.trainer import read_manifest, train

        spec = next(t for t in ctx.ex.train if t.name == name)
        rel = f"train/{name}"
        out = ctx.path(rel)
        resume = ctx.resume and out.exists()

        def progress(step: int, total: int, metrics: dict[str, float]) -> None:
            if ctx.progress:
                ctx.progress(f"train {name}", step, total)

        opts = {"seed": ctx.ex.seed, **_load_settings(ctx.ex), **spec.options}
        train(spec.trainer, ctx.ex.base, spec.data, out, overwrite=not resume, resume=resume, progress=progress, **opts)
        man = read_manifest(out)
        ckpts = (
            sorted(
                (p for p in (out / "checkpoints").glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1])
            )
            if (out / "checkpoints").is_dir()
            else []
        )
        return {
            "outputs": {"model": rel, "manifest": f"{rel}/driftkit_run.json"},
            "summary": {
                "checkpoints": [f"{rel}/checkpoints/{p.name}" for p in ckpts],
                "log": man.get("log", [])[-200:],
            },
        }

    return run


def _bench(name: str) -> Callable[[Ctx], dict[str, Any]]:
    def run(ctx: Ctx) -> dict[str, Any]:
        from driftkit.bench import run_suite

        b = ctx.ex.bench
        rel = f"scores/{name}.json"
        kwargs: dict[str, Any] = dict(b["options"])
        if model_revision(ctx, name):
            kwargs.setdefault("revision", model_revision(ctx, name))
        for key in ("device", "dtype"):
            kwargs.setdefault(key, getattr(ctx.ex, key))
        names = b.get("benchmarks")
        run_suite(
            model_path(ctx, name),
            suite=b["suite"],
            limit=b["limit"],
            out=ctx.path(rel),
            data=b["data"],
            model_name=name,
            benchmarks=names,
            progress=ctx.progress,
            **kwargs,
        )
        return {"outputs": {"scores": rel}, "summary": {}}

    return run


def _run_capture(ctx: Ctx, cfg: Any) -> None:
    """One capture of the study: in ``[capture] nproc`` processes (sharded, then stitched) or in this one.

    Why here: every capture of the pipeline (the drift checkpoints' too) goes through one place, so a
    paper-scale study shards all of them. A capture that is not resumed starts clean, shards included
    (a shard folder of another process count would otherwise be left beside the new one)."""
    from driftkit.store.stitch import shard_dir

    nproc = int(ctx.ex.capture.get("nproc", 1))
    if not cfg.resume:
        shutil.rmtree(shard_dir(cfg.out), ignore_errors=True)
    if nproc > 1:
        from driftkit.capturing.distributed import capture_sharded

        capture_sharded(cfg, nproc, ctx.progress)
    else:
        from driftkit.capturing import capture

        capture(cfg, progress=ctx.progress)


def _remove_capture(path: Path) -> None:
    """Delete a capture file and its shard folder (a sharded capture's rows live there)."""
    from driftkit.store.stitch import shard_dir

    path.unlink(missing_ok=True)
    shutil.rmtree(shard_dir(path), ignore_errors=True)


def _capture(kind: str, name: str) -> Callable[[Ctx], dict[str, Any]]:
    """kind: raw (representations on raw text), gen (the model answers the chat prompts),
    base_on (the base scores a tuned model's generated tokens).

    ``[capture] store`` applies to the raw captures only: the other two record just ``final/*``, which
    every store mode keeps per token (KL and ranks need every position). ``backend`` generates the
    answers of the gen captures; ``device_map`` and ``nproc`` apply to all three."""

    def run(ctx: Ctx) -> dict[str, Any]:
        from driftkit.capturing import CaptureConfig
        from driftkit.store.stitch import shard_dir

        c = ctx.ex.capture
        rel = f"captures/{name}.{kind}.h5" if kind != "base_on" else f"captures/base_on_{name}.h5"
        out = ctx.path(rel)
        resume = ctx.resume and ctx.resumable and (out.exists() or shard_dir(out).exists())
        common = dict(
            out=out,
            overwrite=not resume,
            resume=resume,
            storage_dtype=c["storage_dtype"],
            max_batch_tokens=c["max_batch_tokens"],
            device=ctx.ex.device,
            dtype=ctx.ex.dtype,
            device_map=c.get("device_map"),
        )
        if kind == "raw":
            cfg = CaptureConfig(
                model=model_path(ctx, name),
                revision=model_revision(ctx, name),
                prompts=c["prompts"],
                layers=c["layers"],
                store=c.get("store", "tokens"),
                **common,
            )
        elif kind == "gen":
            from driftkit.prompts import load_prompts, stratified

            chosen = [p.as_dict() for p in stratified(load_prompts(c["chat_prompts"]), c["chat_limit"])]
            cfg = CaptureConfig(
                model=model_path(ctx, name),
                revision=model_revision(ctx, name),
                prompts=chosen,
                chat=True,
                generate=True,
                max_new_tokens=c["max_new_tokens"],
                seed=ctx.ex.seed,
                probes=["final"],
                backend=c.get("backend", "hf"),
                **common,
            )
        else:
            cfg = CaptureConfig(
                model=ctx.ex.base,
                revision=ctx.ex.revision,
                tokens_from=ctx.path(ctx.outputs(f"capture.gen.{name}")["capture"]),
                probes=["final"],
                **common,
            )
        _run_capture(ctx, cfg)
        outputs = {"capture": rel}
        if int(c.get("nproc", 1)) > 1:  # the stitched file reads its rows from here (checked and cleaned with it)
            outputs["shards"] = str(shard_dir(Path(rel)))
        return {"outputs": outputs, "summary": {}}

    return run


def _compare(kind: str, name: str | None = None) -> Callable[[Ctx], dict[str, Any]]:
    def run(ctx: Ctx) -> dict[str, Any]:
        from driftkit.comparing.runner import compare

        cmp = ctx.ex.compare
        if kind == "raw":
            paths = [ctx.path(ctx.outputs(f"capture.raw.{m}")["capture"]) for m in ["base", *ctx.ex.tuned_names]]
            analyses, positions, rel = cmp["raw_analyses"], "all", "reports/raw"
        else:
            paths = [
                ctx.path(ctx.outputs(f"capture.base_on.{name}")["capture"]),
                ctx.path(ctx.outputs(f"capture.gen.{name}")["capture"]),
            ]
            analyses, positions, rel = cmp["gen_analyses"], "response", f"reports/gen_{name}"
        # skip_unfit: an analysis the captures cannot feed (token CKA on pooled captures) is skipped and
        # listed under "skipped" in the report, which the study then names, instead of failing the run
        report = compare(
            paths,
            analyses=analyses,
            positions=positions,
            options=cmp["options"] or None,
            seed=ctx.ex.seed,
            jobs=int(cmp.get("jobs", 1)),
            skip_unfit=True,
        )
        ctx.path(rel).parent.mkdir(parents=True, exist_ok=True)
        report.to_json(ctx.path(rel + ".json"))
        report.to_html(ctx.path(rel + ".html"))
        return {"outputs": {"report": rel + ".json", "html": rel + ".html"}, "summary": {}}

    return run


def _transfer(ctx: Ctx) -> dict[str, Any]:
    from driftkit.scores import transfer

    base = ctx.path(ctx.outputs("bench.base")["scores"])
    models = [ctx.path(ctx.outputs(f"bench.{m}")["scores"]) for m in ctx.ex.tuned_names]
    try:
        res = transfer(base, models, sigma=ctx.ex.transfer["sigma"])
    except DriftkitError as exc:
        # An undefined index (e.g. the base already scores 100 on a whole group) is a finding about
        # this run, not a reason to lose the rest of the study: record why and go on.
        ctx.log(f"[yellow]transferability index undefined:[/] {exc}")
        res = {"schema": "driftkit.transfer/1", "models": {}, "error": str(exc)}
    rel = "transfer.json"
    atomic_write(ctx.path(rel), json.dumps(res, indent=2, default=str))
    return {"outputs": {"transfer": rel}, "summary": {}}


def _measures(ctx: Ctx, base_raw: Path, base_tf: Path) -> Callable[[Path, Path], dict[str, float]]:
    """The drift measures of one checkpoint, from each analysis's summary.

    ``[drift] measures`` maps each point's key to ``analysis.summary_key``; an analysis of
    ``[compare] raw_analyses`` is run on the raw-text captures (over ``[drift] layers``), one of
    ``gen_analyses`` on the teacher-forced captures of the final model's answers (response tokens).
    A measure whose analysis the captures cannot feed (token CKA on ``store = "pooled"``) is None at
    every point: the study says why (see :mod:`driftkit.pipeline.study`).
    """
    d, cmp = ctx.ex.drift, ctx.ex.compare
    specs = {k: str(v).partition(".")[::2] for k, v in d["measures"].items()}
    wanted = {an for an, _ in specs.values()}
    raw_an = [a for a in cmp["raw_analyses"] if a in wanted]
    gen_an = [a for a in cmp["gen_analyses"] if a in wanted]

    def options(names: list[str]) -> dict[str, dict[str, Any]] | None:
        return {k: v for k, v in (cmp["options"] or {}).items() if k in names} or None

    def run(raw: Path, tf: Path) -> dict[str, float]:
        from driftkit.comparing.runner import compare

        summaries: dict[str, dict[str, float]] = {}
        for names, paths, kw in (
            (raw_an, [base_raw, raw], {"layers": d["layers"]}),
            (gen_an, [base_tf, tf], {"positions": "response"}),
        ):
            if names:
                rep = compare(
                    paths, analyses=names, options=options(names), jobs=int(cmp.get("jobs", 1)), skip_unfit=True, **kw
                )
                ran = rep.to_dict()["analyses"]
                summaries.update({n: rep.analysis(n).summary(ran[n]) for n in names if n in ran})
        return {k: summaries[an][stat] if an in summaries else None for k, (an, stat) in specs.items()}

    return run


def _drift(name: str) -> Callable[[Ctx], dict[str, Any]]:
    """Capture and compare each intermediate checkpoint of a training run against the base.

    Every point uses the same measures (``[drift] measures``, see :func:`_measures`): analyses of the
    raw prompts over ``drift.layers``, analyses of the *final* model's own response tokens (so all
    checkpoints are scored on identical text), and the drift benchmarks' scores. The base point is
    the base compared with itself; the final checkpoint reuses the main captures and scores instead of
    recomputing them.

    Long because the nested step body captures, compares and benchmarks every checkpoint in one resumable loop.
    """

    def run(ctx: Ctx) -> dict[str, Any]:
        """Long because one checkpoint's capture, compares and scores share its temporary files and cleanup."""
        from driftkit.capturing import CaptureConfig

        d = ctx.ex.drift
        work = ctx.path(f"drift/{name}")
        work.mkdir(parents=True, exist_ok=True)
        base_raw = ctx.path(ctx.outputs("capture.raw.base")["capture"])
        gen = ctx.path(ctx.outputs(f"capture.gen.{name}")["capture"])
        base_on = ctx.path(ctx.outputs(f"capture.base_on.{name}")["capture"])
        measures = _measures(ctx, base_raw, base_on)
        points: list[dict[str, Any]] = [
            {
                "step": 0,
                "checkpoint": "base",
                **measures(base_raw, base_on),
                "score": _drift_scores(ctx, name, ctx.ex.base, "base", "bench.base"),
            }
        ]
        ckpts = list(ctx.manifest.step(f"train.{name}")["summary"]["checkpoints"])
        final_step = _final_step(ctx, name)
        ckpts = [c for c in ckpts if int(Path(c).name.split("-")[1]) < final_step]
        for i, rel in enumerate(ckpts):
            path = ctx.path(rel)
            raw, tf = work / f"{path.name}.raw.h5", work / f"{path.name}.tf.h5"
            common = dict(
                overwrite=True,
                storage_dtype=ctx.ex.capture["storage_dtype"],
                device_map=ctx.ex.capture.get("device_map"),
            )
            raw_cfg = CaptureConfig(
                model=str(path),
                prompts=ctx.ex.capture["prompts"],
                layers=d["layers"],
                probes=["residual"],
                out=raw,
                store=ctx.ex.capture.get("store", "tokens"),  # as the base's raw capture, so their rows pair up
                **common,
            )
            _run_capture(ctx, raw_cfg)
            _run_capture(ctx, CaptureConfig(model=str(path), tokens_from=gen, probes=["final"], out=tf, **common))
            step = int(path.name.split("-")[1])
            points.append(
                {
                    "step": step,
                    "checkpoint": rel,
                    **measures(raw, tf),
                    "score": _drift_scores(ctx, name, str(path), f"{name}@{step}", None),
                }
            )
            _remove_capture(raw)
            _remove_capture(tf)
            if ctx.progress:
                ctx.progress(f"drift {name}", i + 1, len(ckpts) + 1)
        final_raw = ctx.path(ctx.outputs(f"capture.raw.{name}")["capture"])
        points.append(
            {
                "step": final_step,
                "checkpoint": ctx.outputs(f"train.{name}")["model"],
                **measures(final_raw, gen),
                "score": _drift_scores(ctx, name, _tuned_path(ctx, name), name, f"bench.{name}"),
            }
        )
        rel_out = f"drift/{name}.json"
        points.sort(key=lambda p: p["step"])
        atomic_write(ctx.path(rel_out), json.dumps({"model": name, "points": points}, indent=2))
        return {"outputs": {"drift": rel_out}, "summary": {}}

    return run


def _drift_scores(ctx: Ctx, name: str, model: str, label: str, reuse_step: str | None) -> dict[str, float]:
    """The drift benchmarks' scores of one checkpoint (reusing the main bench step's at the same limit)."""
    from driftkit.bench import run_suite
    from driftkit.scores import primary_scores, read_scores

    d = ctx.ex.drift
    if not (ctx.ex.bench.get("enabled", True) and d["bench"]):
        return {}
    if reuse_step and d["bench_limit"] in (None, ctx.ex.bench["limit"]):
        sp = ctx.path(ctx.outputs(reuse_step)["scores"])
    else:
        sp = ctx.path(f"drift/{name}") / f"{label}.scores.json"
        run_suite(
            model,
            benchmarks=list(d["bench"]),
            limit=d["bench_limit"] or ctx.ex.bench["limit"],
            out=sp,
            data=ctx.ex.bench["data"],
            model_name=label,
            **ctx.ex.bench["options"],
        )
    ps = primary_scores(read_scores(sp))
    return {b: ps[b]["value"] for b in d["bench"] if b in ps}


def _final_step(ctx: Ctx, name: str) -> int:
    spec = next(t for t in ctx.ex.train if t.name == name)
    return int(spec.options.get("steps", 0))


def _report(ctx: Ctx) -> dict[str, Any]:
    from driftkit.pipeline.study import build_study

    study = build_study(ctx)
    ctx.path("report").mkdir(parents=True, exist_ok=True)
    study.write(ctx.path("report"))
    return {
        "outputs": {"json": "report/study.json", "html": "report/study.html"},
        "summary": {"findings": study.findings},
    }


# -- plan -------------------------------------------------------------------------------------------
def plan(ex: Experiment) -> list[Step]:
    """The ordered steps of an experiment, each with the settings and dependencies that make its hash.

    Long because it is the pipeline's table of steps: each step's hashed inputs and dependencies are listed where they
    are defined, so the cache keys can be read in one place.
    """
    steps: list[Step] = []
    ident: dict[str, Any] = {"base": _model_identity(ex.base, ex.revision)}
    for m in ex.models:
        ident[m.name] = _model_identity(m.path, m.revision)
    model_dep: dict[str, list[str]] = {"base": []}
    base_id = {**ident["base"], "dtype": ex.dtype} if ex.dtype != "auto" else ident["base"]  # auto: old cache keys
    for t in ex.train:
        steps.append(
            Step(
                f"train.{t.name}",
                {"trainer": t.trainer, "data": t.data, "options": t.options, "seed": ex.seed, "base": base_id},
                [],
                _train(t.name),
                f"train {t.name} ({t.trainer})",
            )
        )
        model_dep[t.name] = [f"train.{t.name}"]
    for m in ex.models:
        model_dep[m.name] = []
    names = ["base", *ex.tuned_names]

    def mid(n: str) -> Any:
        model = ident.get(n, {"trained": n})
        return {**model, "dtype": ex.dtype} if ex.dtype != "auto" else model  # auto keeps old cache keys

    if ex.bench.get("enabled", True):
        for n in names:
            steps.append(
                Step(f"bench.{n}", {"model": mid(n), "bench": ex.bench}, model_dep[n], _bench(n), f"bench {n}")
            )
    cap = ex.capture
    # the scale keys enter a capture's hash only when set away from their defaults, so the cache keys of
    # existing runs stay valid: store (what the raw files hold), nproc (a stitched file of shards, whose
    # resume needs the same process count), backend (vLLM's answers are other tokens than hf's).
    # device_map and [compare] jobs are run-time knobs like device: same numbers, not hashed.
    nproc = {"nproc": cap["nproc"]} if cap.get("nproc", 1) != 1 else {}
    store = {"store": cap["store"]} if cap.get("store", "tokens") != "tokens" else {}
    backend = {"backend": cap["backend"]} if cap.get("backend", "hf") != "hf" else {}
    for n in names:
        steps.append(
            Step(
                f"capture.raw.{n}",
                {
                    "model": mid(n),
                    "prompts": cap["prompts"],
                    "layers": cap["layers"],
                    "dtype": cap["storage_dtype"],
                    **store,
                    **nproc,
                },
                model_dep[n],
                _capture("raw", n),
                f"capture {n} (raw text)",
            )
        )
    for n in ex.tuned_names:
        steps.append(
            Step(
                f"capture.gen.{n}",
                {
                    "model": mid(n),
                    "prompts": cap["chat_prompts"],
                    "limit": cap["chat_limit"],
                    "selection": "stratified",
                    "max_new_tokens": cap["max_new_tokens"],
                    "seed": ex.seed,
                    "dtype": cap["storage_dtype"],
                    **backend,
                    **nproc,
                },
                model_dep[n],
                _capture("gen", n),
                f"generate + capture {n}",
            )
        )
        steps.append(
            Step(
                f"capture.base_on.{n}",
                {"model": mid("base"), "dtype": cap["storage_dtype"], **nproc},
                [f"capture.gen.{n}"],
                _capture("base_on", n),
                f"capture base on {n}'s tokens",
            )
        )
    steps.append(
        Step(
            "compare.raw",
            {"analyses": ex.compare["raw_analyses"], "options": ex.compare["options"], "seed": ex.seed},
            [f"capture.raw.{n}" for n in names],
            _compare("raw"),
            "compare representations",
        )
    )
    for n in ex.tuned_names:
        steps.append(
            Step(
                f"compare.gen.{n}",
                {"analyses": ex.compare["gen_analyses"], "options": ex.compare["options"], "seed": ex.seed},
                [f"capture.base_on.{n}", f"capture.gen.{n}"],
                _compare("gen", n),
                f"compare distributions ({n})",
            )
        )
    if ex.bench.get("enabled", True):
        steps.append(
            Step(
                "transfer",
                {"sigma": ex.transfer["sigma"]},
                [f"bench.{n}" for n in names],
                _transfer,
                "transferability index",
            )
        )
    if ex.drift.get("enabled", True):
        for t in ex.train:
            if int(t.options.get("save_steps", 0) or 0) > 0:
                deps = [f"train.{t.name}", "capture.raw.base", f"capture.gen.{t.name}", f"capture.base_on.{t.name}"]
                if ex.bench.get("enabled", True):
                    deps += ["bench.base", f"bench.{t.name}"]
                steps.append(
                    Step(
                        f"drift.{t.name}",
                        {
                            "drift": ex.drift,
                            "bench": ex.bench,
                            "prompts": cap["prompts"],
                            "compare": {k: v for k, v in ex.compare.items() if k != "jobs"},  # jobs: a run-time knob
                            **store,
                            **nproc,
                        },
                        deps,
                        _drift(t.name),
                        f"drift over training ({t.name})",
                    )
                )
    report = {"version": 2, "name": ex.name, "study": ex.study, "headline": ex.drift.get("headline")}
    steps.append(Step("report", report, [s.id for s in steps], _report, "study report"))
    return steps


def step_hash(step: Step, manifest: Manifest) -> str:
    dep_hashes = []
    for d in step.deps:
        e = manifest.step(d)
        dep_hashes.append(e["hash"] if e else None)
    return stable_hash({"id": step.id, "settings": step.settings, "deps": dep_hashes})


def _outputs_exist(ctx: Ctx, entry: dict[str, Any]) -> bool:
    return all(ctx.path(p).exists() for p in entry.get("outputs", {}).values())


def run_experiment(
    ex: Experiment,
    resume: bool = False,
    log: Log = print,
    progress: Callable[[str, int, int], None] | None = None,
    only: list[str] | None = None,
) -> RunResult:
    """Run (or continue) an experiment. Finished steps whose hash is unchanged are skipped."""
    ex.out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(ex.out / "manifest.json")
    ctx = Ctx(ex, ex.out, resume, manifest, log, progress)
    result = RunResult(ex.out)
    steps = plan(ex)
    manifest.data["experiment"] = {"name": ex.name, "base": ex.base, "source": ex.source}
    manifest.data["plan"] = [s.id for s in steps]
    manifest.save()
    for step in steps:
        h = step_hash(step, manifest)
        entry = manifest.step(step.id)
        if entry and entry.get("hash") == h and entry.get("status") == "done" and _outputs_exist(ctx, entry):
            result.skipped.append(step.id)
            log(f"[dim]cached[/]  {step.label or step.id}")
            continue
        if only and not any(step.id.startswith(o) for o in only):
            continue
        log(f"[bold]run[/]     {step.label or step.id}")
        ctx.resumable = bool(entry and entry.get("hash") == h)  # before the record below replaces it
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest.record(
            step.id,
            {
                "hash": h,
                "status": "running",
                "started": started,
                "settings": step.settings,
                "deps": step.deps,
                "outputs": {},
            },
        )
        out = step.fn(ctx)
        secs = time.perf_counter() - t0
        manifest.record(
            step.id,
            {
                "hash": h,
                "status": "done",
                "started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(secs, 2),
                "settings": step.settings,
                "deps": step.deps,
                "outputs": out["outputs"],
                "summary": out.get("summary", {}),
                "executions": int((entry or {}).get("executions", 0)) + 1,
            },
        )
        result.executed.append(step.id)
        result.seconds[step.id] = secs
        log(f"[green]done[/]    {step.label or step.id} in {secs:.1f} s")
    return result


def clean_unplanned(ex: Experiment) -> None:
    """Remove outputs of steps that are no longer in the plan (a model removed from the file)."""
    manifest = Manifest(ex.out / "manifest.json")
    ids = {s.id for s in plan(ex)}
    for sid in list(manifest.data["steps"]):
        if sid not in ids:
            for rel in manifest.data["steps"][sid].get("outputs", {}).values():
                p = ex.out / rel
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
            manifest.forget(sid)
