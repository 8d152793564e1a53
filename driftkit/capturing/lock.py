"""The output lock of a capture: a sidecar ``OUT.lock`` held with ``flock`` while a capture writes OUT.

Why a sidecar and not HDF5's own file lock: HDF5's lock only says "cannot lock file" (which reads
like damage), it does not say *who* holds it, and it is not taken before the file exists, so two
captures started a second apart could both pass the "file exists?" check and one ``--overwrite``
could delete the file the other is writing. ``flock`` is released by the kernel when the holder
dies (even by ``kill -9``), so a lock file left behind by a crash is recognised as stale: the lock
can be taken, and the pid it names is not alive.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError, opt


def lock_path(out: str | Path) -> Path:
    """Where the lock of capture file ``out`` lives (next to it, so every process agrees)."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def busy_message(out: str | Path, holder: dict[str, Any]) -> str:
    """The one message for "another live capture writes this file" (also used by --overwrite)."""
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
    return (
        f"{out} is being written by another driftkit capture ({who}). Wait for it to finish (then {opt('resume')} "
        f"continues it if it was interrupted), stop that process, or choose another {opt('out', None)}. "
        f"{opt('overwrite')} never replaces a file a running capture holds."
    )


def holder_of(out: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of ``out`` now: its recorded pid/host/start time, or None when nobody does.

    Probes with a non-blocking ``flock`` and lets go at once, so it never blocks and never keeps
    the lock; a lock file whose lock can be taken is stale (its writer died) and counts as free.
    """
    path = lock_path(out)
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _read_holder(path) or {"pid": "?", "host": "?", "started": "?"}
        return None
    finally:
        os.close(fd)
    return None


@dataclass
class CaptureLock:
    """An exclusive lock on a capture's output, held from before the file is created until the end."""

    out: Path
    fd: int | None = None

    def acquire(self) -> CaptureLock:
        from driftkit.store.writer import _io_error

        path = lock_path(self.out)
        for _ in range(5):  # retry when the file we locked was unlinked by a finishing holder meanwhile
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # an unwritable --out: the same message as the file itself would get
                raise _io_error(Path(self.out), exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise DriftkitError(busy_message(self.out, _read_holder(path) or {})) from exc
                raise DriftkitError(
                    f"Cannot lock {path} ({exc.strerror}); choose an --out on a local file system."
                ) from exc
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
            self.fd = fd
            return self
        raise DriftkitError(f"Cannot lock {path}: it keeps being replaced by another process; retry in a moment.")

    def release(self) -> None:
        """Remove the lock file, then let go (unlink first: a waiter that locks the old inode retries)."""
        if self.fd is None:
            return
        try:
            lock_path(self.out).unlink()
        except OSError:
            pass
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> CaptureLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
