"""Math training data: the bundled set, JSONL, hf: specs, column mapping and bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from driftkit.errors import DriftkitError
from driftkit.plugins.trainers.mathdata import (
    bundled_file,
    load_math_data,
    plain_prompt,
    render_prompt,
    rows_sha256,
    strip_think,
)
from driftkit.plugins.trainers.rewards import answer_reward


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bundled_set_splits_are_disjoint_and_solutions_correct() -> None:
    train = load_math_data("bundled:math-train", need=("problem", "answer", "solution"))
    heldout = load_math_data("bundled:math-train:heldout", need=("problem", "answer", "solution"))
    assert len(train) >= 2000 and len(heldout) >= 100
    assert not {r["problem"] for r in train.rows} & {r["problem"] for r in heldout.rows}
    # every worked solution ends in a \boxed{} answer math-verify accepts (a sample: ~5 ms each)
    for row in train.rows[::60] + heldout.rows[::30]:
        assert answer_reward(row["solution"], row["answer"]) == 1.0, row
        assert "<think>" in row["solution"]


def test_bundled_file_is_reproducible_from_its_generator(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "plugins" / "trainers" / "data" / "make_math_train.py"
    spec = importlib.util.spec_from_file_location("make_math_train", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.generate()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert (
        hashlib.sha256(text.encode()).hexdigest() == hashlib.sha256(bundled_file("math-train").read_bytes()).hexdigest()
    )


def test_jsonl_with_column_mapping(tmp_path: Path) -> None:
    p = _write_jsonl(
        tmp_path / "d.jsonl", [{"q": "What is 1 + 1?", "final": 2, "resp": "\\boxed{2}"}, {"q": "x", "final": 3}]
    )
    d = load_math_data(
        str(p), columns={"problem": "q", "answer": "final", "solution": "resp"}, need=("problem", "answer")
    )
    assert [r["problem"] for r in d.rows] == ["What is 1 + 1?", "x"]
    assert d.rows[0]["answer"] == "2"  # numbers become strings
    assert d.columns == {"problem": "q", "answer": "final", "solution": "resp"}
    # rows lacking a needed column are left out, not passed on half-filled
    sft = load_math_data(
        str(p), columns={"problem": "q", "answer": "final", "solution": "resp"}, need=("problem", "solution")
    )
    assert len(sft) == 1
    # the hash covers content: same rows -> same hash, different rows -> different hash
    assert d.sha256() == rows_sha256(d.rows)
    assert sft.sha256() != d.sha256()


def test_missing_columns_are_named(tmp_path: Path) -> None:
    p = _write_jsonl(tmp_path / "d.jsonl", [{"question": "What is 1 + 1?", "final": "2"}])
    with pytest.raises(DriftkitError) as err:
        load_math_data(str(p), need=("problem", "answer", "solution"))
    msg = str(err.value)
    assert "'problem'" in msg and "'answer'" in msg and "'solution'" in msg
    assert "question" in msg and "final" in msg and "columns=" in msg
    with pytest.raises(DriftkitError, match="mapped to 'nope'"):
        load_math_data(str(p), columns={"problem": "question", "answer": "nope"})
    with pytest.raises(DriftkitError, match="unknown names"):
        load_math_data(str(p), columns={"prompt": "question"})


def test_bad_specs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(DriftkitError, match="line 2"):
        load_math_data(str(bad))
    with pytest.raises(DriftkitError, match="Cannot find the data"):
        load_math_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DriftkitError, match="Unknown bundled"):
        load_math_data("bundled:nope")
    with pytest.raises(DriftkitError, match="Unknown split"):
        load_math_data("bundled:math-train:test")
    with pytest.raises(DriftkitError, match="hf:DATASET"):
        load_math_data("hf:a:b:c:d")


def test_hf_spec_loads_a_local_dataset_folder(tmp_path: Path) -> None:
    """hf: goes through the real datasets.load_dataset (here on a local folder: no network)."""
    folder = tmp_path / "mathds"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"question": f"What is {i} + 1?", "ans": i + 1} for i in range(5)])
    _write_jsonl(folder / "test.jsonl", [{"question": "What is 9 + 1?", "ans": 10}])
    d = load_math_data(f"hf:{folder}:test", columns={"problem": "question", "answer": "ans"})
    assert [r["answer"] for r in d.rows] == ["10"]
    d = load_math_data(f"hf:{folder}:train", columns={"problem": "question", "answer": "ans"})
    assert len(d) == 5
    with pytest.raises(DriftkitError, match="Could not load the dataset"):
        load_math_data(f"hf:{folder}:validation")


def test_strip_think_and_prompts(tiny_model: Path) -> None:
    assert strip_think("<think>\n1 + 1 = 2\n</think>\nThe answer is \\boxed{2}.") == "The answer is \\boxed{2}."
    assert strip_think("no block \\boxed{2}") == "no block \\boxed{2}"

    class NoTemplate:
        chat_template = None

    assert plain_prompt("What is 1 + 1?").startswith("Question: What is 1 + 1? Put your final answer within \\boxed{}.")
    assert render_prompt("What is 1 + 1?", NoTemplate()) == plain_prompt("What is 1 + 1?")
    from driftkit.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    text = render_prompt("What is 1 + 1?", tok)
    assert text.startswith("<|im_start|>user\nWhat is 1 + 1?") and text.endswith("<|im_start|>assistant\n")


def test_bundled_accelerate_configs_load_in_accelerate() -> None:
    """The shipped multi-GPU / ZeRO-3 launch configs are read by accelerate's own loader."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = bundled_file("math-train").parent.parent / "configs"
    multi = load_config_from_file(str(folder / "multi_gpu.yaml"))
    assert multi.distributed_type == DistributedType.MULTI_GPU and multi.mixed_precision == "bf16"
    zero3 = load_config_from_file(str(folder / "zero3.yaml"))
    assert zero3.distributed_type == DistributedType.DEEPSPEED
    assert zero3.deepspeed_config["zero_stage"] == 3 and zero3.deepspeed_config["zero3_save_16bit_model"] is True
