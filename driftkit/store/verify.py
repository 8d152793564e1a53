"""Is every row of a capture file really written? The check behind ``complete`` and ``inspect --verify``.

What can go missing: a sample whose ``done`` flag is unset (a killed run), and -- the silent kind --
a per-token dataset that some samples were never written to while their ``done`` flag was set (a
resume that recorded other probes or layers than the run it continued, or a probe whose finalize
skipped an output). The writer keeps ``samples/sites_written`` (N x S bools, one column per
per-token dataset, set after that dataset's rows land and before ``done``), so the check is a
read of two small arrays and the datasets' shapes: it never touches activations.

Files written before that record existed are checked by ``done`` flags and shapes only, and say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h5py
import numpy as np

from driftkit.store import schema as S


@dataclass
class Verification:
    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: str = ""  # what was checked, for the "verified" line

    def message(self, path: object) -> str:
        if self.ok:
            return f"verified: {path}: {self.checked}."
        shown = "; ".join(self.problems[:6]) + ("; ..." if len(self.problems) > 6 else "")
        return f"{path} is missing data: {shown}."


def _ids(f: h5py.File) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in f[S.SAMPLES_ID][()]]


def _name(ids: list[str], rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(f"{ids[i]!r} (#{i})" for i in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def per_token_paths(f: h5py.File) -> list[str]:
    """Per-token datasets of a file: the writer's record, else every non-static dataset under sites/ and final/."""
    if S.SAMPLES_SITES_WRITTEN in f:
        return list(json.loads(f[S.SAMPLES_SITES_WRITTEN].attrs["sites"]))
    out: list[str] = []

    def visit(name: str, obj: object) -> None:
        top = name.split("/")[0]
        if isinstance(obj, h5py.Dataset) and top in ("sites", "final") and obj.attrs.get("per") != "file":
            out.append(name)

    f.visititems(visit)
    return sorted(out)


def verify_file(f: h5py.File) -> Verification:
    """Check that every sample of every per-token dataset was written (see the module docstring)."""
    problems: list[str] = []
    ids = _ids(f)
    n = len(ids)
    offsets = np.asarray(f[S.SAMPLES_OFFSETS][()], dtype=np.int64)
    if len(offsets) != n + 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        return Verification(False, [f"samples/offsets is not a valid index of {n} samples"])
    T = int(offsets[-1])
    if f[S.TOKEN_IDS].shape[0] != T:
        problems.append(f"tokens/ids has {f[S.TOKEN_IDS].shape[0]} rows, the offsets say {T}")
    done = np.asarray(f[S.SAMPLES_DONE][()], dtype=bool)
    if not done.all():
        problems.append(f"{int((~done).sum())} of {n} samples were never captured: {_name(ids, np.flatnonzero(~done))}")
    paths = per_token_paths(f)
    # rows per dataset by its attr ``per`` (--store): tokens, one per sample (pooled), or sites/positions (sampled)
    n_pos = f[f"{S.SITES_GROUP}/positions"].shape[0] if f"{S.SITES_GROUP}/positions" in f else 0
    want = {"sample": (n, "samples"), "sampled": (n_pos, "sampled positions")}
    for p in paths:
        if p not in f:
            problems.append(f"site {p} does not exist")
            continue
        rows, what = want.get(str(f[p].attrs.get("per", "token")), (T, "tokens"))
        if f[p].shape[0] != rows:
            problems.append(f"site {p} has {f[p].shape[0]} rows, not the {rows} {what} of the file")
    if S.SAMPLES_SITES_WRITTEN in f:
        written = np.asarray(f[S.SAMPLES_SITES_WRITTEN][()], dtype=bool)
        for j, p in enumerate(paths):
            miss = np.flatnonzero(~written[:, j] & done)  # undone samples are reported above already
            if len(miss):
                problems.append(f"site {p} was never written for sample(s) {_name(ids, miss)}")
        checked = f"{n} samples x {len(paths)} per-token datasets written ({T} tokens)"
    else:
        checked = (
            f"{n} samples done and {len(paths)} per-token datasets cover {T} tokens (this file predates the "
            f"per-site record samples/sites_written, so rows within a dataset cannot be checked)"
        )
    return Verification(not problems, problems, checked)
