"""Trainer plugins end to end on the tiny fixture model: SFT and GRPO train, save loadable
checkpoints whose weights moved, resume, and refuse bad input with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from driftkit.errors import DriftkitError
from driftkit.models import load_model
from driftkit.registry.trainer import MANIFEST, RUN_SCHEMA, read_manifest, train

# Tiny models are dominated by per-op overhead; on a shared 2-core machine one thread is much faster.
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _max_change(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def _loads_and_runs(folder: Path) -> None:
    lm = load_model(str(folder), device="cpu", dtype="float32")
    ids = lm.tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def sft_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "run"
    steps: list[int] = []
    path = train(
        "sft",
        str(tiny_model),
        "bundled:math-train",
        out,
        steps=2,
        batch_size=2,
        save_steps=2,
        learning_rate=1e-3,
        max_length=128,
        progress=lambda s, t, m: steps.append(s),
    )
    assert steps and steps[-1] == 2
    return path


def test_sft_saves_a_loadable_changed_model_and_manifest(sft_run: Path, tiny_model: Path) -> None:
    assert _max_change(tiny_model, sft_run) > 1e-4
    _loads_and_runs(sft_run)
    assert not list(sft_run.glob("*.bin")) and not list(sft_run.glob(".final-*"))
    m = read_manifest(sft_run)
    assert m["schema"] == RUN_SCHEMA and m["trainer"] == "sft" and m["steps"] == 2 and m["seed"] == 0
    assert m["base_model"] == str(tiny_model) and len(m["base"]["weights_sha256"]) == 64
    assert m["data"]["spec"] == "bundled:math-train" and len(m["data"]["sha256"]) == 64
    assert m["data"]["n_items"] == 4  # steps x batch rows, all with correct solutions
    assert m["config"]["learning_rate"] == 1e-3 and m["config"]["think"] is True
    assert m["versions"]["trl"] and m["versions"]["torch"]
    assert [e["step"] for e in m["log"]] == [1, 2] and all("loss" in e for e in m["log"])
    # intermediate checkpoint: a plain loadable model folder (no optimizer state, no pickles)
    assert m["checkpoints"] == ["checkpoints/step-2"]
    step2 = sft_run / "checkpoints" / "step-2"
    assert {p.name for p in step2.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert not [p for p in step2.iterdir() if p.suffix in (".pt", ".pth", ".bin")]
    _loads_and_runs(step2)


def test_sft_resume_continues_from_the_saved_step(sft_run: Path, tiny_model: Path) -> None:
    before = _weights(sft_run)
    path = train(
        "sft",
        str(tiny_model),
        "bundled:math-train",
        sft_run,
        resume=True,
        steps=4,
        batch_size=2,
        save_steps=2,
        learning_rate=1e-3,
        max_length=128,
    )
    m = read_manifest(path)
    assert m["resumed_from"] == "trainer_state/checkpoint-2"
    assert m["steps"] == 4
    assert [e["step"] for e in m["log"]] == [1, 2, 3, 4]  # the log of steps 1-2 came back with the state
    assert m["checkpoints"] == ["checkpoints/step-2", "checkpoints/step-4"]
    after = _weights(path)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    _loads_and_runs(path / "checkpoints" / "step-4")


def test_sft_no_think_strips_reasoning_from_targets(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps(
            {
                "problem": "What is 1 + 1?",
                "answer": "2",
                "solution": "<think>\n1 + 1 = 2\n</think>\nThe answer is \\boxed{2}.",
            }
        )
        + "\n"
    )
    from driftkit.plugins.trainers.sft import SFTTrainerPlugin

    seen: list[str] = []
    import trl

    original = trl.SFTTrainer.__init__

    def spy(self, *args, **kwargs):  # record the targets TRL receives
        seen.extend(r["completion"][0]["content"] for r in kwargs["train_dataset"])
        original(self, *args, **kwargs)

    trl.SFTTrainer.__init__ = spy
    try:
        SFTTrainerPlugin(steps=1, batch_size=1, think=False, max_length=64).run(
            str(tiny_model), str(data), tmp_path / "run"
        )
    finally:
        trl.SFTTrainer.__init__ = original
    assert seen == ["The answer is \\boxed{2}."]
    assert read_manifest(tmp_path / "run")["data"]["think"] is False


REWARD_FILE = '''
def length_reward(completions, **kwargs):
    """Differs within every group, so GRPO gets a non-zero advantage even from a random model."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [len(t) / 100.0 for t in texts]
'''


def test_grpo_trains_saves_and_skips_unparseable_gold(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    rows[1]["answer"] = "???"  # unparseable gold: dropped, never rewarded
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward_file = tmp_path / "rew.py"
    reward_file.write_text(REWARD_FILE)
    steps: list[dict] = []
    out = train(
        "rl",
        str(tiny_model),
        str(data),
        tmp_path / "rl",
        steps=2,
        batch_size=4,
        num_generations=2,
        max_completion_length=12,
        learning_rate=1e-3,
        save_steps=1,
        extra_rewards=f"{reward_file}:length_reward",
        temperature=1.0,
        progress=lambda s, t, m: steps.append(m),
    )
    assert _max_change(tiny_model, out) > 1e-5
    _loads_and_runs(out)
    m = read_manifest(out)
    assert m["trainer"] == "rl" and m["steps"] == 2
    assert m["config"]["beta"] == 0.0 and m["config"]["num_generations"] == 2
    assert m["data"]["n_items"] == 4 and m["data"]["n_rows_dropped"] == 1  # 2 steps x 2 prompts; "???" skipped
    assert m["checkpoints"] == ["checkpoints/step-1", "checkpoints/step-2"]
    assert all("reward" in e and "rewards/math_accuracy_reward/mean" in e for e in m["log"])
    assert any("reward" in s for s in steps)
    _loads_and_runs(out / "checkpoints" / "step-1")


# ---- bad input: clear errors, exit code 1, nothing left behind -------------------------------------


def _cli(*args: str):
    from driftkit.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_bad_inputs_exit_1(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "final": "2"}) + "\n")
    out = tmp_path / "out"

    r = _cli("train", "sft", str(tiny_model), "--data", str(data), "--out", str(out), "--steps", "1")
    assert r.exit_code == 1, r.output
    assert "'problem'" in r.output and "'solution'" in r.output and "--columns" in r.output
    assert not out.exists()  # nothing left behind

    r = _cli(
        "train", "sft", str(tmp_path / "no-model"), "--data", "bundled:math-train", "--out", str(out), "--steps", "1"
    )
    assert r.exit_code == 1 and "does not exist" in r.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    r = _cli("train", "sft", str(broken), "--data", "bundled:math-train", "--out", str(out), "--steps", "1")
    assert r.exit_code == 1 and "Could not load model" in r.output
    assert not out.exists()

    r = _cli("train", "rl", str(tiny_model), "--out", str(out), "--batch-size", "6", "--num-generations", "4")
    assert r.exit_code == 1
    assert "--batch-size 4 or 8" in r.output and "--num-generations" in r.output

    r = _cli("train", "sft", str(tiny_model), "--out", str(out), "--num-generations", "4")
    assert r.exit_code == 1 and "no option 'num_generations'" in r.output

    r = _cli("train", "nope", str(tiny_model), "--out", str(out))
    assert r.exit_code == 1 and "Unknown trainer" in r.output and "sft" in r.output

    out.mkdir()
    (out / "something.txt").write_text("mine")
    r = _cli("train", "sft", str(tiny_model), "--out", str(out), "--steps", "1")
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    r = _cli("train", "sft", str(tiny_model), "--out", str(out), "--steps", "1", "--overwrite")
    assert r.exit_code == 1 and "refuses to delete" in r.output
    assert (out / "something.txt").read_text() == "mine"
    r = _cli("train", "sft", str(tiny_model), "--out", str(out), "--steps", "1", "--resume")
    assert r.exit_code == 1 and "no resumable checkpoint" in r.output


THIRD_PARTY = '''
from driftkit.models import load_model
from driftkit.registry.trainer import Trainer, TrainResult


class CopyTrainer(Trainer):
    """A third-party trainer: 'trains' by scaling the weights (enough to see the plumbing work)."""

    name = "copy"
    options = {"scale": 1.0}  # declared like the other plugin kinds: name -> default

    def train(self, ctx):
        lm = load_model(ctx.model, device="cpu")
        for p in lm.model.parameters():
            p.data.mul_(self.config["scale"])
        for step in range(1, self.config["steps"] + 1):
            ctx.report(step, self.config["steps"], {"loss": 1.0 / step})
        lm.model.save_pretrained(ctx.final_dir)
        lm.tokenizer.save_pretrained(ctx.final_dir)
        return TrainResult(steps=self.config["steps"], log=[{"step": 1, "loss": 1.0}], data={"spec": ctx.data})
'''


def test_cli_third_party_trainer_file_and_overwrite(tiny_model: Path, tmp_path: Path) -> None:
    plugin = tmp_path / "copy_trainer.py"
    plugin.write_text(THIRD_PARTY)
    out = tmp_path / "run"
    args = (
        "train",
        f"{plugin}:CopyTrainer",
        str(tiny_model),
        "--out",
        str(out),
        "--steps",
        "3",
        "-o",
        "scale=0.5",
        "--json",
    )
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["trainer"] == "copy" and summary["steps"] == 3
    wa, wb = _weights(tiny_model), _weights(out)
    k = next(iter(wa))
    assert torch.allclose(wb[k], wa[k] * 0.5)
    assert json.loads((out / MANIFEST).read_text())["config"]["scale"] == 0.5
    # an existing run folder: refused without --overwrite, replaced with it
    assert _cli(*args).exit_code == 1
    r = _cli(*args[:-3], "-o", "scale=2", "--overwrite")
    assert r.exit_code == 0, r.output
    assert torch.allclose(_weights(out)[k], wa[k] * 2)
    # an option it does not have, or a value of the wrong type
    r = _cli("train", f"{plugin}:CopyTrainer", str(tiny_model), "--out", str(tmp_path / "x"), "-o", "scale=big")
    assert r.exit_code == 1 and "takes a float" in r.output


def test_config_file_and_python_api_errors(tiny_model: Path, tmp_path: Path) -> None:
    from driftkit.plugins.trainers.rl import GRPOTrainerPlugin

    with pytest.raises(DriftkitError, match="at least 2"):
        GRPOTrainerPlugin(num_generations=1, batch_size=4)
    with pytest.raises(DriftkitError, match="steps= must be at least 1"):
        GRPOTrainerPlugin(steps=0)
    out = tmp_path / "short"
    with pytest.raises(DriftkitError, match="max_length=8 leaves no solution token"):
        train("sft", str(tiny_model), "bundled:math-train", out, steps=1, batch_size=2, max_length=8)
    assert not out.exists()
    cfg = tmp_path / "rl.toml"
    cfg.write_text("steps = 1\n[rl]\nbatch_size = 6\nnum_generations = 4\n")
    r = _cli("train", "rl", str(tiny_model), "--out", str(tmp_path / "o"), "--config", str(cfg))
    assert r.exit_code == 1 and "not a multiple of the group size" in r.output
    cfg.write_text("steps = [1\n")
    r = _cli("train", "rl", str(tiny_model), "--out", str(tmp_path / "o"), "--config", str(cfg))
    assert r.exit_code == 1 and "not valid TOML" in r.output
