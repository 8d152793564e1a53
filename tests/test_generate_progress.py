"""Generation reports progress per decoding step (not per finished batch): samples and tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftkit.generate import HFGenerator
from driftkit.models import load_model


def test_progress_moves_during_a_batch(tiny_model: Path) -> None:
    loaded = load_model(str(tiny_model))
    tok = loaded.tokenizer
    prompts = [
        tok("What is 2 + 3?")["input_ids"],
        tok("Write a poem about the sea.")["input_ids"],
        tok("def add(a, b):")["input_ids"],
    ]
    calls: list[tuple[float, int]] = []
    gen = HFGenerator(loaded, batch_size=8)  # one batch: the old code reported once, at the end
    outs = gen.generate(prompts, max_new_tokens=12, progress=lambda n, tokens: calls.append((n, tokens)))
    assert len(outs) == 3
    assert len(calls) > 3  # advanced while decoding
    assert sum(n for n, _ in calls) == pytest.approx(3.0)
    assert sum(t for _, t in calls) == sum(len(o) for o in outs)  # every generated token, EOS included, once
