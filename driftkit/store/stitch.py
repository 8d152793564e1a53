"""One capture from several shard files: a small HDF5 file of virtual datasets over the shards.

Why virtual datasets (VDS): a capture over N processes writes N shard files in parallel, one per
rank, each a complete ``driftkit.capture/1`` file of a contiguous share of the samples. Copying them
into one file would double the disk and the time of the largest step; a VDS maps each shard's rows
into one big dataset without moving a byte, and h5py/HDF5 read it like any other dataset, so
:class:`~driftkit.store.reader.CaptureReader`, ``inspect --verify`` and ``compare`` need no change.

What goes where in the stitched file:

- per-token arrays (``tokens/ids``, every ``sites/*`` and ``final/*`` per-token dataset): VDS that
  concatenate the shards' rows in rank order;
- other per-sample arrays outside ``samples/`` (first axis = the shard's samples): VDS as well;
- the sample index (``samples/*``): copied, concatenated, with ``samples/offsets`` (and
  ``sites/positions`` of ``--store sample:K``) shifted by the tokens of the shards before it. It is
  small and read eagerly by every reader, so a copy costs nothing and keeps one read per array;
- once-per-file arrays (attr ``per="file"``: the unembedding, the final norm): external links to
  shard 0 (or to the shared unembedding file shard 0 links to);
- root attributes: shard 0's, after checking that every shard agrees on each of them (the creation
  time, device and per-shard settings excepted), plus ``shards`` (JSON list of the shard paths,
  relative to the stitched file's folder).

Source paths are stored relative to the stitched file's folder: HDF5 looks a relative VDS source
(and an external link) up next to the file that holds it, so ``OUT`` and ``OUT.shards/`` can move
together and be opened from any working directory. A missing shard would read as zeros, silently,
so :func:`check_shards` (called by the reader) refuses a stitched file whose shards are not there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from driftkit.atomic import atomic_path
from driftkit.errors import DriftkitError
from driftkit.store import schema as S
from driftkit.store.verify import per_token_paths

#: root attribute of a stitched capture: JSON list of its shard files, relative to its folder
SHARDS_ATTR = "shards"
#: (T_s,) token-axis index of sampled rows (``--store sample:K``, DESIGN.md section 3)
TOKEN_POSITIONS = "sites/positions"
#: root attributes allowed to differ between shards (the rest must be equal to be one capture)
PER_SHARD_ATTRS = ("created", "device", "config_json", "complete")
#: config keys allowed to differ between shards' ``config_json``
PER_SHARD_CONFIG = ("out", "shard", "device", "resume", "overwrite")


def shard_dir(out: str | Path) -> Path:
    """The folder that holds ``out``'s shards: ``OUT.shards`` next to it."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | Path, rank: int, world: int) -> Path:
    """Shard file of ``rank`` of ``world``: ``OUT.shards/rank-00001-of-00002.h5``."""
    return shard_dir(out) / f"rank-{rank:05d}-of-{world:05d}.h5"


def _attr(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _config_core(config_json: str) -> dict:
    cfg = json.loads(config_json or "{}")
    return {k: v for k, v in cfg.items() if k not in PER_SHARD_CONFIG}


def _check_same(files: Sequence[h5py.File], paths: Sequence[Path]) -> None:
    """Every shard describes one capture: same attrs (but the per-shard ones), settings and datasets."""
    first = {k: _attr(v) for k, v in files[0].attrs.items() if k not in PER_SHARD_ATTRS}
    core = _config_core(_attr(files[0].attrs.get("config_json", "{}")))
    layout0 = per_token_paths(files[0])
    for f, p in zip(files[1:], paths[1:]):
        attrs = {k: _attr(v) for k, v in f.attrs.items() if k not in PER_SHARD_ATTRS}
        diff = sorted(k for k in set(first) | set(attrs) if str(first.get(k)) != str(attrs.get(k)))
        other = _config_core(_attr(f.attrs.get("config_json", "{}")))
        diff += [f"config {k}" for k in sorted(set(core) | set(other)) if core.get(k) != other.get(k)]
        if per_token_paths(f) != layout0:
            diff.append("datasets")
        if diff:
            raise DriftkitError(
                f"Shard {p} does not belong with {paths[0]}: they differ in {', '.join(diff[:6])}. The shards of "
                "one capture come from one run; capture again with --overwrite."
            )
    incomplete = [str(p) for f, p in zip(files, paths) if not bool(f.attrs.get("complete", False))]
    if incomplete:
        raise DriftkitError(
            f"Cannot stitch: shard(s) {', '.join(incomplete)} are incomplete. Rerun the same capture with --resume."
        )


def _vds(out: h5py.File, name: str, files: Sequence[h5py.File], rel: Sequence[str], attrs_from: h5py.Dataset) -> None:
    """``name`` as a virtual dataset concatenating the shards' ``name`` along the first axis."""
    dss = [f[name] for f in files]
    rows = [ds.shape[0] for ds in dss]
    layout = h5py.VirtualLayout(shape=(sum(rows), *dss[0].shape[1:]), dtype=dss[0].dtype)
    start = 0
    for ds, r, src in zip(dss, rows, rel):
        if r:
            layout[start : start + r] = h5py.VirtualSource(src, name, shape=ds.shape, dtype=ds.dtype)
        start += r
    fill = 0 if dss[0].dtype.kind in "iub" else np.nan
    vds = out.create_virtual_dataset(name, layout, fillvalue=fill)
    for k, v in attrs_from.attrs.items():
        vds.attrs[k] = v


def _walk(
    group: h5py.Group,
    f: h5py.File,
    files: Sequence[h5py.File],
    paths: Sequence[Path],
    rel: Sequence[str],
    base: Path,
    per_token: Sequence[str],
    n0: int,
) -> None:
    """Write every object under shard 0's ``group`` into the stitched file ``f`` (see the module docstring).

    Walked by hand rather than with ``visititems``, which skips external links (a shared unembedding)."""
    for key in group:
        name = f"{group.name}/{key}".lstrip("/")
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.ExternalLink):  # shard 0 links a shared unembedding: link that same file
            target = (paths[0].resolve().parent / link.filename).resolve()
            f[name] = h5py.ExternalLink(os.path.relpath(target, base), link.path)
            continue
        obj = group[key]
        if isinstance(obj, h5py.Group):
            f.require_group(name)
            for k, v in obj.attrs.items():
                f[name].attrs[k] = v
            _walk(obj, f, files, paths, rel, base, per_token, n0)
            continue
        if name == S.SAMPLES_OFFSETS:
            parts, shift = [np.zeros(1, dtype=np.int64)], 0
            for g in files:
                o = np.asarray(g[name][()], dtype=np.int64)
                parts.append(o[1:] + shift)
                shift += int(o[-1])
            f.create_dataset(name, data=np.concatenate(parts))
        elif name == TOKEN_POSITIONS:  # --store sample:K: indexes into the token axis, shifted like offsets
            parts, shift = [], 0
            for g in files:
                parts.append(np.asarray(g[name][()]) + shift)
                shift += int(g[S.SAMPLES_OFFSETS][-1])
            f.create_dataset(name, data=np.concatenate(parts).astype(obj.dtype))
        elif name.startswith("samples/"):
            f.create_dataset(name, data=np.concatenate([g[name][()] for g in files]), dtype=obj.dtype)
        elif _attr(obj.attrs.get("per")) == "file":
            f[name] = h5py.ExternalLink(rel[0], "/" + name)
            continue
        elif name in per_token or obj.shape[:1] == (n0,):
            if name not in per_token and any(g[name].shape[0] != g[S.SAMPLES_ID].shape[0] for g in files):
                raise DriftkitError(f"Cannot stitch {name}: its first axis is neither tokens nor samples.")
            _vds(f, name, files, rel, obj)
            continue
        else:
            raise DriftkitError(
                f"Cannot stitch {name} {obj.shape}: it is neither per token, per sample nor once per file. "
                "Capture this probe set in one process."
            )
        for k, v in obj.attrs.items():
            f[name].attrs[k] = v


def stitch(out: str | Path, shards: Sequence[str | Path]) -> Path:
    """Write ``out``: one capture over ``shards`` (complete capture files of consecutive sample shares).

    Written under a temporary name in ``out``'s folder and renamed, so a reader never sees half a
    file and the relative source paths are right from the start. Returns ``out``.
    """
    out = Path(out)
    paths = [Path(p) for p in shards]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DriftkitError(f"Cannot stitch {out}: shard(s) {', '.join(missing)} do not exist.")
    base = out.resolve().parent
    rel = [os.path.relpath(p.resolve(), base) for p in paths]
    files = [h5py.File(p, "r") for p in paths]
    try:
        _check_same(files, paths)
        f0 = files[0]
        per_token = [S.TOKEN_IDS, *per_token_paths(f0)]
        n = [f[S.SAMPLES_ID].shape[0] for f in files]
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            for k, v in f0.attrs.items():
                f.attrs[k] = v
            cfg = json.loads(_attr(f0.attrs.get("config_json", "{}")))
            cfg.update(out=str(out), shard=None)
            f.attrs["config_json"] = json.dumps(cfg)
            f.attrs[SHARDS_ATTR] = json.dumps(rel)
            f.attrs["complete"] = True

            _walk(f0, f, files, paths, rel, base, per_token, n[0])
    finally:
        for g in files:
            g.close()
    return out


def check_shards(path: Path, attrs: dict) -> None:
    """Refuse a stitched capture whose shard files are missing: HDF5 would read their rows as fill values."""
    raw = attrs.get(SHARDS_ATTR)
    if not raw:
        return
    missing = [s for s in json.loads(raw) if not (path.resolve().parent / s).is_file()]
    if missing:
        raise DriftkitError(
            f"{path} stitches shard files that are missing: {', '.join(missing[:4])} (relative to {path.parent}). "
            f"Keep the folder {shard_dir(path).name}/ next to {path.name} when moving or copying it."
        )


def capture_bytes(path: str | Path) -> int:
    """Bytes on disk of a capture: the file, plus its shard files when it is a stitched capture."""
    path = Path(path)
    total = path.stat().st_size
    with h5py.File(path, "r") as f:
        raw = _attr(f.attrs.get(SHARDS_ATTR))
    for s in json.loads(raw) if raw else []:
        shard = path.resolve().parent / s
        total += shard.stat().st_size if shard.is_file() else 0
    return total
