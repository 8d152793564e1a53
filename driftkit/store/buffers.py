"""Destination buffers that chunked reads reuse, so a long pass allocates its chunk memory once.

Why: compare reads every layer of two captures in chunks of a few MB each (a 4,096 x 576 float16
chunk is 4.7 MB, its float64 copy 19 MB) on a reader thread, and the consumers free them on the
main thread. glibc serves blocks of that size from its heaps (below its mmap threshold, which it
raises up to 32 MiB as such blocks are freed) and never handed the freed holes back: on two
90-layer, d = 576 captures the layers pass grew from 502 MB resident after the first layer to
1,115 MB after the last (504 -> 839 MB in another run; ``perf/compare_layers_memory.py``), and at
the end the reader thread's heap held 875 MB with under 1 MB of it in use (``malloc_stats``).
Reading into a few buffers that are reused in rotation keeps that memory flat whatever the layer
count (469 -> 512 MB and 475 -> 490 MB), and spares the page faults of fresh blocks (a fresh 19 MB
block costs ~4,600 of them on first touch). The rows a mask keeps are gathered into the slot as
well (a fresh 8 MB gather per chunk grew an x40 logits pass from 795 to 829 MB), so the memory is
flat in the token count too.

The contract that makes reuse safe: a chunk's buffers are reused for a later chunk, so a consumer
reads a chunk while it has it and keeps nothing that aliases it (the same rule as for the logits
blocks). :class:`BufferRing` has as many slots as a pass can hold chunks at once (the chunk in
use, the one waiting in the read-ahead queue and the one being read: ``depth + 2``), so a slot
comes round again only after its previous chunk is done.
"""

from __future__ import annotations

import math

import torch

#: blocks larger than this are allocated fresh, not kept: glibc hands blocks above its largest
#: mmap threshold (32 MiB) straight back to the system when they are freed, so they never fragment
#: its heaps, and a ring of them would hold three such chunks per capture (at d = 5,120 and 4,096
#: tokens a float64 chunk is 168 MB)
RING_MAX_BYTES = 32 * 2**20


class ChunkBuffers:
    """The named destination buffers of one ring slot (one capture's side of a chunk): ``take``
    returns a view of the buffer kept under ``name``, grown when a chunk needs more."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._bufs: dict[str, torch.Tensor] = {}
        #: requests above this many bytes get a fresh tensor (None: :data:`RING_MAX_BYTES`, read at use)
        self.max_bytes = max_bytes

    def take(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """An uninitialised ``shape`` tensor of ``dtype`` on ``device``: the buffer ``name`` reused,
        or a fresh tensor above the size limit.

        A buffer that must grow grows by at least a quarter (up to the limit): masked chunks have a
        different row count each, and growing to each new maximum exactly re-allocated a slot's
        buffers chunk after chunk, the churn the buffers exist to stop."""
        n = math.prod(shape)
        limit = RING_MAX_BYTES if self.max_bytes is None else self.max_bytes
        if n * dtype.itemsize > limit:
            return torch.empty(shape, dtype=dtype, device=device)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.device != torch.device(device):
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        elif buf.numel() < n:
            grown = max(n, min(buf.numel() + buf.numel() // 4, limit // dtype.itemsize))
            buf = self._bufs[name] = torch.empty(grown, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def converted(self, name: str, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``rows`` as ``dtype``, copied into the buffer ``name`` (``rows`` itself if already so)."""
        if rows.dtype == dtype:
            return rows
        return self.take(name, tuple(rows.shape), dtype, rows.device).copy_(rows)


class BufferRing:
    """``slots`` pairs of :class:`ChunkBuffers` (capture A's, capture B's), handed out in rotation:
    :meth:`advance` once per chunk, then :attr:`current` is that chunk's pair.

    Used by one thread at a time for :meth:`advance` (the reader); a chunk's own buffers may then be
    filled on another thread (a conversion made on first use), which touches only that slot."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a buffer ring needs at least one slot, got {slots}")
        self._slots = [(ChunkBuffers(), ChunkBuffers()) for _ in range(slots)]
        self._next = 0
        self.current: tuple[ChunkBuffers, ChunkBuffers] | None = None

    def __len__(self) -> int:
        return len(self._slots)

    def advance(self) -> tuple[ChunkBuffers, ChunkBuffers]:
        """The next slot, which becomes :attr:`current`."""
        self.current = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        return self.current
