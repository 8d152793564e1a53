"""Exact KL/JS kernel vs a direct softmax over the full logits of a plain HF forward pass."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from driftkit.metrics.kl import KLWorkspace, kl_from_hidden, kl_from_logits_
from driftkit.store.reader import Unembedding


def _forward(model_dir: Path, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Unembedding]:
    """(T, V) logits the model itself produced, the (T, d) input of lm_head, and its unembedding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    seen: list[torch.Tensor] = []
    hook = model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        logits = model(ids.unsqueeze(0)).logits[0]
    hook.remove()
    cap = getattr(model.config, "final_logit_softcapping", None)
    bias = model.lm_head.bias.detach() if getattr(model.lm_head, "bias", None) is not None else None
    un = Unembedding(model.lm_head.weight.detach().clone(), bias, float(cap) if cap else None, None)
    return logits, seen[0][0], un


def _reference(la: torch.Tensor, lb: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    pa = torch.softmax(la.double(), -1)
    pb = torch.softmax(lb.double(), -1)
    m = 0.5 * (pa + pb)
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1)  # noqa: E731
    return {
        "kl_forward": kl(pb, pa),
        "kl_reverse": kl(pa, pb),
        "js": 0.5 * kl(pa, m) + 0.5 * kl(pb, m),
        "logratio": pb.log().gather(1, y[:, None])[:, 0] - pa.log().gather(1, y[:, None])[:, 0],
    }


def _check(la, lb, ha, hb, ua, ub, ids, chunk):
    y = ids[1:]
    # the unembedding reproduces the model's own logits
    assert torch.allclose(ua.logits(ha), la, atol=1e-4)
    ref = _reference(la[:-1], lb[:-1], y)
    ws = KLWorkspace(chunk, la.shape[1])
    got = kl_from_hidden(ha[:-1], hb[:-1], ua, ub, next_ids=y, workspace=ws)
    assert ref["kl_forward"].mean() > 1e-2  # the two models really differ
    for key in ("kl_forward", "kl_reverse", "js", "logratio"):
        torch.testing.assert_close(getattr(got, key).double(), ref[key], atol=2e-5, rtol=1e-4, msg=key)
    assert float(got.js.max()) <= math.log(2) + 1e-6


def test_kl_matches_softmax_of_model_logits(tiny_model: Path, tiny_tuned: Path) -> None:
    ids = torch.randint(4, 300, (37,), generator=torch.Generator().manual_seed(0))
    la, ha, ua = _forward(tiny_model, ids)
    lb, hb, ub = _forward(tiny_tuned, ids)
    _check(la, lb, ha, hb, ua, ub, ids, chunk=8)  # several chunks and a ragged last one


def test_kl_softcap_model(tmp_path: Path) -> None:
    from fixtures.tiny import build_tiny_model

    a = build_tiny_model(tmp_path / "a", "gemma2", num_layers=2, seed=0)
    b = build_tiny_model(tmp_path / "b", "gemma2", num_layers=2, seed=3)
    ids = torch.randint(4, 300, (20,), generator=torch.Generator().manual_seed(1))
    la, ha, ua = _forward(a, ids)
    lb, hb, ub = _forward(b, ids)
    assert ua.softcap == 30.0
    _check(la, lb, ha, hb, ua, ub, ids, chunk=64)


def test_identical_distributions_give_zero() -> None:
    logits = torch.randn(6, 1000) * 5
    got = kl_from_logits_(logits.clone(), logits.clone() + 3.0)  # a constant offset changes nothing
    for t in (got.kl_forward, got.kl_reverse, got.js):
        assert float(t.abs().max()) < 1e-6


def test_underflowing_probabilities_stay_finite() -> None:
    la = torch.zeros(2, 50)
    lb = torch.zeros(2, 50)
    la[:, 0] = 200.0  # every other entry underflows to exactly 0 under A
    lb[:, 1] = 200.0
    got = kl_from_logits_(la.clone(), lb.clone())
    ref = _reference(la, lb, torch.zeros(2, dtype=torch.int64))
    assert torch.isfinite(got.kl_forward).all() and torch.isfinite(got.js).all()
    torch.testing.assert_close(got.js.double(), ref["js"], atol=1e-6, rtol=1e-6)


def test_rows_for_budget_bounds_workspace_memory() -> None:
    from driftkit.metrics.kl import rows_for_budget

    assert rows_for_budget(49152, 512) == 512  # SmolLM2: full chunk fits in 512 MB
    big = rows_for_budget(256_000, 512)  # Gemma-size vocabulary: fewer rows, same memory bound
    assert big < 512 and big * 256_000 * 20 <= 512 * 2**20
    assert rows_for_budget(10**9, 512) == 8
