"""Run untrusted generated code (e.g. HumanEval completions) in a contained child process.

What contains it:

- a **separate process** in its own session / process group (``start_new_session``), started from
  a fresh interpreter with ``-I`` (isolated mode: no user site, no ``PYTHON*`` variables);
- **resource limits** set with :func:`resource.setrlimit` just before the program starts: CPU seconds
  (``RLIMIT_CPU``), address space (``RLIMIT_AS``), processes (``RLIMIT_NPROC``), file size
  (``RLIMIT_FSIZE``), open files (``RLIMIT_NOFILE``), no core dumps;
- a **wall-clock timeout** after which the whole process group is killed with SIGKILL;
- a **temporary working directory** (also HOME and TMPDIR) removed afterwards, stdout/stderr written
  to files there (so a program printing forever is bounded by ``RLIMIT_FSIZE``, not by our memory);
- a **minimal environment**: PATH, HOME, TMPDIR, LANG only; no tokens or keys of the parent.

Root: Linux does not enforce ``RLIMIT_NPROC`` for root (CAP_SYS_RESOURCE / CAP_SYS_ADMIN), and it
counts *all* processes of a uid. So when driftkit runs as root, the program runs under a throwaway
uid (an unused one in 61000-64999, no passwd entry): NPROC then counts exactly the program's
processes and is enforced, the program cannot touch root-owned files, and cleanup kills every
process of that uid, which also catches children that escaped the process group with ``setsid``.
If the uid cannot be dropped (a restricted container), the run still goes on bounded by the CPU
limit, the wall-clock timeout and the process-group kill, and :attr:`SandboxResult.isolation` says so.
As a non-root user, NPROC is set to (the user's current process count + the limit).

Why a launcher instead of ``preexec_fn``: ``preexec_fn`` is unsafe in a process that has threads
(torch's pools, our writer threads) and may deadlock; a tiny launcher interpreter sets the limits
and drops privileges, then ``exec``-s the program, which is the same thing done safely.

Not contained: network access (needs namespaces/root-only tooling); run untrusted benchmarks on a
machine without secrets reachable over the network.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_LAUNCHER = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
status = "limits"
for name, val in cfg["limits"].items():
    lim = getattr(resource, name)
    soft, hard = val
    try:
        resource.setrlimit(lim, (soft, hard))
    except (ValueError, OSError):
        resource.setrlimit(lim, (soft, soft))
uid = cfg.get("uid")
if uid is not None:
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        status = "uid-dropped"
    except OSError as exc:
        status = "uid-drop-failed: " + str(exc)
with open(cfg["status_file"], "w") as fh:
    fh.write(status)
os.execve(cfg["python"], [cfg["python"], "-I", "-B", cfg["program"]], cfg["env"])
"""

_UID_RANGE = (61000, 65000)
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run. Defaults suit HumanEval-style tests (the original harness uses 3 s)."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    max_processes: int = 16
    file_size_bytes: int = 16 << 20
    open_files: int = 64


@dataclass
class SandboxResult:
    """How a sandboxed run ended. ``ok`` only when it exited 0 within its limits."""

    ok: bool
    status: str  # passed | failed | timeout | killed | error
    returncode: int | None
    wall_s: float
    stdout: str = ""
    stderr: str = ""
    reason: str = ""
    isolation: str = ""
    extra: dict = field(default_factory=dict)


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(d))
                        break
        except OSError:
            continue
    return pids


def _count_own_processes() -> int:
    return len(_pids_of_uid(os.getuid()))


def _acquire_uid() -> int:
    """An unused uid for one run (no passwd entry, no running process, not used by a concurrent run)."""
    with _uid_lock:
        for _ in range(200):
            uid = random.randrange(*_UID_RANGE)
            if uid in _uids_in_use:
                continue
            try:
                pwd.getpwuid(uid)
                continue
            except KeyError:
                pass
            if _pids_of_uid(uid):
                continue
            _uids_in_use.add(uid)
            return uid
    raise RuntimeError("no free throwaway uid for the sandbox")


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _kill_uid(uid: int, deadline_s: float = 5.0) -> int:
    """SIGKILL every process of ``uid`` until none is left (a fork bomb may race us; NPROC bounds it)."""
    killed = 0
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = _pids_of_uid(uid)
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return killed


def _world_usable(path: str) -> bool:
    """Whether a user with no rights of its own (a throwaway uid) can execute ``path``: every parent
    folder searchable by others, the file readable and executable by others."""
    real = Path(os.path.realpath(path))
    try:
        st = real.stat()
        if not (st.st_mode & stat.S_IXOTH and st.st_mode & stat.S_IROTH):
            return False
        for parent in real.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


def sandbox_python(preferred: str | None = None) -> str | None:
    """The interpreter a throwaway uid can run: ``preferred``/``sys.executable`` when world-usable
    (a venv under /root is not), else the system ``python3``; None when there is none."""
    candidates = [
        preferred,
        sys.executable,
        getattr(sys, "_base_executable", None),
        shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin"),
    ]
    for c in candidates:
        if c and _world_usable(c):
            return c
    return None


def _read_head(path: Path, limit: int = 8192) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), python: str | None = None) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and report how it ended.

    Never raises for anything the program does (crash, timeout, memory, fork bomb): those are
    ``ok=False`` results. The calling process is not affected by the program's limits.

    Why one long function: the steps (take a throwaway uid, write the program, start it in its own
    session, wait with a deadline, kill the whole group, reap leftovers of that uid, clean up) share
    one ``try``/``finally`` whose order is the security argument; split, a reader could no longer
    check at a glance that every exit path kills and cleans up.
    """
    is_root = os.geteuid() == 0
    launcher_python = sys.executable
    uid: int | None = None
    if is_root:
        usable = sandbox_python(python)
        if usable is not None:
            python = usable
            uid = _acquire_uid()
    python = python or sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="driftkit-sbx-"))
    prog = workdir / "program.py"
    prog.write_text(code, encoding="utf-8")
    status_file = workdir / ".launcher_status"
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(prog, uid, uid)
        nproc = limits.max_processes
    else:
        nproc = _count_own_processes() + limits.max_processes
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
    cfg = {
        "limits": {
            "RLIMIT_CPU": [limits.cpu_seconds, limits.cpu_seconds + 1],
            "RLIMIT_AS": [limits.memory_bytes, limits.memory_bytes],
            "RLIMIT_NPROC": [nproc, nproc],
            "RLIMIT_FSIZE": [limits.file_size_bytes, limits.file_size_bytes],
            "RLIMIT_NOFILE": [limits.open_files, limits.open_files],
            "RLIMIT_CORE": [0, 0],
        },
        "uid": uid,
        "python": python,
        "program": str(prog),
        "env": env,
        "status_file": str(status_file),
    }
    t0 = time.monotonic()
    timed_out = False
    proc = None
    try:
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            if uid is not None:
                os.chown(workdir / "stdout", uid, uid)
                os.chown(workdir / "stderr", uid, uid)
            proc = subprocess.Popen(
                [launcher_python, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
    except OSError as exc:
        return SandboxResult(False, "error", None, time.monotonic() - t0, reason=f"could not start the sandbox: {exc}")
    finally:
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader when children linger
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if uid is not None:
            _kill_uid(uid)
            _release_uid(uid)
    wall = time.monotonic() - t0
    launcher = _read_head(status_file, 256)
    if is_root and uid is None:
        isolation = (
            "root, no interpreter a throwaway uid can run: bounded by CPU limit, timeout and process-group kill only"
        )
    elif uid is None:
        isolation = "non-root: rlimits (NPROC relative to the user's processes), process-group kill, timeout"
    elif launcher == "uid-dropped":
        isolation = f"throwaway uid {uid}: rlimits incl. NPROC enforced, all processes of the uid killed"
    else:
        isolation = (
            f"root, {launcher or 'launcher did not start'}: bounded by CPU limit, timeout and process-group kill only"
        )
    stdout, stderr = _read_head(workdir / "stdout"), _read_head(workdir / "stderr")
    shutil.rmtree(workdir, ignore_errors=True)
    rc = proc.returncode if proc is not None else None
    if timed_out:
        return SandboxResult(
            False, "timeout", rc, wall, stdout, stderr, f"wall-clock timeout after {limits.wall_seconds:g} s", isolation
        )
    if rc is not None and rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        why = {
            "SIGXCPU": "CPU time limit",
            "SIGKILL": "killed (CPU hard limit or OOM)",
            "SIGXFSZ": "file size limit",
            "SIGSEGV": "crashed",
        }.get(sig, sig)
        return SandboxResult(False, "killed", rc, wall, stdout, stderr, f"terminated by {sig} ({why})", isolation)
    if rc == 0:
        return SandboxResult(True, "passed", rc, wall, stdout, stderr, "", isolation)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {rc}"
    return SandboxResult(False, "failed", rc, wall, stdout, stderr, last[:300], isolation)
