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
