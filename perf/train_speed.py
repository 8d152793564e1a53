"""Training figures on the default model: seconds per SFT / GRPO step, held-out accuracy before and
after each run, and the RL reward curve. Prints them (no assertions: timings depend on the machine).

    .venv/bin/python perf/train_speed.py                       # the demo's settings
    .venv/bin/python perf/train_speed.py --sft-steps 10 --rl-steps 4 --eval-n 32   # quicker look

Accuracy: greedy generation on the first ``--eval-n`` problems of ``bundled:math-train:heldout``
(problems never seen in training), scored by math-verify on the final ``\\boxed{}`` answer
(:func:`driftkit.plugins.trainers.rewards.answer_reward`), i.e. exactly what the RL reward pays for.
Both runs start from the same base (base -> SFT, base -> RL), as in the paper.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from driftkit.models import DEFAULT_MODEL, load_model
from driftkit.pipeline.demo import DEMO_RL, DEMO_SFT  # the demo's settings: one source of truth
from driftkit.plugins.trainers.mathdata import load_math_data, render_prompt
from driftkit.plugins.trainers.rewards import answer_reward, extract_answer
from driftkit.registry.trainer import read_manifest, train

#: Speed on this machine, loaded by other work (load average 3-6, torch at 1 thread): SFT ~25 s/step,
#: GRPO ~32 s/step; on an idle 2-core CPU expect several times less (see docs/training.md).


@torch.no_grad()
def evaluate(
    model_path: str, rows: list[dict[str, Any]], max_new_tokens: int = 48, batch_size: int = 16
) -> dict[str, float]:
    """Greedy accuracy (0-100) and the share of answers with a final boxed answer."""
    lm = load_model(model_path, device="cpu", dtype="float32")
    tok, model = lm.tokenizer, lm.model
    tok.padding_side = "left"
    correct, boxed, n = 0, 0, 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        prompts = [render_prompt(r["problem"], tok) for r in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for text, r in zip(texts, chunk):
            score = answer_reward(text, r["answer"])
            if score is None:
                continue
            n += 1
            correct += int(score == 1.0)
            boxed += int(extract_answer(text) is not None)
    return {"accuracy": 100.0 * correct / max(n, 1), "boxed": 100.0 * boxed / max(n, 1), "n": n}


def timed_train(name: str, model: str, out: Path, options: dict[str, Any]) -> tuple[Path, list[float], float]:
    """Train and time each step (wall clock between progress reports; step 1 includes warm-up)."""
    t0 = time.perf_counter()
    stamps = [t0]  # start, then the time each new step was reported
    seen: set[int] = set()

    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if step in seen:
            return
        seen.add(step)
        stamps.append(time.perf_counter())
        shown = " ".join(f"{k}={metrics[k]:.3f}" for k in ("loss", "reward") if k in metrics)
        print(f"  [{name}] step {step}/{total} {shown}", flush=True)

    path = train(name, model, "bundled:math-train", out, overwrite=True, progress=progress, **options)
    wall = time.perf_counter() - t0
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]  # deltas[0] includes loading the model and data
    return path, deltas, wall


def step_times(wall: float, deltas: list[float]) -> dict[str, float]:
    """Wall time and seconds per step; the mean leaves out step 1, which includes loading."""
    return {
        "wall_s": round(wall, 1),
        "s_per_step_mean": round(statistics.mean(deltas[1:] or deltas), 2),
        "s_per_step_median": round(statistics.median(deltas), 2),
        "first_step_s": round(deltas[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--sft-steps", type=int, default=DEMO_SFT["steps"])
    ap.add_argument("--rl-steps", type=int, default=DEMO_RL["steps"])
    ap.add_argument("--sft-lr", type=float, default=DEMO_SFT["learning_rate"])
    ap.add_argument("--rl-lr", type=float, default=DEMO_RL["learning_rate"])
    ap.add_argument("--format-reward", type=float, default=DEMO_RL["format_reward"])
    ap.add_argument("--eval-n", type=int, default=64, help="held-out problems scored before/after")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="where to keep the runs (default: a temp folder)")
    ap.add_argument("--skip", choices=("sft", "rl"), action="append", default=[])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = a.out or Path(tempfile.mkdtemp(prefix="driftkit-train-bench-"))
    heldout = load_math_data("bundled:math-train:heldout").rows[: a.eval_n]
    figures: dict[str, Any] = {
        "model": a.model,
        "threads": torch.get_num_threads(),
        "eval_n": len(heldout),
        "load_average_at_start": os.getloadavg()[0],
    }

    t = time.perf_counter()
    figures["base"] = evaluate(a.model, heldout)
    figures["eval_s"] = round(time.perf_counter() - t, 1)
    print(f"base: {figures['base']}  ({figures['eval_s']} s)", flush=True)

    if "sft" not in a.skip:
        opts = {**DEMO_SFT, "steps": a.sft_steps, "learning_rate": a.sft_lr, "save_steps": max(a.sft_steps // 3, 1)}
        path, deltas, wall = timed_train("sft", a.model, out / "sft", opts)
        figures["sft"] = {
            "options": opts,
            **step_times(wall, deltas),
            "loss_first_last": [read_manifest(path)["log"][0].get("loss"), read_manifest(path)["log"][-1].get("loss")],
            "after": evaluate(str(path), heldout),
        }
        print(f"sft: {json.dumps(figures['sft'])}", flush=True)

    if "rl" not in a.skip:
        opts = {
            **DEMO_RL,
            "steps": a.rl_steps,
            "learning_rate": a.rl_lr,
            "format_reward": a.format_reward,
            "save_steps": max(a.rl_steps // 2, 1),
        }
        path, deltas, wall = timed_train("rl", a.model, out / "rl", opts)
        log = read_manifest(path)["log"]
        figures["rl"] = {
            "options": opts,
            **step_times(wall, deltas),
            "reward_curve": [round(e.get("reward", float("nan")), 3) for e in log if "reward" in e],
            "accuracy_reward_curve": [
                round(e.get("rewards/math_accuracy_reward/mean", float("nan")), 3) for e in log if "reward" in e
            ],
            "after": evaluate(str(path), heldout),
        }
        print(f"rl: {json.dumps(figures['rl'])}", flush=True)

    print("\n== training figures ==")
    print(
        f"model {a.model}, torch threads {figures['threads']}, held-out n={len(heldout)}, "
        f"load average at start {figures['load_average_at_start']:.1f} / end {os.getloadavg()[0]:.1f} (other work on "
        "the machine)"
    )
    print(f"base accuracy {figures['base']['accuracy']:.1f}%  (boxed {figures['base']['boxed']:.1f}%)")
    for name in ("sft", "rl"):
        if name in figures:
            f = figures[name]
            print(
                f"{name}: {f['options']['steps']} steps, {f['s_per_step_mean']} s/step (median "
                f"{f['s_per_step_median']}, "
                f"first {f['first_step_s']}), wall {f['wall_s']} s; accuracy {figures['base']['accuracy']:.1f}% -> "
                f"{f['after']['accuracy']:.1f}% (boxed {f['after']['boxed']:.1f}%)"
            )
    if "rl" in figures:
        print("rl reward curve:", figures["rl"]["reward_curve"])
    if a.json:
        json.dump(figures, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
