"""The final probe's per-position statistics (driftkit.probes.final.next_token_stats, top_k) against
independent references: a float64 log-softmax for log p(next) and the entropy, a stable argsort for the
top-k, at a real vocabulary size (the blocked top-k path), with a ragged tail, ties and -inf entries."""

from __future__ import annotations

import pytest
import torch

import driftkit.probes.final as final_probe
from driftkit.probes.final import next_token_stats, top_k


def _reference_top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(x.double(), dim=-1, descending=True, stable=True)[:, :k]
    return x.gather(1, order), order


@pytest.mark.parametrize("vocab", [49_152, 49_152 + 37, 32_000])
def test_top_k_equals_a_sort(vocab: int) -> None:
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(23, vocab, generator=g) * 3
    x[3, 1_000:1_030] = 40.0 + torch.arange(30.0)  # the top 20 crowded into one or two blocks
    x[4, -5:] = 50.0 + torch.arange(5.0)  # part of the top k in the ragged tail (or the last block)
    x[5, ::7] = float("-inf")  # masked vocabulary
    v, i = top_k(x, 20)
    rv, ri = _reference_top_k(x, 20)
    assert torch.equal(v, rv) and torch.equal(i, ri)


def test_top_k_ties_keep_the_values_and_valid_ids() -> None:
    """Entries tied at the k-th value: the values equal topk's and every id points at its value."""
    x = torch.zeros(4, 49_152)
    x[:, 5_000] = 3.0
    x[0, 100:140] = 1.0  # 40 entries tied for places 2..20
    x[1, ::1000] = 2.0
    v, i = top_k(x, 20)
    rv, _ = _reference_top_k(x, 20)
    assert torch.equal(v, rv)
    assert torch.equal(x.gather(1, i), v)
    assert all(len(set(row.tolist())) == 20 for row in i)  # no id twice


def test_top_k_small_vocabulary_is_topk_itself() -> None:
    x = torch.randn(6, 320)
    assert all(torch.equal(a, b) for a, b in zip(top_k(x, 20), x.topk(20, dim=-1)))


def test_next_token_stats_against_a_float64_softmax() -> None:
    """Small differences over a large vocabulary are where a float32 shortcut would show."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 49_152, generator=g) * 2
    logits[7] = logits[6] + 1e-3 * torch.randn(49_152, generator=g)  # nearly equal rows
    ids = torch.randint(0, 49_152, (40,), generator=g)
    got = next_token_stats(logits, ids, 20)
    lp = torch.log_softmax(logits.double(), -1)
    assert torch.allclose(got["logprob"].double(), lp.gather(1, ids[:, None])[:, 0], rtol=0, atol=2e-5)
    ent = -(lp.exp() * lp).sum(-1)
    assert torch.allclose(got["entropy"].double(), ent, rtol=1e-5, atol=0)
    _, ref_ids = _reference_top_k(logits, 20)
    assert torch.equal(got["topk_ids"].long(), ref_ids)
    assert torch.allclose(got["topk_logprobs"].double(), lp.gather(1, ref_ids), rtol=0, atol=2e-5)
    # row chunks change only the float32 summation order within a row
    one = next_token_stats(logits, ids, 20, chunk=1)
    assert torch.equal(one["topk_ids"], got["topk_ids"])
    assert all(torch.allclose(one[key], got[key], rtol=1e-6, atol=1e-6) for key in ("logprob", "entropy"))


def test_blocked_and_plain_top_k_store_the_same_file_values(monkeypatch) -> None:
    """next_token_stats with the blocked top-k and with torch.topk give identical statistics."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(17, 49_152, generator=g) * 4
    ids = torch.randint(0, 49_152, (17,), generator=g)
    blocked = next_token_stats(logits, ids, 20)
    monkeypatch.setattr(final_probe, "top_k", lambda x, k: x.topk(k, dim=-1))
    plain = next_token_stats(logits, ids, 20)
    assert all(torch.equal(blocked[key], plain[key]) for key in blocked)


def test_confident_positions_keep_the_entropy_relative_precision() -> None:
    """Peaked rows (the max 5..40 above a N(0, 4) vocabulary of 49,152): entropies from ~9 down to
    ~1e-11 nats. log of a float32 sum 1 + tiny rounds to 6e-8, a 4% error at H = 1e-6; the probe's
    log1p of the sum without the max's term must stay within 1e-5 relative of float64 there."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 49_152, generator=g) * 2
    logits[:, 0] += torch.linspace(5, 40, 64)
    ids = torch.randint(0, 49_152, (64,), generator=g)
    got = next_token_stats(logits, ids, 20)
    lp = torch.log_softmax(logits.double(), -1)
    ent = -(lp.exp() * lp).sum(-1)
    assert ent.min() < 1e-9 and ent.max() > 5  # the range the test is about
    confident = ent > 1e-6
    rel = ((got["entropy"].double() - ent) / ent).abs()
    assert confident.sum() > 10 and rel[confident].max() < 1e-5
    assert (got["entropy"] >= 0).all()
    assert torch.allclose(got["logprob"].double(), lp.gather(1, ids[:, None])[:, 0], rtol=0, atol=2e-5)
    assert torch.allclose(got["topk_logprobs"][:, 0].double(), lp.max(1).values, rtol=0, atol=1e-6)
