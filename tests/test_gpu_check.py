"""perf/gpu_check.py refuses to run, with a clear message, where no GPU is visible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run the check")
def test_no_gpu_exits_with_a_clear_message() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "no CUDA GPU is visible" in res.stderr and "--device cpu" in res.stderr


def test_shape_smoke_on_cpu(tmp_path: Path) -> None:
    """``--shape tiny --device cpu``: the paper-scale path (a random model built in place, long prompts,
    capture vs plain forward, file vs the --dry-run estimate) runs end to end and prints its figures."""
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--shape", "tiny", "--prompts", "2"]
    cmd += ["--prompt-tokens", "150", "--workdir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 of " in res.stdout and "capture / plain forward" in res.stdout
    # the file matches the estimate up to the sample index, which --dry-run leaves out
    ratio = float(res.stdout.split("estimate")[1].split(", ")[1].split("x)")[0])
    assert 1.0 <= ratio < 1.1
    assert not list(tmp_path.rglob("scale.h5"))  # the capture file is removed unless --keep
