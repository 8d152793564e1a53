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
training succeeded, and writes the manifest. A plugin only implements :meth:`Trainer.train`. This
module is the contract; the run-folder mechanics are :mod:`driftkit.registry.run_folder`.

A third-party trainer is a subclass registered under the ``driftkit.trainers`` entry-point group
(or given as ``file.py:Class``); it then works with ``driftkit train <name>`` and :func:`train`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from driftkit.errors import DriftkitError, opt
from driftkit.registry.options import Configurable, Option, option_table
from driftkit.registry.options import resolve as resolve_options
from driftkit.registry.run_folder import (  # noqa: F401  (the run-folder names, kept importable from here)
    CHECKPOINTS_DIR,
    MANIFEST,
    RUN_SCHEMA,
    STATE_DIR,
    install_final,
    latest_state_checkpoint,
    library_versions,
    prepare_out,
    read_manifest,
    write_json_atomic,
    write_manifest,
)

#: progress callback: (step, total_steps, metrics of that step)
ProgressFn = Callable[[int, int, dict[str, float]], None]


#: options every trainer has (a plugin may redeclare one to change its default or help)
BASE_OPTIONS: dict[str, Option] = {
    "steps": Option(100, "Optimizer steps to train for."),
    "seed": Option(0, "Random seed (data order, sampling, initialisation of anything new)."),
    "save_steps": Option(
        0, "Save a loadable checkpoint every K steps under <out>/checkpoints/step-<N>/ (0: only the final model)."
    ),
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
                raise DriftkitError(f"{opt('steps', None)} must be at least 1 (got {config[key]}).")
        if int(config["save_steps"]) < 0:
            raise DriftkitError(
                "--save-steps must be 0 (no intermediate checkpoints) or a positive number of steps (got "
                f"{config['save_steps']})."
            )
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
        resume_from = prepare_out(out, overwrite=overwrite, resume=resume)
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
            install_final(final_dir, out)
        except BaseException:
            shutil.rmtree(final_dir, ignore_errors=True)
            # A run that failed before saving anything resumable leaves no folder behind; one that
            # failed (or was interrupted) later keeps its checkpoints for --resume.
            if created and latest_state_checkpoint(ctx.state_dir) is None:
                shutil.rmtree(out, ignore_errors=True)
            raise
        shutil.rmtree(final_dir, ignore_errors=True)
        write_manifest(out, self, model, result, resume_from, started)
        return out


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
