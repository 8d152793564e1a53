"""The run folder a trainer leaves behind: folder policy, final-model install, manifest.

Why apart from the contract (:mod:`driftkit.registry.trainer`): a trainer author implements
``train`` and never calls these; they are the base class's guarantees (an existing folder is an
error unless ``overwrite`` or ``resume``; the final model is moved in only after training
succeeded; the manifest is written last, atomically) and change for other reasons than the contract.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from driftkit.atomic import atomic_write
from driftkit.errors import DriftkitError, opt

RUN_SCHEMA = "driftkit.run/1"
MANIFEST = "driftkit_run.json"
CHECKPOINTS_DIR = "checkpoints"
STATE_DIR = "trainer_state"

#: distributions whose versions go into every manifest (missing ones are recorded as null)
VERSIONED = ("driftkit", "torch", "transformers", "trl", "datasets", "accelerate", "math-verify", "deepspeed", "vllm")


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


def prepare_out(out: Path, *, overwrite: bool, resume: bool) -> Path | None:
    """Apply the folder policy; returns the checkpoint to resume from (or None)."""
    if overwrite and resume:
        raise DriftkitError(
            f"{opt('overwrite')} and {opt('resume')} contradict each other: {opt('resume')} continues the "
            f"run in the folder, {opt('overwrite')} deletes it. Pass one."
        )
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
                f"Output folder {out} already exists and is not empty. Pass {opt('overwrite')} to replace it, "
                f"{opt('resume')} to continue the run saved there, or choose another {opt('out', None)}."
            )
        if not _is_run_folder(out):
            raise DriftkitError(
                f"{opt('overwrite')} refuses to delete {out}: it does not look like a driftkit training folder (no "
                f"{MANIFEST}, {CHECKPOINTS_DIR}/ or {STATE_DIR}/). Choose another {opt('out', None)} or delete it "
                f"yourself."
            )
        shutil.rmtree(out)
    return None


def install_final(staged: Path, out: Path) -> None:
    """Move the staged final model files into ``out`` (replacing a previous final model)."""
    for old in out.iterdir():
        if old.is_file() and old.name != MANIFEST:
            old.unlink()
    for item in staged.iterdir():
        os.replace(item, out / item.name)


def write_manifest(out: Path, trainer: Any, model: str, result: Any, resume_from: Path | None, started: float) -> None:
    """Write ``<out>/driftkit_run.json`` (schema ``driftkit.run/1``), last and atomically: its presence
    means the run finished."""
    manifest = {
        "schema": RUN_SCHEMA,
        "trainer": trainer.name or type(trainer).__name__,
        "base_model": model,
        "base": result.base,
        "data": result.data,
        "config": trainer.config,
        "seed": trainer.config.get("seed"),
        "steps": result.steps,
        "resumed_from": str(resume_from.relative_to(out)) if resume_from else None,
        "checkpoints": sorted(
            (str(p.relative_to(out)) for p in (out / CHECKPOINTS_DIR).glob("step-*") if p.is_dir()),
            key=lambda s: int(s.rpartition("-")[2]) if s.rpartition("-")[2].isdigit() else -1,
        ),
        "log": result.log,
        "versions": library_versions(),
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
        "wall_s": round(time.time() - started, 3),
        **({"extra": result.extra} if result.extra else {}),
    }
    write_json_atomic(out / MANIFEST, manifest)


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
