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

The worker also runs at a lower scheduling priority (:func:`_lower_priority`): measured on 2 cores
at 2 torch threads, the x5 comparison's ratio to its unavoidable work went from 1.48-1.53 to
1.39-1.40 and its CPU time from 24.8-25.5 s to 22.9-23.7 s (perf/compare_scale.py, interleaved).
The capture's writer showed no difference either way (x5 at 2 threads, interleaved: 13.40-14.50 s
with and without); ``SCHED_IDLE`` instead starved it (the queue filled, 14.32-15.39 s).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import torch

#: how much lower a helper thread's scheduling priority is than its process's (Linux nice steps)
WORKER_NICE = 10


def _lower_priority() -> None:
    """Make the calling thread yield its core to compute threads when both want it (Linux, where
    ``setpriority`` on a thread id applies to that thread only; elsewhere nothing).

    Why: with torch at one OpenMP thread per core, a helper that takes a core in the middle of a
    parallel region stalls the whole team at its next barrier while the other threads spin. At a
    lower priority the helper mostly runs in the gaps (Python between ops, the main thread waiting)
    and still gets the core when it is the only runnable thread, so its queue keeps moving."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE))
    except OSError:  # not permitted in some sandboxes: the thread runs at the process's priority
        pass


def start_worker(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread running ``target()`` with one torch thread, without changing the torch
    thread count of the calling thread (or of threads started after the worker ends)."""
    torch.get_num_threads()  # initialises the caller's own count now, from the current setting

    def run() -> None:
        _lower_priority()
        restore = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            target()
        finally:
            torch.set_num_threads(restore)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
