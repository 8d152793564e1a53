"""Reused chunk buffers (driftkit.store.buffers): compare's passes read and convert every chunk into
a few buffers in rotation, never into one a consumer still holds, with unchanged results."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import torch
from json_canon import canon

import driftkit
from driftkit import Analysis
from driftkit.comparing.read_ahead import held_chunks
from driftkit.store import buffers as B
from driftkit.store.reader import CaptureReader


def test_chunk_buffers_reuse_grow_and_leave_large_blocks_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = B.ChunkBuffers()
    x = buf.take("rows", (4, 3), torch.float16)
    assert x.shape == (4, 3) and x.dtype == torch.float16
    y = buf.take("rows", (2, 3), torch.float16)  # smaller: a view of the same buffer
    assert y.data_ptr() == x.data_ptr() and y.shape == (2, 3)
    z = buf.take("rows", (8, 3), torch.float16)  # larger: the buffer grows
    assert z.shape == (8, 3) and buf.take("rows", (8, 3), torch.float16).data_ptr() == z.data_ptr()
    assert buf.take("f64", (8, 3), torch.float64).data_ptr() != z.data_ptr()  # one buffer per name
    assert buf.take("rows", (8, 3), torch.float32).dtype == torch.float32  # a new dtype replaces it
    half = torch.randn(5, 3).half()
    assert buf.converted("f32", half.float(), torch.float32).dtype == torch.float32
    same = half.float()
    assert buf.converted("f32", same, torch.float32) is same  # already that dtype: no copy
    c1 = buf.converted("f64", half, torch.float64)
    assert torch.equal(c1, half.double()) and buf.converted("f64", half, torch.float64).data_ptr() == c1.data_ptr()
    # growing by a quarter at least: chunks of slowly rising size (masked chunks) re-allocate once
    first = buf.take("masked", (100,), torch.float32)
    grown = buf.take("masked", (101,), torch.float32)
    assert grown.data_ptr() != first.data_ptr()
    assert {buf.take("masked", (n,), torch.float32).data_ptr() for n in range(102, 126)} == {grown.data_ptr()}
    capped = B.ChunkBuffers(max_bytes=4 * 110)  # never beyond the limit, whatever the quarter says
    capped.take("x", (100,), torch.float32)
    assert capped._bufs["x"].numel() == 100 and capped.take("x", (105,), torch.float32).shape == (105,)
    assert capped._bufs["x"].numel() == 110
    monkeypatch.setattr(B, "RING_MAX_BYTES", 64)
    big = [buf.take("big", (100,), torch.float32) for _ in range(2)]
    assert big[0].data_ptr() != big[1].data_ptr()  # above the limit: fresh every time


def test_ring_hands_out_its_slots_in_rotation() -> None:
    ring = B.BufferRing(3)
    assert len(ring) == 3 and ring.current is None
    got = [ring.advance() for _ in range(7)]
    assert [id(s) for s in got[:3]] == [id(s) for s in got[3:6]] and got[6] is got[0]
    assert ring.current is got[6] and len({id(s) for s in got}) == 3
    with pytest.raises(ValueError, match="at least one slot"):
        B.BufferRing(0)


def test_read_into_buffers_equals_a_fresh_read(tiny_capture_pair) -> None:
    """Rows read into reused buffers (as stored, and converted) equal a fresh read; the second read
    lands in the same memory."""
    a, _ = tiny_capture_pair
    with CaptureReader(a) as r:
        site = "sites/" + r.sites()[1]
        out = B.ChunkBuffers()
        for dtype in (None, torch.float32, torch.float64):
            fresh = r.read(site, 3, 40, dtype)
            into = r.read(site, 3, 40, dtype, out=out)
            assert into.dtype == fresh.dtype and torch.equal(into, fresh)
            again = r.read(site, 10, 30, dtype, out=out)
            assert again.data_ptr() == into.data_ptr() and torch.equal(again, r.read(site, 10, 30, dtype))
        hidden = r.read("final/hidden", 0, 25, out=out)
        assert torch.equal(hidden, r.read("final/hidden", 0, 25))


def test_masked_chunks_land_in_the_slot_too(tiny_capture_pair) -> None:
    """A chunk that a mask thins (the logits pass's predictive positions, --domains) is gathered into
    the slot's buffers as well, with the same rows as a fresh boolean-indexed read: fresh gathers of a
    few MB per chunk fragmented the heap, and compare's memory grew with the token count."""
    a, _ = tiny_capture_pair
    with CaptureReader(a) as r:
        mask = np.arange(r.n_tokens) % 3 != 0
        out = B.ChunkBuffers()
        fresh = list(r.iter_chunks("final/hidden", 16, mask))
        held, pointers = [], set()
        for k, (idx, block) in enumerate(r.iter_chunks("final/hidden", 16, mask, buffers=lambda: out)):
            assert np.array_equal(idx, fresh[k][0]) and torch.equal(block, fresh[k][1])
            held.append(block)  # kept alive, so a fresh tensor could not take a freed one's address
            pointers.add(block.data_ptr())
        assert len(held) == len(fresh) > 2
        assert len(pointers) == 1  # every chunk gathered into the one "selected" buffer


class _Watcher(Analysis):
    """A slow layer consumer: it keeps each chunk for a while (so the reader runs ahead and fills
    the other slots) and checks that the chunk's rows and conversions did not change meanwhile."""

    name = "watcher"
    description = "checks that a chunk in use is never overwritten"
    consumes = frozenset({"layers"})

    def start(self, pair: Any) -> None:
        self.pointers: set[int] = set()
        self.chunks = 0
        self.bad: list[str] = []
        self.pair = pair

    def on_layer(self, chunk: Any) -> None:
        xa64, xb64 = chunk.float64()
        seen = [t.clone() for t in (chunk.rows_a, chunk.rows_b, xa64, xb64)]
        self.pointers.add(chunk.rows_a.data_ptr())
        self.chunks += 1
        time.sleep(0.01)
        for t, s in zip((chunk.rows_a, chunk.rows_b, xa64, xb64), seen):
            if not torch.equal(t, s):
                self.bad.append(f"{chunk.site} chunk at {chunk.idx[0]} changed while in use")
        direct = self.pair.a.read(chunk.site, int(chunk.idx[0]), int(chunk.idx[-1]) + 1, None)
        if not torch.equal(direct[torch.from_numpy(chunk.idx - chunk.idx[0])], chunk.rows_a):
            self.bad.append(f"{chunk.site} chunk at {chunk.idx[0]} differs from the file")

    def finish(self, pair: Any) -> dict[str, Any]:
        return {"chunks": self.chunks, "pointers": len(self.pointers), "bad": self.bad}


@pytest.mark.parametrize("domains", [None, ["math", "other"]], ids=["every-token", "masked"])
def test_layers_pass_reuses_a_few_buffers_and_never_one_in_use(tiny_capture_pair, domains) -> None:
    a, b = tiny_capture_pair
    w = _Watcher()
    kw: dict[str, Any] = {"positions": "all", "chunk_tokens": 16, "domains": domains}
    out = driftkit.compare([a, b], analyses=[w, "cka"], **kw).to_dict()
    res = out["analyses"]["watcher"]
    assert res["bad"] == []
    # every chunk landed in one of the ring's buffers: one per slot, or two where a mask thins some
    # chunks (rows as read when a chunk keeps all its rows, gathered rows when it does not)
    bound = held_chunks() * (1 if domains is None else 2)
    assert res["chunks"] > 3 * bound  # several layers of several chunks each
    assert res["pointers"] <= bound


def test_results_equal_with_fresh_chunks(tiny_capture_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """All four bundled analyses give exactly the same JSON whether chunks land in reused buffers or
    in fresh tensors (RING_MAX_BYTES = 0); test_compare_jobs checks --jobs workers against this."""
    a, b = tiny_capture_pair
    kw: dict[str, Any] = {"positions": "all", "chunk_tokens": 16}
    analyses = ["kl", "token_rank", "cka", "pca_shift"]
    reused = driftkit.compare([a, b], analyses=analyses, **kw).to_dict()["analyses"]
    monkeypatch.setattr(B, "RING_MAX_BYTES", 0)
    fresh = driftkit.compare([a, b], analyses=analyses, **kw).to_dict()["analyses"]
    for name in analyses:
        assert json.dumps(canon(reused[name]), sort_keys=True) == json.dumps(canon(fresh[name]), sort_keys=True)
