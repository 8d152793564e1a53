"""``driftkit train TRAINER MODEL``: make a checkpoint from a base model and math data.

One command for every trainer (bundled ``sft`` and ``rl``, third-party ones from the
``driftkit.trainers`` entry point, or ``file.py:Class``): the flags below map to trainer options by
name, options a trainer does not have are refused by that trainer, and ``-o name=value`` /
``--config file.toml`` reach any option, including a third-party trainer's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from driftkit.cli.common import (
    DriftkitCommand,
    console,
    emit_json,
    err_console,
    handle_errors,
    json_option,
    progress_bar,
)
from driftkit.parsing import load_toml, parse_kv

HELP = """Train a checkpoint: base MODEL -> OUT with TRAINER (sft, rl or a plugin).

OUT gets the final model (safetensors + tokenizer), checkpoints/step-N/ every --save-steps steps
(each loadable, to follow drift along training) and driftkit_run.json (data hash, config, seed,
versions, per-step loss/reward).

Examples:

  driftkit train sft smollm2-135m --data bundled:math-train --out ckpt/sft --steps 200
  driftkit train rl  smollm2-135m --data bundled:math-train --out ckpt/rl --steps 50 --num-generations 4
  driftkit train sft Qwen/Qwen3-14B-Base --data hf:ReasoningTransferability/math_40k:train --config sft.toml
  driftkit train sft ./base --data my.jsonl --columns problem=question,answer=final,solution=response --no-think
  driftkit train my_trainer.py:MyTrainer ./base --data my.jsonl --out ckpt/mine -o my_option=3
  accelerate launch --config_file zero3.yaml -m driftkit.cli.main train rl ...   (beyond one GPU)

--data: a JSONL file, hf:DATASET[:CONFIG]:SPLIT, or bundled:math-train (bundled).
"""


def _read_config(path: Path, trainer: str) -> dict[str, Any]:
    """Options from a TOML file: top-level keys, overlaid by a table named after the trainer."""
    doc = load_toml(path, "Config file")
    opts = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    section = doc.get(trainer)
    if isinstance(section, dict):
        opts.update(section)
    if isinstance(opts.get("columns"), dict):
        opts["columns"] = dict(opts["columns"])
    return {k.replace("-", "_"): v for k, v in opts.items()}


def _parse_pairs(pairs: list[str]) -> dict[str, str]:
    parsed = parse_kv(pairs, what="-o", example="my_option=3", allow_empty=True)
    return {key.replace("-", "_"): value for key, value in parsed.items()}


class _Progress:
    """Training steps on the shared progress display (a rich bar, or timed plain lines on a pipe),
    with loss/reward as the task's info."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar = progress_bar()
        self.task: Any = None
        self.t0 = 0.0  # set at the first phase line: the seconds shown count from there

    def phase(self, text: str) -> None:
        """What happens before step 1 (loading the model, preparing data: about a minute on a CPU),
        one line each with the time since the command started, so that minute is not silent (the
        trainer calls it through plugins/trainers/common.report_phase)."""
        import time

        if not self.t0:
            self.t0 = time.perf_counter()
        err_console.print(f"{self.label}: {text} ({time.perf_counter() - self.t0:.0f} s)", highlight=False)

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None:
        shown = [f"{k}={metrics[k]:.4g}" for k in ("loss", "reward") if k in metrics]
        if "rewards/math_accuracy_reward/mean" in metrics:
            shown.append(f"acc={metrics['rewards/math_accuracy_reward/mean']:.3g}")
        info = " ".join(shown)
        if self.task is None:
            # the task starts at the first report, after that step ran: counting it as done-at-start keeps the
            # rate and ETA to the steps timed (counted from 0, a 1-step run read "63,804 steps/s")
            self.task = self.bar.add_task(self.label, total=total, completed=step, info=info, unit="steps")
        self.bar.update(self.task, description=self.label, completed=step, total=total, info=info)


_DEFAULT_TAG = re.compile(r"\s*\\?\[(default: [^\]]*|sft [^\]]*)\]\.?$")


def _defaults_text(name: str, trainers: dict[str, dict[str, Any]]) -> str:
    """``[default: 100]`` when every bundled trainer that has option ``name`` agrees, else
    ``[sft 2e-05, rl 1e-06]``; empty when no trainer has it."""
    vals = {t: opts[name].default for t, opts in trainers.items() if name in opts}
    if not vals:
        return ""
    shown = {t: ("none" if v in ("", None) else v) for t, v in vals.items()}
    if len(set(map(repr, shown.values()))) == 1:
        return f"[default: {next(iter(shown.values()))}]"
    return "[" + ", ".join(f"{t} {v}" for t, v in shown.items()) + "]"


class _TrainCommand(DriftkitCommand):
    """``train --help`` with each option's default read from the bundled trainers' Options at help time
    (so help and behaviour cannot differ, and plain ``driftkit`` start-up does not import the trainers)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        try:
            from driftkit.registry import load

            trainers = {t: load("trainer", t).all_options() for t in ("sft", "rl")}
        except Exception:  # noqa: BLE001 - help must render even if a trainer cannot load
            trainers = {}
        for p in self.params:
            if p.name and getattr(p, "help", None) is not None:
                tag = _defaults_text(p.name, trainers)
                if tag:
                    p.help = _DEFAULT_TAG.sub("", p.help).rstrip(". ") + ". " + tag.replace("[", "\\[")
        super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    """Register the verb. Long, like the command inside it, because typer declares every option in the
    command's signature; the command bodies are short."""

    @app.command("train", help=HELP, no_args_is_help=True, cls=_TrainCommand)
    @handle_errors
    def train_cmd(
        trainer: str = typer.Argument(..., help="Trainer: sft, rl, a plugin name (driftkit plugins) or file.py:Class."),
        model: str = typer.Argument(
            ..., help="Base model: bundled name (smollm2-135m), local folder or Hugging Face id."
        ),
        data: str = typer.Option(
            "bundled:math-train", "--data", "-d", help="JSONL file, hf:DATASET[:CONFIG]:SPLIT or bundled:math-train."
        ),
        out: Path = typer.Option(
            ..., "--out", help="Run folder to create (final model, checkpoints/, driftkit_run.json)."
        ),
        steps: int | None = typer.Option(None, "--steps", help="Optimizer steps [default: 100]."),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Per-device batch (rl: completions per step) [default: 8]."
        ),
        grad_accum: int | None = typer.Option(None, "--grad-accum", help="Gradient accumulation steps [default: 1]."),
        learning_rate: float | None = typer.Option(
            None, "--lr", "--learning-rate", help="Peak learning rate [sft 2e-5, rl 1e-6]."
        ),
        lr_scheduler: str | None = typer.Option(
            None, "--lr-scheduler", help="linear, cosine, constant, ... [default: linear]."
        ),
        seed: int | None = typer.Option(None, "--seed", help="Random seed [default: 0]."),
        save_steps: int | None = typer.Option(
            None,
            "--save-steps",
            help="Loadable checkpoint every K steps (needed for --resume) [default: 0 = final only].",
        ),
        columns: str | None = typer.Option(
            None, "--columns", help="Map columns: problem=question,answer=final,solution=response."
        ),
        limit: int | None = typer.Option(None, "--limit", help="Use only the first N rows of the data."),
        think: bool | None = typer.Option(
            None, "--think/--no-think", help="sft: keep or strip <think>...</think> in the targets [default: keep]."
        ),
        max_length: int | None = typer.Option(None, "--max-length", help="sft: truncate examples to this many tokens."),
        num_generations: int | None = typer.Option(
            None, "--num-generations", help="rl: completions per prompt (group size) [default: 8]."
        ),
        max_completion_length: int | None = typer.Option(
            None, "--max-completion-length", help="rl: longest sampled completion [default: 512]."
        ),
        temperature: float | None = typer.Option(
            None, "--temperature", help="rl: sampling temperature [default: 1.0]."
        ),
        beta: float | None = typer.Option(None, "--beta", help="rl: KL penalty to the base [default: 0]."),
        format_reward: float | None = typer.Option(
            None, "--format-reward", help="rl: weight of a well-formed-answer reward [default: 0]."
        ),
        use_vllm: bool | None = typer.Option(
            None, "--use-vllm/--no-vllm", help="rl: generate with vLLM (GPU, colocate mode)."
        ),
        dtype: str | None = typer.Option(
            None, "--dtype", help="auto (bf16 on GPU, float32 on CPU), float32, bfloat16."
        ),
        device: str | None = typer.Option(
            None, "--device", help="auto (the GPU when there is one), cpu, cuda or cuda:N."
        ),
        revision: str | None = typer.Option(
            None, "--revision", help="Model revision (branch, tag or commit) of a hub model."
        ),
        trust_remote_code: bool | None = typer.Option(
            None, "--trust-remote-code", help="Run the model repository's own code."
        ),
        config: Path | None = typer.Option(
            None, "--config", help="TOML file of options (top-level keys and/or a [sft]/[rl] table)."
        ),
        option: list[str] = typer.Option([], "--option", "-o", help="Any trainer option as name=value (repeatable)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the last checkpoint in OUT (same command, same or more --steps)."
        ),
        as_json: str | None = json_option("the run summary"),
    ) -> None:
        from driftkit.registry import load
        from driftkit.registry.trainer import read_manifest

        cls = load("trainer", trainer)
        options: dict[str, Any] = _read_config(config, trainer) if config else {}
        options.update(_parse_pairs(option))
        flags = dict(
            steps=steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            learning_rate=learning_rate,
            lr_scheduler=lr_scheduler,
            seed=seed,
            save_steps=save_steps,
            columns=columns,
            limit=limit,
            think=think,
            max_length=max_length,
            num_generations=num_generations,
            max_completion_length=max_completion_length,
            temperature=temperature,
            beta=beta,
            format_reward=format_reward,
            use_vllm=use_vllm,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device=device,
            revision=revision,
        )
        options.update({k: v for k, v in flags.items() if v is not None})
        instance = cls(**options)
        label = f"train {instance.name or trainer}"
        with _Progress(label) as bar:
            path = instance.run(model, data, out, overwrite=overwrite, resume=resume, progress=bar)
        manifest = read_manifest(path)
        last = manifest["log"][-1] if manifest["log"] else {}
        summary = {
            "out": str(path),
            "trainer": manifest["trainer"],
            "steps": manifest["steps"],
            "final": {k: last[k] for k in ("loss", "reward") if k in last},
            "checkpoints": manifest["checkpoints"],
            "data_sha256": manifest["data"].get("sha256"),
            "wall_s": manifest["wall_s"],
        }
        if emit_json(as_json, json.dumps(summary, indent=2)):
            return
        final = ", ".join(f"{k} {v:.4g}" for k, v in summary["final"].items())
        console.print(
            f"[green]trained[/] {manifest['trainer']} for {summary['steps']} steps in {summary['wall_s']:.0f} s"
            f"{' (' + final + ')' if final else ''} -> {path}"
            + (f"; checkpoints: {', '.join(summary['checkpoints'])}" if summary["checkpoints"] else ""),
            highlight=False,
        )
