"""The bundled demo experiment: the paper's controlled study on the default model, sized for a
2-core CPU (and a ``--quick`` variant on a tiny random model for smoke tests).

The settings live here, in code, because they are tuned together to fit the time budget: SFT and
GRPO runs of a few minutes, benchmark fixtures at a small limit, the bundled prompt sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from driftkit.pipeline.experiment import Experiment, from_dict

# SFT on worked solutions and GRPO with a math-verify reward, on the same bundled math problems,
# sized so the whole demo stays well under 15 min cold on a 2-core CPU (perf/demo_time.py: 12.5
# to 14.5 min across runs at 12 SFT + 10 RL steps, hence 10 + 8). From perf/train_speed.py:
# SFT ~12.7 s/step; at lr 1e-4 its loss falls 1.98 -> 0.12 by step 10-12 and held-out accuracy goes
# 0% -> 28%. GRPO ~24 s/step (half of it decoding). RL adds a half-weight format reward (exactly one
# \boxed{} answer): the base model boxes ~6% of its sampled answers, too rarely for correctness alone
# to give GRPO any signal within ten steps. At this size RL barely moves the model; the report says so.
DEMO_SFT: dict[str, Any] = {
    "steps": 10,
    "batch_size": 8,
    "learning_rate": 1e-4,
    "lr_scheduler": "constant",
    "save_steps": 5,
}
DEMO_RL: dict[str, Any] = {
    "steps": 8,
    "batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 48,
    "learning_rate": 3e-5,
    "lr_scheduler": "constant",
    "temperature": 1.0,
    "format_reward": 0.5,
    "save_steps": 4,
}

# The paper's finding, stated by the experiment (the core knows no trainer): SFT drifts more than RL,
# checked on every headline drift measure of the analyses that ran.
DEMO_STUDY: dict[str, Any] = {"expect": ["sft > rl"], "expect_why": "The paper's pattern"}


def demo_config(out: str | Path, quick: bool = False) -> dict[str, Any]:
    """The demo experiment (long because it is data: every setting of the demo study, spelled out once)."""
    if quick:
        from driftkit.tiny import build_tiny_model

        base_dir = Path(out) / "tiny-base"
        if not (base_dir / "model.safetensors").is_file():
            build_tiny_model(base_dir, "llama", num_layers=4, hidden_size=64, seed=0)
        tiny = {"batch_size": 4, "save_steps": 2, "limit": 64}
        return {
            "experiment": {"name": "demo-quick", "base": str(base_dir), "out": str(out), "seed": 0},
            "train": [
                {
                    "name": "sft",
                    "trainer": "sft",
                    "data": "bundled:math-train",
                    "options": {**tiny, "steps": 4, "learning_rate": 1e-3, "max_length": 128},
                },
                {
                    "name": "rl",
                    "trainer": "rl",
                    "data": "bundled:math-train",
                    "options": {
                        **tiny,
                        "steps": 2,
                        "num_generations": 2,
                        "max_completion_length": 8,
                        "learning_rate": 1e-4,
                    },
                },
            ],
            "bench": {
                "suite": "default",
                "limit": 2,
                "data": "fixtures",
                "options": {"max_new_tokens": 8, "batch_size": 8},
            },
            "capture": {
                "prompts": "bundled:general-mix",
                "chat_prompts": "bundled:general-mix",
                "chat_limit": 9,
                "max_new_tokens": 8,
            },
            "drift": {"enabled": True, "bench": ["math_heldout"], "layers": "all"},
            "study": DEMO_STUDY,
        }
    return {
        "experiment": {"name": "demo", "base": "smollm2-135m", "out": str(out), "seed": 0},
        "train": [
            {"name": "sft", "trainer": "sft", "data": "bundled:math-train", "options": DEMO_SFT},
            {"name": "rl", "trainer": "rl", "data": "bundled:math-train", "options": DEMO_RL},
        ],
        # the "quick" suite (math_heldout, gpqa, ifeval) with short generation budgets; drift is scored
        # on math_heldout too (at 48 tokens this model scored MATH-500's floor, 1 of 16, before and after)
        "bench": {"suite": "quick", "limit": 16, "data": "fixtures", "options": {}},
        "capture": {
            "prompts": "bundled:general-mix",
            "chat_prompts": "bundled:general-mix",
            "chat_limit": 24,
            "max_new_tokens": 48,
        },
        "drift": {"enabled": True, "bench": ["math_heldout"], "layers": "every:3"},
        "study": DEMO_STUDY,
    }


def demo_experiment(out: str | Path, quick: bool = False) -> Experiment:
    return from_dict(demo_config(out, quick), "driftkit demo" + (" --quick" if quick else ""))
