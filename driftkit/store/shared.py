"""One unembedding file shared by several captures of the same checkpoint (opt-in).

Why: every capture with the ``final`` probe stores the checkpoint's unembedding once, (V, d) at
the model's dtype: 113 MB for SmolLM2-135M in float32, 1.5 GB for a 14B model. A study captures the
same checkpoint several times (raw text, its own answers, another model's answers), and a small
experiment of a few samples is then almost all unembedding. With ``shared_unembed=PATH`` the
first capture writes ``final/unembed`` (and its bias) to PATH; each capture holds HDF5 external
links to it instead, which h5py follows transparently, so readers and analyses see the usual
datasets. PATH records the checkpoint's ``weights_sha256``; a capture of any other weights is
refused, because its logits would be rebuilt with the wrong matrix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py

from driftkit.atomic import atomic_path
from driftkit.errors import DriftkitError, opt
from driftkit.registry.probe import StaticArray
from driftkit.store import schema as S
from driftkit.store.writer import write_static_dataset

#: the once-per-file arrays that may live in a shared file
SHARED_PATHS = (S.FINAL_UNEMBED, S.FINAL_UNEMBED_BIAS)
SHARED_SCHEMA = "driftkit.unembed/1"


def ensure_shared_unembed(target: str | Path, statics: Sequence[StaticArray], weights_sha256: str, model: str) -> Path:
    """Check ``target`` holds this checkpoint's shared arrays, writing it first if it does not exist.

    Returns the path. Raises :class:`DriftkitError` when the file belongs to other weights or is not
    a driftkit unembedding file.
    """
    target = Path(target)
    if not weights_sha256:
        raise DriftkitError(
            f"{opt('shared_unembed', str(target))} needs a local checkpoint folder whose weights driftkit "
            f"can hash ({model!r} is not one), so that a shared file is never used with other weights."
        )
    mine = [st for st in statics if st.path in SHARED_PATHS]
    if target.exists():
        try:
            with h5py.File(target, "r") as f:
                schema, sha = f.attrs.get("schema"), str(f.attrs.get("weights_sha256", ""))
                have = {st.path for st in mine if st.path in f}
        except OSError as exc:
            raise DriftkitError(
                f"{opt('shared_unembed', str(target))}: {target} is not a readable HDF5 file ({exc}). "
                f"Point it to a shared unembedding file written by driftkit, or to a new path."
            ) from exc
        if schema != SHARED_SCHEMA:
            raise DriftkitError(
                f"{opt('shared_unembed', str(target))}: {target} is not a driftkit shared unembedding "
                f"file (schema {schema!r}). Point it to a new path; driftkit writes it on first use."
            )
        if sha != weights_sha256:
            raise DriftkitError(
                f"{opt('shared_unembed', str(target))}: {target} holds the unembedding of other weights "
                "(weights_sha256 "
                f"{sha[:12]}… vs this checkpoint's {weights_sha256[:12]}…). Share one file per checkpoint: give this "
                f"model its own path."
            )
        missing = [st.path for st in mine if st.path not in have]
        if missing:
            raise DriftkitError(
                f"{target} lacks {', '.join(missing)} for this checkpoint; delete it and capture again."
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema"] = SHARED_SCHEMA
        f.attrs["weights_sha256"] = weights_sha256
        f.attrs["model"] = model
        for st in mine:
            write_static_dataset(f, st.path, st.array, st.dtype, st.attrs)
    return target


def link_target(capture: Path, shared: Path) -> str:
    """The link's file name as stored: relative to the capture's folder (so the two can move together)."""
    return os.path.relpath(Path(shared).resolve(), Path(capture).resolve().parent)
