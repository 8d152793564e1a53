"""The sandbox contains what generated code can do: loops, fork bombs, memory hogs, big files."""

from __future__ import annotations

import os
import time

import pytest

from driftkit.plugins.benchmarks.sandbox import SandboxLimits, _pids_of_uid, run_python

FAST = SandboxLimits(wall_seconds=3.0, cpu_seconds=2, memory_bytes=256 << 20, max_processes=8, file_size_bytes=1 << 20)


def test_passing_and_failing_programs():
    ok = run_python("print('hello')\nassert sum(range(4)) == 6\n", FAST)
    assert ok.ok and ok.status == "passed" and ok.stdout.strip() == "hello"
    bad = run_python("assert 1 + 1 == 3, 'wrong'\n", FAST)
    assert not bad.ok and bad.status == "failed" and "AssertionError" in bad.reason


def test_infinite_loop_is_stopped_by_cpu_limit_or_timeout():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", FAST)
    assert not r.ok and r.status in ("killed", "timeout")
    assert time.monotonic() - t0 < FAST.wall_seconds + 3


def test_sleeping_program_hits_wall_clock_timeout():
    r = run_python("import time\ntime.sleep(60)\n", SandboxLimits(wall_seconds=1.0, cpu_seconds=5))
    assert not r.ok and r.status == "timeout" and r.wall_s < 4


def test_fork_bomb_is_bounded_and_fully_killed():
    before = len(os.listdir("/proc"))
    t0 = time.monotonic()
    r = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", FAST)
    assert not r.ok and r.status in ("timeout", "killed")
    assert time.monotonic() - t0 < FAST.wall_seconds + 6
    # nothing of the bomb survives: under root, the throwaway uid has no process left
    if "throwaway uid" in r.isolation:
        uid = int(r.isolation.split("throwaway uid ")[1].split(":")[0])
        assert _pids_of_uid(uid) == []
    time.sleep(0.2)
    assert len(os.listdir("/proc")) < before + 5


def test_memory_hog_fails_without_harming_the_caller():
    r = run_python("x = bytearray(2 << 30)\n", FAST)
    assert not r.ok and ("MemoryError" in r.reason or r.status == "killed")
    r2 = run_python("a = []\nwhile True:\n    a.append(' ' * (1 << 20))\n", FAST)
    assert not r2.ok
    # the caller's own limits are untouched
    import resource

    assert (
        resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY
        or resource.getrlimit(resource.RLIMIT_AS)[0] > FAST.memory_bytes
    )


def test_file_size_limit_and_clean_environment(monkeypatch: pytest.MonkeyPatch):
    big = run_python("open('big.bin', 'wb').write(b'x' * (4 << 20))\n", FAST)
    assert not big.ok and ("File too large" in big.reason or "SIGXFSZ" in big.reason)
    monkeypatch.setenv("HF_TOKEN", "secret-token-should-not-leak")
    env = run_python("import os, json\nprint(json.dumps(dict(os.environ)))\nprint(os.getcwd())\n", FAST)
    assert env.ok
    assert "secret-token" not in env.stdout and "HF_TOKEN" not in env.stdout
    cwd = env.stdout.strip().splitlines()[-1]
    assert cwd.startswith("/tmp") or "driftkit-sbx-" in cwd
    assert not os.path.exists(cwd)  # the temp working dir is removed afterwards


def test_escaped_child_is_killed():
    r = run_python(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\nelse:\n    time.sleep(0.1)\n", FAST
    )
    assert r.ok  # the parent exited 0 ...
    if "throwaway uid" in r.isolation:  # ... and its setsid child did not outlive the run
        uid = int(r.isolation.split("throwaway uid ")[1].split(":")[0])
        assert _pids_of_uid(uid) == []
