"""read_ahead: the compare engine's reader thread (order, errors, early stop, bounded look-ahead)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from driftkit.comparing.read_ahead import read_ahead


def test_items_in_order_prepared_on_the_reader_thread() -> None:
    where: list[str] = []

    def prep(x: int) -> int:
        where.append(threading.current_thread().name)
        return x * 10

    assert list(read_ahead(iter(range(50)), prepare=prep)) == [x * 10 for x in range(50)]
    assert set(where) == {"driftkit-read-ahead"}
    assert list(read_ahead(iter([]))) == []


def test_error_raised_at_its_position() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in read_ahead(items()):
            got.append(x)
    assert got == [1, 2]


def test_early_stop_closes_the_source_and_the_thread() -> None:
    closed = threading.Event()
    produced: list[int] = []

    def items() -> Iterator[int]:
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    for x in read_ahead(items(), depth=2):
        if x == 3:
            break
    assert closed.is_set()  # closed before the loop's break returned control
    assert threading.active_count() == before
    assert len(produced) <= 3 + 1 + 2 + 1  # the item in use, the queue, and the one being produced


def test_consumer_error_stops_the_reader() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.set()

    with pytest.raises(ZeroDivisionError):
        for x in read_ahead(items()):
            _ = 1 / (x - 5)
    assert closed.is_set()


def test_look_ahead_is_bounded() -> None:
    """With depth 1 the reader is at most two items ahead of the consumer (one queued, one made)."""
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(20):
            made.append(i)
            yield i

    for x in read_ahead(items(), depth=1):
        time.sleep(0.01)  # a slow consumer: the reader fills the queue and waits
        assert len(made) <= x + 3
