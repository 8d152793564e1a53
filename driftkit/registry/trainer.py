"""The Trainer plugin kind: base model + data -> a checkpoint folder driftkit can capture.

Why a base class that owns the output folder: every trainer, bundled or third-party, must leave the
same things behind so the rest of driftkit (capture, compare, the pipeline) can rely on them:

- ``<out>/`` the final model as safetensors + its tokenizer, loadable by ``driftkit.models.load_model``;
- ``<out>/checkpoints/step-<N>/`` intermediate models (same format), so drift can be followed along
  training;
- ``<out>/driftkit_run.json`` the run manifest (schema ``driftkit.run/1``): trainer, base model and its
  weights hash, data spec and hash, the full config, seed, library versions, steps done and the
  per-step log (loss, reward, ...). It is written last, atomically: its presence means the run finished.

The base class enforces the folder policy (an existing folder is an error unless ``overwrite`` or
``resume``), stages the final model in a temporary folder that is moved into place only after
training succeeded, and writes the manifest. A plugin only implements :meth:`Trainer.train`.

A third-party trainer is a subclass registered under the ``driftkit.trainers`` entry-point group
(or given as ``file.py:Class``); it then works with ``driftkit train <name>`` and :func:`train`.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from driftkit.atomic import atomic_write
from driftkit.errors import DriftkitError, opt
from driftkit.registry.options import Configurable, Option, option_table
from driftkit.registry.options import resolve as resolve_options

RUN_SCHEMA = "driftkit.run/1"
MANIFEST = "driftkit_run.json"
CHECKPOINTS_DIR = "checkpoints"
STATE_DIR = "trainer_state"

#: distributions whose versions go into every manifest (missing ones are recorded as null)
VERSIONED = ("driftkit", "torch", "transformers", "trl", "datasets", "accelerate", "math-verify", "deepspeed", "vllm")

#: progress callback: (step, total_steps, metrics of that step)
ProgressFn = Callable[[int, int, dict[str, float]], None]


#: options every trainer has (a plugin may redeclare one to change its default or help)
BASE_OPTIONS: dict[str, Option] = {
    "steps": Option(100, "Optimizer steps to train for."),
    "seed": Option(0, "Random seed (data order, sampling, initialisation of anything new)."),
    "save_steps": Option(0, "Save a loadable checkpoint every K steps under <out>/checkpoints/step-<N>/ (0: only the final model)."),
}


@dataclass
class TrainContext:
    """What :meth:`Trainer.train` gets: where to read from, where to write to, how to report."""

    model: str  # the user's model spec (bundled name, folder, hub id)
    data: str  # the user's data spec
    out: Path  # the run folder
    final_dir: Path  # staging folder for the final model: save model + tokenizer here
    checkpoints_dir: Path  # <out>/checkpoints: loadable step-<N> models
    state_dir: Path  # <out>/trainer_state: the training library's resumable state
    resume_from: Path | None  # a checkpoint in state_dir to resume from, when resuming
    config: dict[str, Any]  # resolved options (defaults filled in)
    progress: ProgressFn | None = None

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress(step, total, metrics)


@dataclass
class TrainResult:
    """What a plugin returns after saving its final model into ``ctx.final_dir``."""

    steps: int  # optimizer steps done in total (including those before a resume)
    log: list[dict[str, Any]]  # one dict per logged step: {"step": N, "loss": ..., "reward": ...}
    data: dict[str, Any]  # {"spec", "sha256", "n_items", ...}: what was trained on
    base: dict[str, Any] = field(default_factory=dict)  # {"path", "weights_sha256", ...}
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (device, dtype, ...)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _is_run_folder(path: Path) -> bool:
    """Whether ``path`` looks like something a trainer wrote (so ``overwrite`` may delete it)."""
    return any((path / name).exists() for name in (MANIFEST, CHECKPOINTS_DIR, STATE_DIR))


def latest_state_checkpoint(state_dir: Path) -> Path | None:
    """The newest resumable ``checkpoint-<N>`` folder in ``state_dir`` (highest N), if any."""
    if not state_dir.is_dir():
        return None
    found = []
    for p in state_dir.glob("checkpoint-*"):
        suffix = p.name.rpartition("-")[2]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return max(found)[1] if found else None


class Trainer(Configurable, ABC):
    """Base class of trainer plugins. Subclasses set ``name``, ``description``, their options and
    implement :meth:`train`; users call :meth:`run` (or the module-level :func:`train`).

    Options are declared like the other plugin kinds, ``options = {"my_option": Option(3, "what it
    does")}`` (or a plain default), and merged with the base options ``steps``, ``seed`` and
    ``save_steps``. The resolved values are ``self.config`` (also ``self.opts``), which the run
    manifest records. The former ``option_specs = (Option.named("my_option", 3, "..."),)`` form
    still works.
    """

    plugin_kind: ClassVar[str] = "trainer"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Any]] = BASE_OPTIONS

    def __init__(self, **options: Any) -> None:
        self.config = self.resolve_options(options)
        self.opts = self.config
        self.check(self.config)

    def check(self, config: dict[str, Any]) -> None:
        """Reject option combinations that cannot work, before anything is loaded or written
        (raise :class:`DriftkitError` naming the numbers to change). Default: nothing to check."""

    @classmethod
    def all_options(cls) -> dict[str, Option]:
        """Base options then the plugin's own, by name (a plugin's declaration wins)."""
        return option_table(cls)

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given`` (``None`` values mean "not given"), typed and checked."""
        config = resolve_options(cls, given)
        for key in ("steps",):
            if int(config[key]) < 1:
                raise DriftkitError(f"--steps must be at least 1 (got {config[key]}).")
        if int(config["save_steps"]) < 0:
            raise DriftkitError(f"--save-steps must be 0 (no intermediate checkpoints) or a positive number of steps (got {config['save_steps']}).")
        return config

    # -- the part a plugin writes -------------------------------------------------------------------
    @abstractmethod
    def train(self, ctx: TrainContext) -> TrainResult:
        """Train from ``ctx.model`` on ``ctx.data``; save the final model (safetensors) and tokenizer into
        ``ctx.final_dir``; save step checkpoints under ``ctx.checkpoints_dir/step-<N>``; resume from
        ``ctx.resume_from`` when set. Raise :class:`DriftkitError` for bad input."""

    # -- the part the base class owns ---------------------------------------------------------------
    def run(
        self,
        model: str,
        data: str,
        out: str | Path,
        *,
        overwrite: bool = False,
        resume: bool = False,
        progress: ProgressFn | None = None,
    ) -> Path:
        """Train and leave a complete run folder at ``out``; returns ``out``."""
        out = Path(out).expanduser()
        resume_from = self._prepare_out(out, overwrite=overwrite, resume=resume)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        final_dir = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
        ctx = TrainContext(
            model=model,
            data=data,
            out=out,
            final_dir=final_dir,
            checkpoints_dir=out / CHECKPOINTS_DIR,
            state_dir=out / STATE_DIR,
            resume_from=resume_from,
            config=dict(self.config),
            progress=progress,
        )
        started = time.time()
        try:
            result = self.train(ctx)
            if not any(final_dir.glob("*.safetensors")):
                raise RuntimeError(f"trainer {self.name!r} saved no *.safetensors into the final folder")
            self._install_final(final_dir, out)
        except BaseException:
            shutil.rmtree(final_dir, ignore_errors=True)
            # A run that failed before saving anything resumable leaves no folder behind; one that
            # failed (or was interrupted) later keeps its checkpoints for --resume.
            if created and latest_state_checkpoint(ctx.state_dir) is None:
                shutil.rmtree(out, ignore_errors=True)
            raise
        shutil.rmtree(final_dir, ignore_errors=True)
        manifest = {
            "schema": RUN_SCHEMA,
            "trainer": self.name or type(self).__name__,
            "base_model": model,
            "base": result.base,
            "data": result.data,
            "config": self.config,
            "seed": self.config.get("seed"),
            "steps": result.steps,
            "resumed_from": str(resume_from.relative_to(out)) if resume_from else None,
            "checkpoints": sorted(
                (str(p.relative_to(out)) for p in ctx.checkpoints_dir.glob("step-*") if p.is_dir()),
                key=lambda s: int(s.rpartition("-")[2]) if s.rpartition("-")[2].isdigit() else -1,
            ),
            "log": result.log,
            "versions": library_versions(),
            "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
            "wall_s": round(time.time() - started, 3),
            **({"extra": result.extra} if result.extra else {}),
        }
        write_json_atomic(out / MANIFEST, manifest)
        return out

    @staticmethod
    def _prepare_out(out: Path, *, overwrite: bool, resume: bool) -> Path | None:
        """Apply the folder policy; returns the checkpoint to resume from (or None)."""
        if overwrite and resume:
            raise DriftkitError(f"{opt('overwrite')} and {opt('resume')} contradict each other: {opt('resume')} continues the run in the folder, "
                                f"{opt('overwrite')} deletes it. Pass one.")
        if out.exists() and not out.is_dir():
            raise DriftkitError(f"{opt('out', str(out))} is a file; give a folder path for the run.")
        exists = out.is_dir() and any(out.iterdir())
        if resume:
            ckpt = latest_state_checkpoint(out / STATE_DIR)
            if ckpt is None:
                raise DriftkitError(
                    f"{opt('resume')}: {out} holds no resumable checkpoint ({STATE_DIR}/checkpoint-<N>). Checkpoints are "
                    f"written every {opt('save_steps', None)} steps; start the run without {opt('resume')} (and with "
                    f"{opt('save_steps', 'K')} to be able to resume later)."
                )
            return ckpt
        if exists:
            if not overwrite:
                raise DriftkitError(
                    f"Output folder {out} already exists and is not empty. Pass {opt('overwrite')} to replace it, {opt('resume')} to "
                    f"continue the run saved there, or choose another {opt('out', None)}."
                )
            if not _is_run_folder(out):
                raise DriftkitError(
                    f"{opt('overwrite')} refuses to delete {out}: it does not look like a driftkit training folder (no "
                    f"{MANIFEST}, {CHECKPOINTS_DIR}/ or {STATE_DIR}/). Choose another {opt('out', None)} or delete it yourself."
                )
            shutil.rmtree(out)
        return None

    @staticmethod
    def _install_final(staged: Path, out: Path) -> None:
        """Move the staged final model files into ``out`` (replacing a previous final model)."""
        for old in out.iterdir():
            if old.is_file() and old.name != MANIFEST:
                old.unlink()
        for item in staged.iterdir():
            os.replace(item, out / item.name)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp name in the same folder and rename: readers never see half a file."""
    atomic_write(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The ``driftkit_run.json`` of a finished run folder."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise DriftkitError(f"{run_dir} has no {MANIFEST}: it is not a finished driftkit training run.")
    return json.loads(path.read_text())


def train(
    trainer_name: str,
    model: str,
    data: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: ProgressFn | None = None,
    **options: Any,
) -> Path:
    """Train with a registered trainer (``"sft"``, ``"rl"``, a third-party name or ``file.py:Class``).

    ``options`` are the trainer's options by name (``steps=60, batch_size=8, learning_rate=1e-5``).
    Returns the run folder, which holds the final model and ``driftkit_run.json``.
    """
    from driftkit.registry import load

    cls = load("trainer", trainer_name)
    return cls(**options).run(model, data, out, overwrite=overwrite, resume=resume, progress=progress)
