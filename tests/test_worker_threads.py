"""Helper threads (the capture's writer, compare's reader) leave the starting thread's torch threads alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import threading, time, torch
{start}
time.sleep(0.2)  # the worker has set its one thread by now
print(torch.get_num_threads(), flush=True)
done.set()
"""
NAIVE = """
done = threading.Event()
def run():
    torch.set_num_threads(1)
    done.wait()
threading.Thread(target=run, daemon=True).start()
"""
HELPER = """
from driftkit.worker_threads import start_worker
done = threading.Event()
start_worker(done.wait, "w")
"""


def _main_threads(start: str) -> int:
    """torch threads of a fresh process's main thread, which ran no parallel op before the worker
    started (torch initialises a thread's count lazily, from a process-wide value)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(start=start)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_worker_keeps_the_callers_threads_in_a_fresh_process() -> None:
    # the trap: a worker that sets one thread before the main thread's first parallel op leaves the
    # main thread on one thread for good (a whole comparison ran on one core at 2 threads)
    assert _main_threads(NAIVE) == 1
    assert _main_threads(HELPER) == 2


def test_worker_runs_on_one_thread_and_restores_the_setting() -> None:
    import threading

    import torch

    from driftkit.worker_threads import start_worker

    seen: list[int] = []
    start_worker(lambda: seen.append(torch.get_num_threads()), "w").join()
    later: list[int] = []
    t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [1] and later == [torch.get_num_threads()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_worker_yields_the_core_and_leaves_the_caller_alone() -> None:
    """The worker runs WORKER_NICE steps below the process's priority; the calling thread, and
    threads started later, keep theirs (setpriority on a thread id changes that thread only)."""
    import os
    import threading

    from driftkit.worker_threads import WORKER_NICE, start_worker

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    seen: list[int] = []
    start_worker(lambda: seen.append(nice()), "w").join()
    later: list[int] = []
    t = threading.Thread(target=lambda: later.append(nice()))
    t.start()
    t.join()
    assert seen == [min(19, before + WORKER_NICE)] and nice() == before and later == [before]
