"""What the bundled SFT and GRPO trainers share: options, base-model loading, TRL arguments for
CPU/GPU, data selection, step checkpoints and the per-step log.

Why shared: the paper's experiment compares two recipes on the *same* base, data and budget; the two
plugins must therefore load, select data, checkpoint and log identically, differing only in the
objective.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from driftkit.atomic import atomic_dir
from driftkit.errors import DriftkitError
from driftkit.models import load_model, load_tokenizer, resolve_model_path, weights_sha256
from driftkit.plugins.trainers.mathdata import PROMPT_SUFFIX, MathData, rows_sha256
from driftkit.registry.trainer import Option, TrainContext, TrainResult

#: options both bundled trainers take (each adds its own; learning_rate defaults differ)
SHARED_OPTIONS: dict[str, Option] = {
    "batch_size": Option(8, "Per-device batch size (for rl: completions per step, i.e. prompts x --num-generations)."),
    "grad_accum": Option(1, "Gradient accumulation steps; the effective batch is batch_size x grad_accum x processes."),
    "lr_scheduler": Option(
        "linear", "Learning-rate schedule (transformers' names: linear, cosine, constant, constant_with_warmup, ...)."
    ),
    "warmup_steps": Option(0, "Learning-rate warmup steps."),
    "weight_decay": Option(0.0, "AdamW weight decay."),
    "columns": Option(
        {},
        "Map driftkit's column names to your data's: problem=question,answer=final_answer,solution=response.",
        type=dict,
    ),
    "limit": Option(0, "Use only the first N rows of the data (0: all)."),
    "prompt_suffix": Option(
        PROMPT_SUFFIX, "Instruction appended to every problem (the reward reads the final \\boxed{} answer)."
    ),
    "dtype": Option(
        "auto",
        "Training dtype: auto (bf16 on GPU, float32 on CPU), float32, bfloat16.",
        choices=("auto", "float32", "bfloat16"),
    ),
    "trust_remote_code": Option(False, "Run the model repository's own code (only for models you trust)."),
    "device": Option("auto", "Where to train: auto (the GPU when there is one), cpu, cuda or cuda:N."),
    "revision": Option("", "Model revision (branch, tag or commit) of a hub model; empty: the default branch."),
    "gradient_checkpointing": Option(False, "Recompute activations in the backward pass (less memory, ~30% slower)."),
    "save_total_limit": Option(
        1, "How many resumable trainer-state checkpoints to keep (each holds optimizer state: ~3x the model)."
    ),
}

#: files of a TRL/transformers checkpoint that make a loadable model (no optimizer, RNG or pickled args)
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken")
_NOT_MODEL_FILES = {"trainer_state.json"}


def on_gpu(config: dict[str, Any] | None = None) -> bool:
    """Whether training runs on a GPU: the one asked for by the ``device`` option (checked: asking for
    a GPU that does not exist is a clear error), else any GPU there is."""
    if config is not None and config.get("device", "auto") != "auto":
        from driftkit.models import pick_device

        return pick_device(str(config["device"])).type == "cuda"
    return torch.cuda.is_available()


def report_phase(ctx: TrainContext, text: str) -> None:
    """Say what happens before step 1 (loading the model, preparing data: a minute on a CPU), through
    the progress callback when it can show it (the CLI's has a ``phase`` method), else not at all."""
    phase = getattr(ctx.progress, "phase", None)
    if callable(phase):
        phase(text)


def train_dtype(config: dict[str, Any]) -> str:
    """The dtype to load the model in: bf16 on a GPU that has it, float32 on CPU (TRL needs bf16=False there)."""
    if config["dtype"] != "auto":
        return config["dtype"]
    if on_gpu(config) and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def zero3_enabled() -> bool:
    """Whether accelerate launched us with DeepSpeed ZeRO-3 (then TRL must build the model itself, sharded)."""
    return (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
        and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") == "3"
    )


def load_base(ctx: TrainContext) -> tuple[Any, Any, dict[str, Any]]:
    """(model or path for TRL, tokenizer, base info for the manifest).

    The model goes through driftkit's loader (bundled names, safetensors only, clear errors). Under
    ZeRO-3 the resolved path is handed to TRL instead, which then builds the model already sharded.
    """
    cfg = ctx.config
    dtype = train_dtype(cfg)
    if zero3_enabled():
        # every rank would otherwise hold the whole model in CPU memory before sharding it
        path = resolve_model_path(ctx.model)
        tok = load_tokenizer(path, revision=cfg.get("revision") or None, trust_remote_code=cfg["trust_remote_code"])
        return None, tok, {"path": path, "weights_sha256": weights_sha256(path), "dtype": dtype}
    report_phase(ctx, f"loading model {ctx.model}")
    lm = load_model(
        ctx.model,
        dtype=dtype,
        device="cpu",
        trust_remote_code=cfg["trust_remote_code"],
        revision=cfg.get("revision") or None,
    )
    info = {"path": lm.path, "weights_sha256": weights_sha256(lm.path), "dtype": dtype, **lm.info}
    tok = lm.tokenizer
    model = lm.model
    model.train()
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, info


def model_init_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """What TRL passes to from_pretrained when it builds the model itself (ZeRO-3)."""
    return {"dtype": train_dtype(config), "use_safetensors": True, "trust_remote_code": config["trust_remote_code"]}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def common_args(ctx: TrainContext, learning_rate: float) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and GRPOConfig."""
    cfg = ctx.config
    save_steps = int(cfg["save_steps"])
    dtype = train_dtype(cfg)
    return dict(
        output_dir=str(ctx.state_dir),
        max_steps=int(cfg["steps"]),
        per_device_train_batch_size=int(cfg["batch_size"]),
        gradient_accumulation_steps=int(cfg["grad_accum"]),
        learning_rate=float(learning_rate),
        lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=int(cfg["warmup_steps"]),
        weight_decay=float(cfg["weight_decay"]),
        seed=int(cfg["seed"]),
        data_seed=int(cfg["seed"]),
        logging_steps=1,
        logging_first_step=True,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else 500,
        save_total_limit=int(cfg["save_total_limit"]),
        save_only_model=False,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not on_gpu(cfg),
        bf16=dtype == "bfloat16",
        fp16=False,
        # transformers 5 renamed it; pass both so TRL's default (True) cannot win and nothing warns.
        activation_checkpointing=bool(cfg["gradient_checkpointing"]),
        gradient_checkpointing=bool(cfg["gradient_checkpointing"]),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        trust_remote_code=bool(cfg["trust_remote_code"]),
        model_init_kwargs=model_init_kwargs(cfg) if zero3_enabled() else None,
    )


def select_rows(
    data: MathData,
    n_needed: int,
    seed: int,
    limit: int,
    keep: Callable[[dict[str, Any]], bool] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows to train on: the first ``limit`` rows, shuffled by ``seed``, filtered by ``keep``,
    stopping once ``n_needed`` rows passed.

    Why stop early: checking a solution with math-verify costs ~5 ms, and a short run needs only
    ``steps x batch`` rows, not the whole set. The choice depends only on (data, seed, limit,
    n_needed), so rerunning (or resuming) the same command trains on the same rows.
    """
    rows = data.rows[:limit] if limit and limit > 0 else list(data.rows)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    kept: list[dict[str, Any]] = []
    checked = 0
    for i in order:
        if len(kept) >= n_needed:
            break
        checked += 1
        if keep is None or keep(rows[i]):
            kept.append(rows[i])
    dropped = checked - len(kept)
    if not kept:
        raise DriftkitError(
            f"None of the {checked} rows of {data.spec} that were checked is usable (all failed the filter: "
            "gold answers math-verify cannot parse, or solutions whose final \\boxed{} answer is not the gold "
            "answer)."
        )
    info = {
        "spec": data.spec,
        "columns": data.columns,
        "n_rows_source": len(data.rows),
        "n_rows_checked": checked,
        "n_rows_dropped": dropped,
        "n_items": len(kept),
        "sha256": rows_sha256(kept),
        "source_sha256": data.sha256(),
    }
    return kept, info


def export_step_checkpoint(src: Path, dst: Path) -> None:
    """Make ``dst`` a loadable model folder from a trainer checkpoint ``src`` (hard links when possible).

    Only model files are taken (safetensors, configs, tokenizer); optimizer/RNG state and the pickled
    training arguments stay behind in the resumable checkpoint. Written to a temp folder and renamed.
    """
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if not f.is_file() or f.name in _NOT_MODEL_FILES or not f.name.endswith(_MODEL_FILE_SUFFIXES):
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)


def attach(trainer: Any, ctx: TrainContext) -> None:
    """Hook driftkit's callback into a built trainer; when driftkit shows its own progress, drop
    transformers' log printer and the libraries' progress bars so the terminal shows one bar."""
    trainer.add_callback(make_callback(ctx))
    if ctx.progress is not None:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)


def quiet_libraries() -> None:
    """Silence datasets'/transformers' own progress bars (driftkit draws one bar for the run)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def make_callback(ctx: TrainContext) -> Any:
    """A transformers callback: progress per logged step, and step-<N> model folders on every save."""
    from transformers import TrainerCallback

    class DriftkitCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs and "train_runtime" not in logs:
                ctx.report(int(state.global_step), int(state.max_steps), _numeric(logs))

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if src.is_dir():
                export_step_checkpoint(src, ctx.checkpoints_dir / f"step-{state.global_step}")

    return DriftkitCallback()


def _numeric(logs: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in logs.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def step_log(log_history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(per-step entries ``{"step": N, metric: value}``, the final summary) from ``trainer.state.log_history``."""
    steps: dict[int, dict[str, Any]] = {}
    summary: dict[str, float] = {}
    for entry in log_history:
        if "train_runtime" in entry:
            summary = _numeric(entry)
            continue
        step = int(entry.get("step", 0))
        values = _numeric(entry)
        values.pop("step", None)
        steps.setdefault(step, {"step": step}).update(values)
    return [steps[s] for s in sorted(steps)], summary


def save_final(trainer: Any, tokenizer: Any, ctx: TrainContext) -> None:
    """Final model (safetensors) + tokenizer into the staging folder (every process must call it under
    DeepSpeed so ZeRO-3 shards are gathered; only rank 0 writes)."""
    trainer.save_model(str(ctx.final_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(ctx.final_dir))
        for f in ctx.final_dir.glob("training_args.bin"):
            f.unlink()  # a pickle: never part of a model folder driftkit hands out


def train_and_finish(
    trainer: Any, tokenizer: Any, ctx: TrainContext, data: dict[str, Any], base: dict[str, Any], **extra: Any
) -> TrainResult:
    """The tail every bundled trainer shares: train (resuming when asked), save the final model,
    and turn TRL's log history into the run record."""
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    save_final(trainer, tokenizer, ctx)
    log, summary = step_log(trainer.state.log_history)
    return TrainResult(
        steps=int(trainer.state.global_step),
        log=log,
        data=data,
        base=base,
        extra={"summary": summary, **extra, "device": str(trainer.args.device)},
    )
