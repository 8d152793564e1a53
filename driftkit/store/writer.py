"""Writing capture files: create with every dataset preallocated, fill samples in any order, resume,
finalize.

Why preallocate: every sample's token count is known before the first forward pass (prompts are
tokenized, responses generated, first), so ``samples/offsets`` is fixed up front and each batch
writes its samples straight into their final rows. Batches can then run in length-sorted order
for speed while the file stays in the user's sample order, and resuming is just "skip samples
whose ``done`` flag is set". The file is flushed after every batch, and ``done`` is written after
the data it vouches for, so a killed run loses at most the batch in flight. The ``complete``
attribute is set only by :meth:`CaptureWriter.finalize`, after :func:`~driftkit.store.verify.verify_file`
finds every row of every per-token dataset written (``samples/sites_written`` records that per site).
"""

from __future__ import annotations

import errno
import json
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from driftkit.errors import DriftkitError, StorageError, opt
from driftkit.store import schema as S
from driftkit.store.dtypes import numpy_storage_dtype, to_storage
from driftkit.worker_threads import start_worker

#: target bytes per HDF5 chunk: big enough for fast sequential reads, small enough for partial writes
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArraySpec:
    """A per-token dataset: HDF5 path, trailing shape, storage kind ("activation" or numpy dtype).

    ``rows`` (``--store``, see :mod:`driftkit.capturing.pooling`): ``token`` (one row per token),
    ``sample`` (one row per sample: pooled) or ``sampled`` (the ``sample:K`` rows of ``sites/positions``).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str = "activation"
    attrs: tuple[tuple[str, Any], ...] = ()
    rows: str = "token"


def _stored_as(spec: ArraySpec, storage_dtype: str) -> tuple[np.dtype, str | None]:
    """(HDF5 dtype, ``dtype`` attr) that :meth:`CaptureWriter.create` gives ``spec``'s dataset."""
    if spec.dtype == "activation":
        return numpy_storage_dtype(storage_dtype), ("bfloat16" if storage_dtype == "bfloat16" else None)
    return np.dtype(spec.dtype), dict(spec.attrs).get("dtype")


def _attr_str(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))


def write_static_dataset(
    f: h5py.File,
    path: str,
    array: np.ndarray | torch.Tensor,
    dtype: str,
    attrs: dict[str, Any],
    storage_dtype: str = "float16",
) -> h5py.Dataset:
    """Create a once-per-file dataset: ``dtype`` "model" keeps the tensor's own dtype exactly (bfloat16
    as raw bits with attr ``dtype="bfloat16"``), "activation" uses ``storage_dtype``, else a numpy dtype."""
    if isinstance(array, torch.Tensor):
        if dtype == "model":
            if array.dtype == torch.bfloat16:
                data, bf16 = array.detach().contiguous().view(torch.uint16).cpu().numpy(), True
            else:
                data, bf16 = array.detach().cpu().numpy(), False
        elif dtype == "activation":
            data, bf16 = to_storage(array, storage_dtype), storage_dtype == "bfloat16"
        else:
            data, bf16 = array.detach().cpu().numpy().astype(dtype), False
    else:
        data, bf16 = np.asarray(array), False
    ds = f.create_dataset(path, data=data)
    ds.attrs["per"] = "file"
    if bf16:
        ds.attrs["dtype"] = "bfloat16"
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def open_for_writing(path: str | Path, mode: str) -> h5py.File:
    """``h5py.File(path, mode)`` (``"w"`` or ``"r+"``) with HDF5's data sieve buffer off.

    Why: a batch's samples are length-sorted, so their rows are scattered over each contiguous
    dataset and one write is the union of ~50 small row ranges (~20 KB each at d = 576, float16).
    Through the default 64 KB sieve buffer HDF5 read the file around every range, patched it and
    wrote it back; with no sieve each range is one plain write. Measured on general-mix x7
    (9,002 tokens, 11 batches, SmolLM2-135M): the writer thread's CPU time in
    :meth:`CaptureWriter.write_packed` went from 0.99-1.02 s to 0.65-0.67 s per capture (a
    micro-benchmark of the same write pattern: 0.58 -> 0.29 s), CPU that on a 2-core machine is
    taken from the forward's threads. Long samples (rows larger than the sieve) and compressed,
    chunked datasets never went through it. The property lists are otherwise those ``h5py.File``
    makes (library version bounds earliest to latest; no object timestamps), so the file is the same
    for every reader (``tests/test_capture_speed.py`` compares them)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_sieve_buf_size(0)
    name = os.fsencode(path)
    if mode == "w":
        fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
        fcpl.set_obj_track_times(False)
        fid = h5py.h5f.create(name, h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl)
    elif mode == "r+":
        fid = h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=fapl)
    else:
        raise ValueError(f"open_for_writing takes mode 'w' or 'r+', not {mode!r}")
    return h5py.File(fid)


def _io_error(path: Path, exc: BaseException) -> StorageError:
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOSPC or "No space" in text or "no space" in text or "errno = 28" in text:
        why = "the disk is full"
        fix = (
            f"Free space (or choose another {opt('out', None)}) and rerun with {opt('resume')}: completed samples are "
            "kept."
        )
    elif (
        code in (errno.EACCES, errno.EPERM, errno.EROFS)
        or "ermission" in text
        or "read-only" in text.lower()
        or "errno = 13" in text
    ):
        why = "permission denied"
        fix = f"Choose an {opt('out', None)} in a folder you can write to."
    else:
        why = text.splitlines()[0] if text else type(exc).__name__
        fix = f"Check the output location; completed samples are kept and {opt('resume')} continues."
    return StorageError(f"Writing the capture file {path} failed: {why}. {fix}")


def spec_row_bytes(spec: ArraySpec, storage_dtype: str) -> int:
    """Bytes of one row of ``spec`` as stored."""
    dt = numpy_storage_dtype(storage_dtype) if spec.dtype == "activation" else np.dtype(spec.dtype)
    return int(np.prod(spec.shape, dtype=np.int64)) * dt.itemsize


def estimate_bytes(
    n_tokens: int, specs: Sequence[ArraySpec], storage_dtype: str, n_samples: int = 0, n_sampled: int = 0
) -> int:
    """Uncompressed size of the per-token, per-sample (pooled) and sampled (``sample:K``: ``n_sampled``
    rows plus their int64 positions) arrays of a capture of ``n_tokens`` tokens."""
    total = n_tokens * 4  # tokens/ids
    rows = {"token": n_tokens, "sample": n_samples, "sampled": n_sampled}
    for spec in specs:
        total += rows[spec.rows] * spec_row_bytes(spec, storage_dtype)
    if any(spec.rows == "sampled" for spec in specs):
        total += n_sampled * 8
    return total


def check_free_space(
    path: Path,
    n_tokens: int,
    specs: Sequence[ArraySpec],
    storage_dtype: str,
    n_samples: int = 0,
    n_sampled: int = 0,
    upper_bound: str = "",
    static_bytes: int = 0,
) -> None:
    """Fail before any compute when the capture cannot fit: finding out after an hour of forward
    passes, with HDF5 reporting the failure from deep in its cache, is much worse. ``upper_bound``:
    a note for the message when the estimate assumes every response uses the whole budget.
    ``static_bytes``: the arrays written once per file (the unembedding: 113 MB for a 135M model,
    far more than the per-token arrays of a small capture, so leaving it out let such captures start)."""
    import shutil

    need = estimate_bytes(n_tokens, specs, storage_dtype, n_samples, n_sampled) + static_bytes
    usage = shutil.disk_usage(path.parent)
    if usage.total == 0:  # a pseudo file system (/proc, ...): no size to check, the write will say what is wrong
        return
    free = usage.free
    if need > free:
        raise DriftkitError(
            f"The capture needs about {need / 1e6:.1f} MB ({n_tokens} tokens{upper_bound}"
            + (f"; {static_bytes / 1e6:.1f} MB of it written once, the unembedding" if static_bytes else "")
            + f") but only "
            f"{free / 1e6:.1f} MB is free at {path.parent}: the disk is too full, and nothing was computed. Free "
            f"space, choose another {opt('out', None)}, record fewer layers ({opt('layers', 'every:4')}), store "
            f"less per token ({opt('store', 'pooled')} or {opt('store', 'sample:64')}), "
            + (f"keep the unembedding in another file ({opt('shared_unembed', 'PATH')}), " if static_bytes else "")
            + "or pass "
            f"{opt('compression', 'lzf')}; {opt('dry_run')} prints the estimate per site."
        )


def _early_alloc_dcpl() -> h5py.h5p.PropDCID:
    """Dataset creation properties: contiguous, space allocated at creation, never pre-filled (rows
    of samples not yet captured are undefined; ``samples/done`` says which rows are valid)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _chunks(n_rows: int, row_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * itemsize)
    rows = max(1, min(n_rows, CHUNK_BYTES // row_bytes))
    return (rows, *row_shape)


class CaptureWriter:
    """Owns one open capture file. Not thread-safe by itself; :class:`BackgroundWriter` serialises use."""

    def __init__(self, path: Path, f: h5py.File, specs: dict[str, ArraySpec], storage_dtype: str) -> None:
        self.path = path
        self.f = f
        self.specs = specs
        self.storage_dtype = storage_dtype
        self.offsets = np.asarray(f[S.SAMPLES_OFFSETS][()], dtype=np.int64)
        self.done = np.asarray(f[S.SAMPLES_DONE][()], dtype=bool)
        # first row of each sample per row kind (--store): tokens, pooled (one row), sampled (sites/positions)
        self.row_offsets = {"token": self.offsets, "sample": np.arange(len(self.done) + 1, dtype=np.int64)}
        if f"{S.SITES_GROUP}/positions" in f:
            pos = np.asarray(f[f"{S.SITES_GROUP}/positions"][()], dtype=np.int64)
            self.row_offsets["sampled"] = np.searchsorted(pos, self.offsets).astype(np.int64)
        # Per-site record of written rows (absent in files of older versions: then ``done`` alone rules).
        self.site_cols: dict[str, int] = {}
        self.written: np.ndarray | None = None
        #: a write failed (a full disk, a lost mount): :meth:`close` then only drops the handle
        self.io_failed = False
        if S.SAMPLES_SITES_WRITTEN in f:
            cols = json.loads(f[S.SAMPLES_SITES_WRITTEN].attrs["sites"])
            self.site_cols = {p: j for j, p in enumerate(cols)}
            self.written = np.asarray(f[S.SAMPLES_SITES_WRITTEN][()], dtype=bool)

    # -- creation --------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        attrs: dict[str, Any],
        sample_ids: Sequence[str],
        domains: Sequence[str],
        token_ids: Sequence[Sequence[int]],
        prompt_len: Sequence[int],
        specs: Sequence[ArraySpec],
        storage_dtype: str = "float16",
        compression: str | None = None,
        truncated: Sequence[int] | None = None,
        sampled_positions: np.ndarray | None = None,
        static_bytes: int = 0,
    ) -> CaptureWriter:
        """Create the file with every dataset preallocated. ``truncated``: tokens cut per sample by

        Long because the whole layout is created in one go (index, tokens, every preallocated dataset) so a file
        either has all of it or does not exist.
        ``--truncate`` (stored as ``samples/truncated`` so a reader knows which samples are not whole).
        ``sampled_positions``: the token-axis rows of ``sample:K`` specs (stored as ``sites/positions``)."""
        path = Path(path)
        lengths = np.array([len(t) for t in token_ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        T = int(offsets[-1])
        comp_kwargs: dict[str, Any] = {}
        if compression in ("gzip", "lzf"):
            comp_kwargs = {"compression": compression, "shuffle": True}
            if compression == "gzip":
                comp_kwargs["compression_opts"] = 4
        elif compression not in (None, "none"):
            raise DriftkitError(f"Unknown --compression {compression!r}; use none, lzf (fast) or gzip (smaller).")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _io_error(path, exc) from exc
        n_sampled = 0 if sampled_positions is None else len(sampled_positions)
        n_rows = {"token": T, "sample": len(lengths), "sampled": n_sampled}
        if compression in (None, "none"):
            check_free_space(path, T, specs, storage_dtype, len(lengths), n_sampled, static_bytes=static_bytes)
        try:
            f = open_for_writing(path, "w")
        except (OSError, RuntimeError) as exc:
            raise _io_error(path, exc) from exc
        try:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["schema"] = S.SCHEMA
            f.attrs["complete"] = False
            str_dt = h5py.string_dtype("utf-8")
            f.create_dataset(S.SAMPLES_ID, data=np.array(list(sample_ids), dtype=object), dtype=str_dt)
            f.create_dataset(S.SAMPLES_DOMAIN, data=np.array(list(domains), dtype=object), dtype=str_dt)
            f.create_dataset(S.SAMPLES_OFFSETS, data=offsets)
            f.create_dataset(S.SAMPLES_PROMPT_LEN, data=np.asarray(prompt_len, dtype=np.int32))
            done = f.create_dataset(S.SAMPLES_DONE, shape=(len(lengths),), dtype=bool, dcpl=_early_alloc_dcpl())
            done[...] = False
            written = f.create_dataset(
                S.SAMPLES_SITES_WRITTEN, shape=(len(lengths), len(specs)), dtype=bool, dcpl=_early_alloc_dcpl()
            )
            written[...] = False
            written.attrs["sites"] = json.dumps([s.path for s in specs])
            if truncated is not None:
                f.create_dataset(S.SAMPLES_TRUNCATED, data=np.asarray(truncated, dtype=np.int32))
            flat = np.fromiter((t for seq in token_ids for t in seq), dtype=np.int32, count=T)
            f.create_dataset(S.TOKEN_IDS, data=flat, chunks=_chunks(max(T, 1), (), 4) if T else None)
            if sampled_positions is not None:
                from driftkit.capturing.pooling import POSITIONS_PATH

                f.create_dataset(POSITIONS_PATH, data=np.asarray(sampled_positions, dtype=np.int64))
            for spec in specs:
                dt = numpy_storage_dtype(storage_dtype) if spec.dtype == "activation" else np.dtype(spec.dtype)
                R = n_rows[spec.rows]
                if comp_kwargs and spec.dtype == "activation" and R:
                    ds = f.create_dataset(
                        spec.path,
                        shape=(R, *spec.shape),
                        dtype=dt,
                        chunks=_chunks(R, spec.shape, dt.itemsize),
                        fillvalue=np.nan if dt.kind == "f" else 0,
                        **comp_kwargs,
                    )
                else:
                    # Contiguous and allocated up front: later writes touch only raw bytes, never HDF5
                    # metadata, so a kill -9 mid-write cannot corrupt the file (resume stays safe).
                    ds = f.create_dataset(spec.path, shape=(R, *spec.shape), dtype=dt, dcpl=_early_alloc_dcpl())
                if spec.rows != "token":
                    ds.attrs["per"] = spec.rows
                if spec.dtype == "activation" and storage_dtype == "bfloat16":
                    ds.attrs["dtype"] = "bfloat16"
                for k, v in spec.attrs:
                    ds.attrs[k] = v
            f.flush()
        except (OSError, RuntimeError) as exc:
            f.close()
            raise _io_error(path, exc) from exc
        return cls(path, f, {s.path: s for s in specs}, storage_dtype)

    @classmethod
    def open_resume(cls, path: str | Path, specs: Sequence[ArraySpec], storage_dtype: str) -> CaptureWriter:
        path = Path(path)
        try:
            f = open_for_writing(path, "r+")
        except (OSError, RuntimeError) as exc:
            raise DriftkitError(
                f"Cannot reopen {path} to resume ({str(exc).splitlines()[0]}); the file was probably cut mid-write. "
                f"Start over with {opt('overwrite')}."
            ) from exc
        missing = [s.path for s in specs if s.path not in f]
        if S.SAMPLES_SITES_WRITTEN in f:  # the record names exactly the datasets the file was made with
            recorded = json.loads(f[S.SAMPLES_SITES_WRITTEN].attrs["sites"])
            missing += [p for p in recorded if p not in {s.path for s in specs}]
        if missing:
            f.close()
            raise DriftkitError(
                f"Cannot resume {path}: it lacks {', '.join(missing[:5])}, so it was made with other probes or layers. "
                f"Use {opt('overwrite')}."
            )
        # e.g. final/hidden (now at the model's own dtype) in a file made when it was stored at float16
        stored_as = {s.path: (f[s.path].dtype, _attr_str(f[s.path].attrs.get("dtype"))) for s in specs}
        wrong = [s.path for s in specs if stored_as[s.path] != _stored_as(s, storage_dtype)]
        if wrong:
            f.close()
            raise DriftkitError(
                f"Cannot resume {path}: {', '.join(wrong[:5])} is stored at another dtype than this run "
                f"writes (the file was made by another driftkit version or model dtype). Use {opt('overwrite')}."
            )
        return cls(path, f, {s.path: s for s in specs}, storage_dtype)

    # -- writing ---------------------------------------------------------------------------------
    def write_static(self, path: str, array: np.ndarray | torch.Tensor, dtype: str, attrs: dict[str, Any]) -> None:
        """Write a once-per-file array (replaces it when resuming)."""
        with self._writing():
            if path in self.f:
                del self.f[path]
            write_static_dataset(self.f, path, array, dtype, attrs, self.storage_dtype)

    def link_static(self, path: str, target_file: str) -> None:
        """Make ``path`` an HDF5 external link to the same path in ``target_file`` (a shared array)."""
        with self._writing():
            if path in self.f or self.f.get(path, getlink=True) is not None:
                del self.f[path]
            self.f[path] = h5py.ExternalLink(target_file, "/" + path)

    def write_samples(self, samples: Sequence[int], arrays: dict[str, Sequence[torch.Tensor]]) -> None:
        """Write each sample's ``(len_i, ...)`` rows into its slice, then mark the samples done.

        Kept for callers holding per-sample tensors; it packs them and goes through :meth:`write_packed`."""
        order = sorted(range(len(samples)), key=lambda j: samples[j])
        packed = {
            path: torch.cat([torch.as_tensor(per_sample[j]) for j in order]) if order else torch.empty(0)
            for path, per_sample in arrays.items()
        }
        self.write_packed([samples[j] for j in order], packed)

    @staticmethod
    def _row_runs(samples: Sequence[int], offsets: np.ndarray) -> list[tuple[int, int]]:
        """The samples' row ranges ``[a, b)`` in file order, adjacent ones merged, empty ones dropped
        (``offsets``: the per-sample row offsets of the datasets' row kind, ``--store``)."""
        runs: list[list[int]] = []
        for i in samples:
            a, b = int(offsets[i]), int(offsets[i + 1])
            if b == a:
                continue
            if runs and runs[-1][1] == a:
                runs[-1][1] = b
            else:
                runs.append([a, b])
        return [(a, b) for a, b in runs]

    @staticmethod
    def _file_selection(ds: h5py.Dataset, runs: Sequence[tuple[int, int]]) -> h5py.h5s.SpaceID:
        """The union of the row ranges ``runs`` of ``ds`` (all of each row)."""
        space = ds.id.get_space()
        space.select_none()
        tail = tuple(ds.shape[1:])
        for a, b in runs:
            space.select_hyperslab((a, *(0,) * len(tail)), (b - a, *tail), op=h5py.h5s.SELECT_OR)
        return space

    def write_packed(self, samples: Sequence[int], arrays: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Write a batch whose samples' rows are concatenated in file order, then mark the samples done.

        ``samples`` must be increasing; each array is ``(sum of their lengths, ...)``. Why packed: one
        HDF5 write (and one dtype conversion) per dataset per batch, through a file selection that is the
        union of the samples' row ranges, instead of one small write per sample and dataset; at ~20
        tokens per sample the per-call overhead (held under the GIL) was most of the writer's time."""
        if any(b <= a for a, b in zip(samples, samples[1:])):
            raise ValueError("write_packed needs samples in increasing file order")
        # the row ranges once per row kind and one file selection per dataset shape (~50 ranges, the
        # same for every dataset of that shape); built per dataset they were 0.09 s of the writer's
        # 0.65 s CPU per x7 capture (36 datasets x 11 batches), now 0.56-0.58 s in all
        runs_of: dict[str, list[tuple[int, int]]] = {}
        selections: dict[tuple[str, tuple[int, ...]], h5py.h5s.SpaceID] = {}
        with self._writing():
            for path, t in arrays.items():
                spec = self.specs[path]
                ds = self.f[path]
                if spec.rows not in runs_of:
                    runs_of[spec.rows] = self._row_runs(samples, self.row_offsets[spec.rows])
                runs = runs_of[spec.rows]
                n_rows = sum(b - a for a, b in runs)
                if int(t.shape[0]) != n_rows:
                    raise ValueError(f"{path}: {t.shape[0]} packed rows for samples holding {n_rows} tokens")
                if spec.dtype == "activation" and isinstance(t, torch.Tensor):
                    if self.storage_dtype == "float16" and t.is_floating_point() and t.numel():
                        lo, hi = torch.aminmax(t.detach())  # no |t| temporary
                        big = max(-float(lo), float(hi))
                        if big > 65504:
                            raise DriftkitError(
                                f"An activation at {path} reaches {big:.4g}, beyond float16's range (65504), so it "
                                f"would be stored as inf. Capture with --storage-dtype bfloat16."
                            )
                    data = to_storage(t, self.storage_dtype)
                elif isinstance(t, torch.Tensor):
                    data = t.detach().cpu().numpy()
                else:
                    data = np.asarray(t)
                data = np.ascontiguousarray(data, dtype=ds.dtype)
                if not n_rows:
                    continue
                key = (spec.rows, ds.shape)
                if key not in selections:
                    selections[key] = self._file_selection(ds, runs)
                ds.id.write(h5py.h5s.create_simple(data.shape), selections[key], data)
            done = self.f[S.SAMPLES_DONE]
            rows = np.asarray(list(samples), dtype=np.int64)
            if self.written is not None:
                # A sample is done only when every per-token dataset holds its rows, so a batch
                # that lacks a dataset leaves the sample to be redone instead of a silent hole.
                for path in arrays:
                    if path in self.site_cols:
                        self.written[rows, self.site_cols[path]] = True
                idx = np.unique(rows)  # only this batch's rows: the record can be N x hundreds of sites
                self.f[S.SAMPLES_SITES_WRITTEN][idx, :] = self.written[idx]
                self.done[rows] = self.written[rows].all(axis=1)
            else:
                self.done[rows] = True
            done[...] = self.done
            self.f.flush()

    def flush(self) -> None:
        with self._writing():
            self.f.flush()

    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> None:
        """Mark the file complete, only after :func:`verify_file` finds every row written.

        Raises DriftkitError naming what is missing otherwise (the file stays incomplete, and
        ``--resume`` redoes the samples whose rows are missing)."""
        from driftkit.store.verify import verify_file

        with self._writing():
            for k, v in (extra_attrs or {}).items():
                self.f.attrs[k] = v
            self.f.flush()
            check = verify_file(self.f)
            self.f.attrs["complete"] = check.ok
            self.f.flush()
        if not check.ok:
            raise DriftkitError(
                f"{check.message(self.path)} The file is left incomplete; rerun the same command "
                f"with --resume to capture what is missing."
            )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: an OS or HDF5 failure becomes the clear :class:`StorageError`, and the
        writer remembers that the file can no longer be flushed (:meth:`close`)."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            self.io_failed = True
            raise _io_error(self.path, exc) from exc

    def close(self) -> None:
        """Close the file; after a failed write, only drop the handle.

        Why: h5py's ``File.close`` first closes every open object of the file, which flushes the data
        HDF5 could not write; after ENOSPC on a compressed capture that crashed the interpreter
        (HDF5 2.0.0, h5py 3.16: a segfault in 5 of 25 runs, before the error reached the user). The
        handle is then released when the object is freed, where a failed flush is only reported.
        Nothing completed is lost: every batch was flushed when it landed (:meth:`write_packed`)."""
        if self.io_failed:
            self.f = None  # type: ignore[assignment]  # the last reference: freed here, or at exit
            return
        try:
            self.f.close()
        except Exception:
            pass


class BackgroundWriter:
    """Runs :meth:`CaptureWriter.write_packed` on a thread so the forward pass never waits on disk.

    The queue is bounded (``depth`` batches): if the disk is slower than the model, the producer
    blocks instead of piling batches up in memory. An exception on the thread is re-raised in the
    producer at its next :meth:`put_packed` / :meth:`run` or at :meth:`close`.
    """

    def __init__(self, writer: CaptureWriter, depth: int = 2) -> None:
        self.writer = writer
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        # One OpenMP thread for the writer's torch ops (the float16 range check and conversion): at the
        # default count its team competed for the very cores the forward's team runs on (1.20x a plain
        # forward at 2 threads, 1.06x with one). The forward keeps its threads (worker_threads).
        self.thread = start_worker(self._loop, "driftkit-writer")

    def _loop(self) -> None:
        """Run the queued calls in order; after a failure, drain the queue (the producer sees the error)."""
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - surfaced to the producer
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def run(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn()`` on the writer thread, in order with the batches (the once-per-file arrays: the
        unembedding's 113 MB of a 135M model is written while the first batch runs, not before it)."""
        self._raise()
        self.q.put(fn)

    def put_packed(self, samples: Sequence[int], arrays: dict[str, torch.Tensor]) -> None:
        """Queue a batch for :meth:`CaptureWriter.write_packed` (samples increasing, rows concatenated)."""
        self.run(partial(self.writer.write_packed, list(samples), arrays))

    def close(self) -> None:
        """Wait for queued writes to land, then re-raise any error from the thread."""
        self.q.put(None)
        self.thread.join()
        self._raise()
