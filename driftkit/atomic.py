"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Why one module: every output driftkit promises never to leave half-written (score files,
manifests, reports, converted models, exported checkpoints) uses the same trick, a temporary
name in the destination folder (same file system, so the rename is atomic) and ``os.replace``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def atomic_write(path: str | Path, text: str | Callable[[TextIO], object]) -> Path:
    """Write ``text`` (a string, or a function that writes to the open file) to ``path`` via a
    temporary file and a rename. The file gets ordinary permissions (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if callable(text):
                text(fh)
            else:
                fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``dst``; on success it replaces ``dst`` (an old ``dst`` is
    removed first), on any exception it is deleted and ``dst`` is left as it was."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary file name next to ``dst`` for a writer that opens files itself (h5py); on
    success the file replaces ``dst``, on any exception it is deleted and ``dst`` is left as it was."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # ordinary permissions (mkstemp's are 0600)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
