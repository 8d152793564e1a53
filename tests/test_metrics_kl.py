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


# -- precision at RL-sized drift (issue 16) ---------------------------------------------------------


def _ref64(la: torch.Tensor, lb: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """float64 reference from log_softmax of the float32 logits (masked entries handled by hand)."""
    lpa, lpb = torch.log_softmax(la.double(), -1), torch.log_softmax(lb.double(), -1)
    pa, pb = lpa.exp(), lpb.exp()
    lm = torch.log(0.5 * (pa + pb))
    kl = lambda p, lp, lq: torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)  # noqa: E731
    return {
        "kl_forward": kl(pb, lpb, lpa),
        "kl_reverse": kl(pa, lpa, lpb),
        "js": 0.5 * kl(pa, lpa, lm) + 0.5 * kl(pb, lpb, lm),
        "logratio": (lpb - lpa).gather(1, y[:, None])[:, 0],
    }


def _drift_pair(eps: float, n: int = 24, vocab: int = 32_768, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    la = torch.randn(n, vocab, generator=g) * 3.0
    lb = (la + eps * torch.randn(n, vocab, generator=g)).to(torch.float32)
    return la, lb


@pytest.mark.parametrize("eps,kl_size", [(0.14, 1e-2), (0.045, 1e-3), (0.014, 1e-4)])
def test_small_drift_matches_float64(eps: float, kl_size: float) -> None:
    la, lb = _drift_pair(eps)
    y = torch.randint(0, la.shape[1], (la.shape[0],), generator=torch.Generator().manual_seed(2))
    ref = _ref64(la, lb, y)
    assert kl_size / 3 < float(ref["kl_forward"].mean()) < kl_size * 3  # the drift size we meant
    got = kl_from_logits_(la.clone(), lb.clone(), y)
    for key in ("kl_forward", "kl_reverse", "js", "logratio"):
        rel = ((getattr(got, key).double() - ref[key]).abs() / ref[key].abs()).max()
        assert float(rel) < 1e-3, (key, float(rel))


def test_small_drift_through_hidden_and_unembedding() -> None:
    """Through kl_from_hidden, in several chunks, vs float64 softmax of the float32 logits h @ W.T."""
    g = torch.Generator().manual_seed(3)
    vocab, d, n = 30_000, 64, 40
    w = torch.randn(vocab, d, generator=g) * 0.3
    ha = torch.randn(n, d, generator=g)
    hb = ha + 0.01 * torch.randn(n, d, generator=g)
    ua = Unembedding(w, None, None, None)
    wb = w + 0.002 * torch.randn(vocab, d, generator=g)
    ub = Unembedding(wb, None, None, None)
    y = torch.randint(0, vocab, (n,), generator=g)
    la, lb = ha @ w.T, hb @ wb.T  # the float32 logits the kernel rebuilds
    ref = _ref64(la, lb, y)
    assert 1e-4 < float(ref["kl_forward"].min())
    got = kl_from_hidden(ha, hb, ua, ub, next_ids=y, workspace=KLWorkspace(16, vocab))
    for key in ("kl_forward", "kl_reverse", "js", "logratio"):
        rel = ((getattr(got, key).double() - ref[key]).abs() / ref[key].abs()).max()
        assert float(rel) < 1e-3, (key, float(rel))


def test_identical_inputs_give_exactly_zero() -> None:
    la = torch.randn(9, 40_000, generator=torch.Generator().manual_seed(4)) * 4
    la[3, :100] = float("-inf")  # masked entries too
    y = torch.arange(9) * 7
    got = kl_from_logits_(la.clone(), la.clone(), y)
    for key in ("kl_forward", "kl_reverse", "js", "logratio"):
        assert (getattr(got, key) == 0.0).all(), key
    un = Unembedding(torch.randn(3000, 16), None, None, None)
    h = torch.randn(33, 16)
    st = kl_from_hidden(h, h.clone(), un, un, next_ids=torch.arange(33), chunk=8)
    for key in ("kl_forward", "kl_reverse", "js", "logratio"):
        assert (getattr(st, key) == 0.0).all(), key


def test_masked_entries() -> None:
    """-inf logits: shared ones contribute 0; B-only masks give finite KL(B||A) and KL(A||B) = +inf;
    A-only masks give KL(B||A) = +inf; JS is always finite."""
    la, lb = _drift_pair(0.1, n=6, vocab=2000)
    la[:, :50] = float("-inf")
    lb[:, :50] = float("-inf")  # shared
    lb[1, 60:70] = float("-inf")  # only B masks: B puts no mass there
    la[2, 80:90] = float("-inf")  # only A masks: B puts mass where A has none
    la[3, 100:110] = float("-inf")
    lb[3, 200:210] = float("-inf")  # different entries in each
    y = torch.tensor([5, 65, 85, 150, 300, 400])
    ref = _ref64(la, lb, y)
    got = kl_from_logits_(la.clone(), lb.clone(), y)
    for key in ("kl_forward", "kl_reverse", "js", "logratio"):
        g = getattr(got, key)
        assert not torch.isnan(g).any(), key
    fin = [0, 1, 4, 5]
    torch.testing.assert_close(got.kl_forward[fin].double(), ref["kl_forward"][fin], rtol=1e-4, atol=0)
    assert torch.isinf(got.kl_forward[[2, 3]]).all()
    assert torch.isinf(got.kl_reverse[[1, 3]]).all()
    fin_r = [0, 2, 4, 5]
    torch.testing.assert_close(got.kl_reverse[fin_r].double(), ref["kl_reverse"][fin_r], rtol=1e-4, atol=0)
    torch.testing.assert_close(got.js.double(), ref["js"], rtol=1e-4, atol=0)
    assert got.logratio[2] == float("inf")  # the realised token is impossible under A
    assert got.logratio[0] == 0.0  # masked in both: defined as 0, never NaN
    torch.testing.assert_close(got.logratio[4:].double(), ref["logratio"][4:], rtol=1e-4, atol=1e-6)


def test_nan_logit_raises_with_position() -> None:
    from driftkit.errors import DriftkitError

    la, lb = _drift_pair(0.1, n=5, vocab=500)
    lb[3, 17] = float("nan")
    with pytest.raises(DriftkitError, match="row 3"):
        kl_from_logits_(la.clone(), lb.clone())
    un = Unembedding(torch.randn(300, 8), None, None, None)
    h = torch.randn(20, 8)
    hb = h.clone()
    hb[13, 2] = float("nan")
    with pytest.raises(DriftkitError, match="row 13") as e:
        kl_from_hidden(h, hb, un, un, chunk=4)
    assert e.value.row == 13  # type: ignore[attr-defined]


def test_underflowing_base_entries_keep_b_mass() -> None:
    """Entries where A's probability underflows float32 (logit range > 87) take the exp path for p_B."""
    la, lb = _drift_pair(0.045, n=8, vocab=30_000)
    la[:, :20] -= 120.0  # exp(l_A - max) == 0 in float32 there
    lb[:, :20] = la[:, :20] + 70.0  # ... while B keeps (small) mass on them (u ~ 70: fast path)
    y = torch.arange(8)
    ref = _ref64(la, lb, y)
    got = kl_from_logits_(la.clone(), lb.clone(), y)
    for key in ("kl_forward", "kl_reverse", "js", "logratio"):
        rel = ((getattr(got, key).double() - ref[key]).abs() / ref[key].abs()).max()
        assert float(rel) < 1e-3, (key, float(rel))


def _hard_blocks() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Blocks that take every branch of the kernel: small drift, equal rows, masked (-inf) entries
    (the float64 fallback rows), entries far below the max (the underflow path), a large logit range."""
    g = torch.Generator().manual_seed(3)
    la = 3 * torch.randn(12, 3000, generator=g)
    small = la + 1e-3 * torch.randn(12, 3000, generator=g)
    small[4] = la[4]  # an equal row: exactly 0
    masked_a, masked_b = la.clone(), small.clone()
    masked_a[2, :50] = float("-inf")
    masked_b[2, 25:75] = float("-inf")
    masked_b[7, 10] = float("-inf")
    deep_a = la.clone()
    deep_a[5, :200] -= 150.0  # l_A - max < -87: the exp((l_A - max) + r) path
    return [(la, small), (masked_a, masked_b), (deep_a, small), (10 * la, 10 * small + torch.randn(12, 3000))]


def test_kernel_with_em_buf_keeps_inputs_and_is_bit_identical() -> None:
    """The non-destructive form (a fourth scratch buffer, what the compare engine shares) leaves both
    logit blocks untouched and gives exactly the in-place kernel's numbers, on every branch."""
    for la, lb in _hard_blocks():
        y = torch.arange(la.shape[0]) * 7
        ref = kl_from_logits_(la.clone(), lb.clone(), y)
        a0, b0 = la.clone(), lb.clone()
        bufs = [torch.empty_like(la) for _ in range(4)]
        got = kl_from_logits_(la, lb, y, *bufs[:3], em_buf=bufs[3])
        assert torch.equal(la, a0) and torch.equal(lb, b0)
        for k in ("kl_forward", "kl_reverse", "js", "logratio"):
            assert torch.equal(getattr(got, k), getattr(ref, k)), k
