"""``rl``: GRPO with an answer-correctness reward, on TRL's GRPOTrainer.

The paper's RL recipe: the same base and the same math problems as SFT, but no solutions: the model
samples a group of completions per problem and is rewarded only for a correct final answer
(math-verify on the last ``\\boxed{}`` after any reasoning block, see :mod:`driftkit.answers`). KL
beta defaults to 0 (no reference model), as in TRL's default and the paper. An optional format reward
(weight ``format_reward``) pays for a well-formed answer, which helps tiny models that rarely box
their answer get any signal at all.

Batch arithmetic (TRL's): ``batch_size`` counts completions, so each optimizer step sees
``batch_size x grad_accum x processes / num_generations`` prompts; that product must be divisible by
``num_generations``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from driftkit.errors import DriftkitError
from driftkit.plugins.trainers.common import (
    SHARED_OPTIONS,
    attach,
    common_args,
    load_base,
    on_gpu,
    quiet_libraries,
    report_phase,
    select_rows,
    train_and_finish,
    world_size,
)
from driftkit.plugins.trainers.mathdata import load_math_data, prompt_for
from driftkit.plugins.trainers.rewards import math_accuracy_reward, math_format_reward, parse_gold
from driftkit.registry.imports import import_object
from driftkit.registry.trainer import Option, TrainContext, Trainer, TrainResult


def _divisible_hint(completions: int, g: int) -> str:
    """Name the nearest working values for the user."""
    lo = max(g, completions // g * g)
    hi = (completions // g + 1) * g
    divisors = [d for d in range(2, completions + 1) if completions % d == 0]
    alt = f" or --num-generations {' / '.join(map(str, divisors[-3:]))}" if divisors else ""
    return f"use --batch-size {lo} or {hi} (with --grad-accum 1){alt}"


def load_function(spec: str) -> Callable[..., Any]:
    """A reward function from ``file.py:name`` or ``module:name`` (user code, imported like a plugin file)."""
    fn = import_object(spec, "reward")
    if not callable(fn):
        raise DriftkitError(
            f"{spec} is not a function; a reward is a callable (prompts, completions, answer, **kwargs)."
        )
    return fn


class GRPOTrainerPlugin(Trainer):
    """GRPO (TRL GRPOTrainer) with math-verify answer-correctness reward."""

    name = "rl"
    description = "GRPO reinforcement learning with a math-verify answer-correctness reward (TRL GRPOTrainer)."
    options = {
        **SHARED_OPTIONS,
        "learning_rate": Option(1e-6, "Peak learning rate (AdamW)."),
        "num_generations": Option(8, "Completions sampled per prompt (the GRPO group size)."),
        "max_completion_length": Option(512, "Longest completion sampled, in tokens."),
        "temperature": Option(1.0, "Sampling temperature of the completions."),
        "top_p": Option(1.0, "Nucleus sampling of the completions."),
        "beta": Option(0.0, "KL penalty to the base model (0: no reference model, as TRL's default and the paper)."),
        "num_iterations": Option(1, "Optimisation passes over each generated batch (GRPO's mu)."),
        "format_reward": Option(
            0.0,
            "Weight of an extra reward for a well-formed answer (closed reasoning block + \\boxed{}); 0: correctness "
            "only.",
        ),
        "extra_rewards": Option(
            "",
            "More reward functions, comma-separated 'file.py:function' or 'module:function' (TRL's signature: "
            "(prompts, completions, answer, **kwargs) -> list[float | None]), each with weight 1.",
        ),
        "use_vllm": Option(False, "Generate with vLLM (GPU, vllm installed) in TRL's colocate mode."),
        "vllm_mode": Option(
            "colocate", "vLLM mode: colocate (same GPUs) or server (trl vllm-serve).", choices=("colocate", "server")
        ),
        "vllm_gpu_memory_utilization": Option(0.3, "GPU memory share for vLLM in colocate mode."),
        "log_completions": Option(False, "Print sampled completions with their rewards every logging step."),
    }

    def check(self, config: dict[str, Any]) -> None:
        cfg = config
        g = int(cfg["num_generations"])
        if g < 2:
            raise DriftkitError(
                f"--num-generations must be at least 2 (GRPO compares completions within a group); got {g}."
            )
        completions = int(cfg["batch_size"]) * int(cfg["grad_accum"]) * world_size()
        if completions % g:
            raise DriftkitError(
                f"A GRPO step holds batch_size x grad_accum x processes = {cfg['batch_size']} x {cfg['grad_accum']} x "
                f"{world_size()} = {completions} completions, which is not a multiple of the group size "
                f"--num-generations {g}: every prompt needs its full group. {_divisible_hint(completions, g)}."
            )
        if cfg["use_vllm"]:
            if not on_gpu():
                raise DriftkitError(
                    "--use-vllm needs a CUDA GPU; on CPU drop --use-vllm (transformers generates instead)."
                )
            if importlib.util.find_spec("vllm") is None:
                raise DriftkitError(
                    "--use-vllm: vllm is not installed. Install it with pip install 'driftkit[vllm]' or drop "
                    "--use-vllm."
                )

    def train(self, ctx: TrainContext) -> TrainResult:
        """GRPO through TRL. Long because TRL's GRPOConfig takes its settings as one call, which reads
        best in one place next to the reward wiring."""
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        cfg = ctx.config
        if ctx.progress is not None:
            quiet_libraries()
        report_phase(ctx, f"reading data {ctx.data}")
        data = load_math_data(ctx.data, columns=cfg["columns"], need=("problem", "answer"))
        model, tok, base = load_base(ctx)
        tok.padding_side = "left"  # generation pads on the left

        g = int(cfg["num_generations"])
        prompts_needed = int(cfg["steps"]) * int(cfg["batch_size"]) * int(cfg["grad_accum"]) * world_size() // g
        # Unparseable gold answers are dropped up front (the reward would skip them anyway).
        rows, data_info = select_rows(
            data, prompts_needed, int(cfg["seed"]), int(cfg["limit"]), lambda r: parse_gold(r["answer"]) is not None
        )
        dataset = Dataset.from_list(
            [{"prompt": prompt_for(r["problem"], tok, cfg["prompt_suffix"]), "answer": r["answer"]} for r in rows]
        )

        reward_funcs: list[Any] = [math_accuracy_reward]
        weights = [1.0]
        if float(cfg["format_reward"]) > 0:
            reward_funcs.append(math_format_reward)
            weights.append(float(cfg["format_reward"]))

        for spec in filter(None, (x.strip() for x in str(cfg["extra_rewards"]).split(","))):
            reward_funcs.append(load_function(spec))
            weights.append(1.0)

        vllm: dict[str, Any] = {}
        if cfg["use_vllm"]:
            vllm = dict(
                use_vllm=True,
                vllm_mode=cfg["vllm_mode"],
                vllm_gpu_memory_utilization=float(cfg["vllm_gpu_memory_utilization"]),
            )
        args = GRPOConfig(
            **common_args(ctx, cfg["learning_rate"]),
            num_generations=g,
            max_completion_length=int(cfg["max_completion_length"]),
            temperature=float(cfg["temperature"]),
            top_p=float(cfg["top_p"]),
            beta=float(cfg["beta"]),
            num_iterations=int(cfg["num_iterations"]),
            reward_weights=weights,
            log_completions=bool(cfg["log_completions"]),
            **vllm,
        )
        report_phase(ctx, f"preparing {len(dataset)} training examples (tokenizing)")
        trainer = GRPOTrainer(
            model=model if model is not None else base["path"],
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
        )
        attach(trainer, ctx)
        return train_and_finish(trainer, tok, ctx, data_info, base, reward_weights=weights)
