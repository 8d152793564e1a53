"""Helper threads that run torch ops without taking cores from the thread that started them.

driftkit runs I/O next to compute on threads: the capture's writer (:class:`~driftkit.store.writer.
BackgroundWriter`) and compare's reader (:func:`~driftkit.comparing.read_ahead.read_ahead`). Their
torch ops (dtype conversions, range checks) must run on one OpenMP thread: torch gives every calling
thread its own OpenMP team, and a second team of the default size competes for the very cores the
main thread's matmuls run on.

Why a module for two lines: ``torch.set_num_threads`` is per thread for OpenMP and MKL, but it also
stores the count in a process-wide value that a thread reads the first time it runs a parallel op
(torch initialises each thread's OpenMP count lazily). A helper that sets 1 before the main thread
has run its first parallel op leaves the main thread on one thread for the rest of the process:
measured, a whole comparison at 2 torch threads ran on one core (20.9 s instead of 13.6 s). So the
starting thread's count is fixed first (:func:`start_worker`), then the worker sets its own, and the
process-wide value is put back when the worker ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


def start_worker(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread running ``target()`` with one torch thread, without changing the torch
    thread count of the calling thread (or of threads started after the worker ends)."""
    torch.get_num_threads()  # initialises the caller's own count now, from the current setting

    def run() -> None:
        restore = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            target()
        finally:
            torch.set_num_threads(restore)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
