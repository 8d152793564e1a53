"""Ranks vs argsort, URIAL buckets on a hand-built example."""

from __future__ import annotations

import torch

from driftkit.metrics.ranks import rank_of, rank_stats, urial_bucket


def test_rank_matches_argsort() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 997, generator=g)  # continuous: no ties
    ids = torch.randint(0, 997, (50,), generator=g)
    order = torch.argsort(logits, dim=1, descending=True)
    expected = (order == ids[:, None]).nonzero()[:, 1] + 1  # 1-based position in the sorted order
    assert torch.equal(rank_of(logits, ids), expected)
    scratch = torch.empty(64, 997, dtype=torch.bool)
    assert torch.equal(rank_of(logits, ids, scratch), expected)


def test_rank_ties_share_the_better_rank() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert rank_of(logits, torch.tensor([2])).item() == 1
    assert rank_of(logits, torch.tensor([0])).item() == 3


def test_urial_buckets_hand_built() -> None:
    # vocab of 6; A's preference order per position is written out by hand
    la = torch.tensor(
        [
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # A: 0 > 1 > 2 > 3 > 4 > 5
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # A: 5 > 4 > 3 > 2 > 1 > 0
        ]
    )
    lb = torch.tensor(
        [
            [5.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # B's top = 0 -> rank 1 under A: unshifted
            [0.0, 0.0, 5.0, 0.0, 0.0, 0.0],  # B's top = 2 -> rank 3: marginal
            [0.0, 0.0, 0.0, 0.0, 5.0, 0.0],  # B's top = 4 -> rank 5: shifted
            [0.0, 5.0, 0.0, 0.0, 0.0, 0.0],  # B's top = 1 -> rank 5: shifted
        ]
    )
    y = torch.tensor([1, 2, 4, 5])  # realised tokens
    st = rank_stats(la, lb, y)
    assert st.top_b.tolist() == [0, 2, 4, 1]
    assert st.rank_a_of_top_b.tolist() == [1, 3, 5, 5]
    assert urial_bucket(st.rank_a_of_top_b).tolist() == [0, 1, 2, 2]
    assert st.rank_a.tolist() == [2, 3, 5, 1]
    # under B: y=1 ties with 4 others below the top (1 + 1 larger) ...
    assert st.rank_b.tolist() == [2, 1, 1, 2]
    assert (st.rank_a - st.rank_b).tolist() == [0, 2, 4, -1]
    assert urial_bucket(torch.tensor([1, 2, 3, 4, 100])).tolist() == [0, 1, 1, 2, 2]


def _argsort_min_rank(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Independent reference: 'min' rank from a stable descending sort (first index of the tied block)."""
    vals = torch.sort(logits, dim=1, descending=True).values
    target = logits.gather(1, ids[:, None])
    return (vals == target).int().argmax(1) + 1


def _tied_blocks(seed: int, n: int = 40, vocab: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    la = torch.randint(0, 12, (n, vocab), generator=g).float()  # coarse values: many ties everywhere
    lb = torch.randint(0, 12, (n, vocab), generator=g).float()
    y = torch.randint(0, vocab, (n,), generator=g)
    return la, lb, y


def test_ties_at_b_top_use_a_best_and_min_ranks() -> None:
    la, lb, y = _tied_blocks(0)
    st = rank_stats(la, lb, y, torch.empty(64, la.shape[1], dtype=torch.bool))
    is_max = lb == lb.amax(1, keepdim=True)
    assert (is_max.sum(1) > 1).all()  # every row has a tied top under B
    best = la.masked_fill(~is_max, float("-inf")).amax(1)
    assert torch.equal(la.gather(1, st.top_b[:, None])[:, 0], best)  # the tied top A likes best
    assert is_max.gather(1, st.top_b[:, None]).all()
    assert torch.equal(st.rank_a_of_top_b, _argsort_min_rank(la, st.top_b))
    assert torch.equal(st.rank_a, _argsort_min_rank(la, y))
    assert torch.equal(st.rank_b, _argsort_min_rank(lb, y))


def test_vocabulary_permutation_changes_nothing() -> None:
    la, lb, y = _tied_blocks(1)
    perm = torch.randperm(la.shape[1], generator=torch.Generator().manual_seed(9))
    inv = torch.argsort(perm)
    st = rank_stats(la, lb, y)
    sp = rank_stats(la[:, perm], lb[:, perm], inv[y])
    assert torch.equal(st.rank_a_of_top_b, sp.rank_a_of_top_b)
    assert torch.equal(urial_bucket(st.rank_a_of_top_b), urial_bucket(sp.rank_a_of_top_b))
    assert torch.equal(st.rank_a - st.rank_b, sp.rank_a - sp.rank_b)
    assert torch.equal(la.gather(1, st.top_b[:, None]), la[:, perm].gather(1, sp.top_b[:, None]))


def test_top_token_from_one_comparison_matches_argmax_reference() -> None:
    """B's top token comes from amax + one comparison + a small product (not argmax): check it against
    a direct reference on rows with and without ties at the top, a NaN row, and a float32 scratch."""
    g = torch.Generator().manual_seed(11)
    la = torch.randn(40, 5_003, generator=g)
    lb = torch.randn(40, 5_003, generator=g)
    lb[::3, [7, 4_999]] = lb[::3].amax(1, keepdim=True) + 1.0  # every third row: a tie at the top
    lb[5, 100] = float("nan")
    st = rank_stats(la, lb, None, torch.empty(64, 5_003))
    for i in range(40):
        if i == 5:
            assert int(st.top_b[i]) == int(lb[i].argmax())  # argmax's answer for a NaN row
            continue
        cand = torch.where(lb[i] == lb[i].max())[0]
        best = cand[la[i, cand] == la[i, cand].max()].min()
        assert int(st.top_b[i]) == int(best)
        assert int(st.rank_a_of_top_b[i]) == int((la[i] > la[i, best]).sum()) + 1
