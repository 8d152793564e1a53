"""Shared fixtures: tiny random models built from configs (seconds, offline) and capture files.

The repo root goes on sys.path so tests can import ``fixtures.tiny`` without installing it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer llama-style random model (the 'base')."""
    from fixtures.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "base", "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and tokenizer as ``tiny_model``, other weights (a stand-in 'tuned' model)."""
    from fixtures.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tuned", "llama", seed=1)


@pytest.fixture(scope="session")
def tiny_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small JSONL prompt set with two domains, different lengths and one given response."""
    import json

    p = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [
        {"id": "m1", "domain": "math", "text": "What is 2 + 3?"},
        {"id": "m2", "domain": "math", "text": "Solve for x: 2x + 4 = 10, so x = 3. Therefore the final answer is 3."},
        {
            "id": "o1",
            "domain": "other",
            "text": "If all cats are animals and Tom is a cat, then Tom is an animal. Yes or no?",
        },
        {"id": "o2", "domain": "other", "text": "def add(a, b):", "response": "\n    return a + b"},
        {"id": "n1", "domain": "non", "text": "Write a poem about the sea."},
        {"id": "n2", "domain": "non", "messages": [{"role": "user", "content": "The sea is wide and blue."}]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.fixture(scope="session")
def tiny_capture_pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_tuned: Path, tiny_prompts: Path
) -> tuple[Path, Path]:
    """Two complete captures (base, tuned) of the same prompts, all residual layers + final."""
    from driftkit.capturing import CaptureConfig, capture

    d = tmp_path_factory.mktemp("captures")
    a = capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=d / "base.h5", max_batch_tokens=64))
    b = capture(
        CaptureConfig(model=str(tiny_tuned), prompts=str(tiny_prompts), out=d / "tuned.h5", max_batch_tokens=64)
    )
    return a, b
