"""``sft``: supervised fine-tuning on worked solutions with TRL's SFTTrainer.

The paper's SFT recipe: the base model is trained on teacher solutions of math problems, keeping only
solutions whose final answer is correct (rejection sampling), with the loss on the solution tokens
only. Here:

- data: ``problem`` + ``solution`` (+ ``answer`` for the correctness filter) as prompt/completion
  pairs; chat messages when the tokenizer has a chat template (TRL applies it), plain text otherwise;
- loss on the completion only (``completion_only_loss=True``);
- ``filter_correct`` (default on) drops rows whose solution's final ``\\boxed{}`` answer is not the
  gold answer according to math-verify (also rows whose gold answer cannot be parsed);
- ``think`` off strips ``<think>...</think>`` from the targets (the paper's "no-think" variant).
"""

from __future__ import annotations

from typing import Any

from driftkit.errors import DriftkitError, opt
from driftkit.plugins.trainers.common import (
    SHARED_OPTIONS,
    attach,
    common_args,
    load_base,
    quiet_libraries,
    report_phase,
    select_rows,
    train_and_finish,
    world_size,
)
from driftkit.plugins.trainers.mathdata import load_math_data, prompt_for, strip_think
from driftkit.plugins.trainers.rewards import answer_reward
from driftkit.registry.trainer import Option, TrainContext, Trainer, TrainResult


class SFTTrainerPlugin(Trainer):
    """Supervised fine-tuning (TRL SFTTrainer), completion-only loss on worked solutions."""

    name = "sft"
    description = "Supervised fine-tuning on worked solutions (TRL SFTTrainer, completion-only loss)."
    options = {
        **SHARED_OPTIONS,
        "learning_rate": Option(2e-5, "Peak learning rate (AdamW)."),
        "max_length": Option(1024, "Truncate prompt+solution to this many tokens."),
        "think": Option(True, "Keep <think>...</think> reasoning in the targets (off: the paper's no-think SFT)."),
        "filter_correct": Option(
            True, "Train only on solutions whose final \\boxed{} answer math-verify matches the gold answer."
        ),
        "packing": Option(
            False, "Pack several examples into one max_length sequence (faster on GPU with flash attention)."
        ),
    }

    def train(self, ctx: TrainContext) -> TrainResult:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        cfg = ctx.config
        if ctx.progress is not None:
            quiet_libraries()
        need = ("problem", "solution", "answer") if cfg["filter_correct"] else ("problem", "solution")
        report_phase(ctx, f"reading data {ctx.data}")
        data = load_math_data(ctx.data, columns=cfg["columns"], need=need)
        model, tok, base = load_base(ctx)

        def keep(row: dict[str, Any]) -> bool:
            return answer_reward(row["solution"], row["answer"]) == 1.0

        n_needed = int(cfg["steps"]) * int(cfg["batch_size"]) * int(cfg["grad_accum"]) * world_size()
        rows, data_info = select_rows(
            data, n_needed, int(cfg["seed"]), int(cfg["limit"]), keep if cfg["filter_correct"] else None
        )
        data_info["think"] = bool(cfg["think"])

        chat = bool(getattr(tok, "chat_template", None))
        records = []
        for r in rows:
            target = r["solution"] if cfg["think"] else strip_think(r["solution"])
            if not target:
                continue
            prompt = prompt_for(r["problem"], tok, cfg["prompt_suffix"])
            completion: Any = [{"role": "assistant", "content": target}] if chat else " " + target
            records.append({"prompt": prompt, "completion": completion})
        if not records:
            raise DriftkitError(
                f"No training example is left in {ctx.data} after stripping reasoning blocks: every solution is only a "
                "<think> block. Use --think."
            )
        dataset = Dataset.from_list(records)

        args = SFTConfig(
            **common_args(ctx, cfg["learning_rate"]),
            completion_only_loss=True,
            max_length=int(cfg["max_length"]),
            packing=bool(cfg["packing"]),
            dataset_num_proc=None,
        )
        report_phase(ctx, f"preparing {len(dataset)} training examples (tokenizing)")
        trainer = SFTTrainer(
            model=model if model is not None else base["path"],
            args=args,
            train_dataset=dataset,
            processing_class=tok,
        )
        attach(trainer, ctx)
        kept = len(trainer.train_dataset)
        if kept == 0:
            raise DriftkitError(
                f"{opt('max_length', cfg['max_length'])} leaves no solution token to train on: every prompt is at "
                f"least that long once tokenized (with the chat template). Raise {opt('max_length', None)} (prompts "
                "here need more tokens)."
            )
        data_info["n_examples_trained"] = kept  # after TRL dropped examples truncated to their prompt
        return train_and_finish(trainer, tok, ctx, data_info, base, chat_template=chat)
