"""Read ahead: the next chunk comes off the capture files while the current one is computed.

Why: a comparison alternates reading (HDF5 decoding, the float16 -> float64 conversion of a layer's
rows) with compute (the float64 cross-products of CKA, the logits matmuls). Torch's kernels and
h5py's dataset reads release the GIL, so one thread can read chunk k + 1 while the main thread
computes on chunk k: the reads then cost wall time only where they are slower than the compute.
This is the compare-side twin of the capture's :class:`~driftkit.store.writer.BackgroundWriter`.

Memory: ``depth`` chunks wait in the queue and one is being prepared, so a pass holds at most
``depth + 2`` chunks (the one in use included) instead of one; the engine uses :data:`DEPTH` (1).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from driftkit.worker_threads import start_worker

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"

#: items the reader keeps ready by default (the engine's passes use it)
DEPTH = 1


def held_chunks(depth: int = DEPTH) -> int:
    """How many items a consumer of :func:`read_ahead` can see alive at once: the one in use, the
    ``depth`` waiting in the queue and the one being produced. A buffer ring with this many slots
    (:class:`~driftkit.store.buffers.BufferRing`) hands a slot to a new item only after its
    previous item is done."""
    return depth + 2


def read_ahead(items: Iterator[T], depth: int = DEPTH, prepare: Callable[[T], T] | None = None) -> Iterator[T]:
    """Yield ``items`` in order, produced (and passed through ``prepare``) on a background thread
    that keeps up to ``depth`` of them ready.

    An exception raised while producing an item is raised here, at the position of that item, with
    its own traceback. Stopping early (``break``, an exception in the consumer, the generator being
    closed) stops the thread and closes ``items`` on it before this generator returns, so no read
    runs on after the pass and no file is left in use."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put((kind, value), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if prepare is not None:
                    item = prepare(item)
                if not put(_ITEM, item):
                    return
            put(_END, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_ERROR, exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    # one torch thread for the reader's conversions, the caller's count untouched (worker_threads)
    thread = start_worker(produce, "driftkit-read-ahead")
    try:
        while True:
            kind, value = q.get()
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()
