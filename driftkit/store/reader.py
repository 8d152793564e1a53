"""Lazy, chunked reading of capture files.

Why lazy: a capture of a real model holds gigabytes of activations; analyses stream them in token
chunks so their memory never grows with the capture. Only the small per-sample index
(ids, domains, offsets) is read eagerly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from driftkit.errors import DriftkitError, interface, opt
from driftkit.store import schema as S
from driftkit.store.buffers import ChunkBuffers

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

POSITIONS = ("all", "prompt", "response")


def _json_default(x: object) -> object:
    """numpy scalars (from pandas records and HDF5 attributes) as plain Python numbers."""
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def resume_hint(path: Path) -> str:
    """How to finish an interrupted capture, in the interface the user is in."""
    if interface() == "cli":
        return f"'driftkit capture ... --resume --out {path}'"
    return f"driftkit.capture(CaptureConfig(..., out='{path}', resume=True))"


#: float storage dtypes read straight into torch-allocated memory (:func:`_read_into_torch`)
_TORCH_DTYPES = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


def _read_into_torch(
    ds: h5py.Dataset, start: int, stop: int | None, bf16: bool, out: ChunkBuffers | None = None
) -> torch.Tensor | None:
    """Rows ``[start, stop)`` of a float (or bfloat16-bits) dataset read into a torch tensor of the
    storage dtype (bfloat16 decoded from its bits): a fresh one, or ``out``'s buffer ``"rows"``
    (:mod:`driftkit.store.buffers`). None for other datasets (integers and flags, which the caller
    reads through numpy as stored).

    Why not ``ds[start:stop]``: numpy asks the kernel for transparent huge pages for every large
    array (``madvise``), and on a virtual machine the first such arrays of a process cost several
    times the read itself while the kernel assembles the huge pages (measured: the 113 MB float32
    unembedding of a 49k x 576 model in 150-270 ms, into torch memory in ~65 ms), in every
    comparison. Torch's allocator takes ordinary pages."""
    if ds.ndim == 0 or not ((bf16 and ds.dtype == np.uint16) or ds.dtype in _TORCH_DTYPES):
        return None
    lo, hi, _ = slice(start, stop).indices(ds.shape[0])
    shape = (max(0, hi - lo), *ds.shape[1:])
    dtype = torch.bfloat16 if bf16 else _TORCH_DTYPES[ds.dtype]
    rows = torch.empty(shape, dtype=dtype) if out is None else out.take("rows", shape, dtype)
    dest = rows.view(torch.int16).numpy().view(np.uint16) if bf16 else rows.numpy()
    if rows.numel():
        ds.read_direct(dest, source_sel=np.s_[lo:hi])
    return rows


@dataclass(frozen=True)
class Unembedding:
    """Everything needed to rebuild exact logits: ``logits = hidden @ weight.T + bias``, then
    ``softcap * tanh(logits / softcap)`` when a softcap is set, then ``* scale`` when set."""

    weight: torch.Tensor  # (V, d)
    bias: torch.Tensor | None  # (V,)
    softcap: float | None
    scale: float | None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(device=hidden.device, dtype=hidden.dtype)
        out = hidden @ w.T
        if self.bias is not None:
            out = out + self.bias.to(device=hidden.device, dtype=hidden.dtype)
        return apply_final_transform(out, self.softcap, self.scale)


def apply_final_transform(logits: torch.Tensor, softcap: float | None, scale: float | None) -> torch.Tensor:
    """The optional post-matmul transforms some architectures apply (Gemma softcap, Cohere scale)."""
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


class CaptureReader:
    """Read a ``driftkit.capture/1`` file.

    ``allow_incomplete=False`` refuses a file whose capture did not finish (``complete`` attr false),
    because its unfinished samples hold zeros; with ``True`` callers should restrict themselves to
    ``done`` samples (see :meth:`done_mask`).
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DriftkitError(
                f"Capture file {self.path} does not exist. Check the path or run 'driftkit capture' first."
            )
        try:
            self._f = h5py.File(self.path, "r", swmr=True)
        except OSError as exc:
            try:
                self._f = h5py.File(self.path, "r")
            except OSError:
                raise DriftkitError(
                    f"{self.path} is not a readable HDF5 capture file ({exc}). It may be truncated by a crash "
                    f"or not a driftkit file; re-run the capture with {opt('resume')} or {opt('overwrite')}."
                ) from exc
        self.attrs: dict = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self._f.attrs.items()}
        schema = self.attrs.get("schema")
        if schema != S.SCHEMA:
            raise DriftkitError(
                f"{self.path} has schema {schema!r}, expected {S.SCHEMA!r}: it is not a driftkit capture of this "
                "version."
            )
        if "shards" in self.attrs:  # a stitched capture (capture --nproc): its rows live in shard files
            from driftkit.store.stitch import check_shards

            try:
                check_shards(self.path, self.attrs)
            except DriftkitError:
                self._f.close()
                raise
        self.complete = bool(self.attrs.get("complete", False))
        if not self.complete and not allow_incomplete:
            n_done = int(np.asarray(self._f[S.SAMPLES_DONE]).sum())
            raise DriftkitError(
                f"{self.path} is incomplete ({n_done}/{len(self._f[S.SAMPLES_DONE])} samples captured). "
                f"Finish it with {resume_hint(self.path)}, or pass {opt('allow_incomplete')} "
                f"to use only the captured samples."
            )
        self.sample_ids = np.array(
            [s.decode() if isinstance(s, bytes) else str(s) for s in self._f[S.SAMPLES_ID][()]], dtype=object
        )
        self.domains = np.array(
            [s.decode() if isinstance(s, bytes) else str(s) for s in self._f[S.SAMPLES_DOMAIN][()]], dtype=object
        )
        self.offsets = np.asarray(self._f[S.SAMPLES_OFFSETS][()], dtype=np.int64)
        self.prompt_len = np.asarray(self._f[S.SAMPLES_PROMPT_LEN][()], dtype=np.int64)
        self.done = np.asarray(self._f[S.SAMPLES_DONE][()], dtype=bool)
        self._token_ids: np.ndarray | None = None
        self._positions: np.ndarray | None = None

    # -- context manager -------------------------------------------------------------------------
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata --------------------------------------------------------------------------------
    @property
    def h5(self) -> h5py.File:
        """The underlying h5py file, for plugins that need something unusual."""
        return self._f

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def model(self) -> str:
        return str(self.attrs.get("model", "?"))

    @property
    def config(self) -> dict:
        return json.loads(self.attrs.get("config_json", "{}"))

    @property
    def token_ids(self) -> np.ndarray:
        if self._token_ids is None:
            self._token_ids = np.asarray(self._f[S.TOKEN_IDS][()], dtype=np.int64)
        return self._token_ids

    def sample_tokens(self, i: int) -> np.ndarray:
        return self.token_ids[self.offsets[i] : self.offsets[i + 1]]

    def datasets(self) -> list[str]:
        """Paths of every per-token array (first axis = tokens) under ``sites/`` and ``final/``."""
        out: list[str] = []
        for group in (S.SITES_GROUP, "final"):
            if group in self._f:
                for name, ds in self._f[group].items():
                    if (
                        isinstance(ds, h5py.Dataset)
                        and ds.attrs.get("per", "token") == "token"
                        and ds.shape[:1] == (self.n_tokens,)
                    ):
                        out.append(f"{group}/{name}")
        return out

    # -- storage budgets (--store; layout in driftkit.capturing.pooling) -----------------------------
    @property
    def store(self) -> str:
        """How layer sites are stored: ``tokens``, ``pooled`` or ``sample:K`` (root attr ``store``)."""
        return str(self.attrs.get("store", "tokens"))

    @property
    def layer_rows(self) -> str:
        """``tokens``, ``pooled`` or ``sampled``: what a row of a layer site is in this file."""
        mode = self.store
        return "sampled" if mode.startswith("sample:") else mode

    def sampled_positions(self) -> np.ndarray:
        """(T_s,) token-axis index of each stored row of a ``sample:K`` file's layer sites."""
        if self._positions is None:
            self._positions = np.asarray(self._f[f"{S.SITES_GROUP}/positions"][()], dtype=np.int64)
        return self._positions

    def pooled_means(self, site: str, positions: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """Per-sample mean of a layer site over ``positions`` (all | prompt | response) from a pooled file:
        ``((N, d) float64 means, NaN without tokens; (N,) token counts)``, the same numbers a mean over
        the per-token rows gives. ``site``: ``residual.3`` or ``sites/residual.3``."""
        if positions not in POSITIONS:
            raise DriftkitError(f"{opt('positions', None)} must be one of {', '.join(POSITIONS)}, not {positions!r}.")
        x = np.asarray(self._f[f"pooled/{site.rsplit('/', 1)[-1]}"][()], dtype=np.float64)  # (N, 3, d)
        n_tok = np.diff(self.offsets)
        n_p = np.minimum(self.prompt_len, n_tok)
        counts = {"prompt": n_p, "response": n_tok - n_p, "all": n_tok}[positions]
        if positions == "prompt":
            return x[:, 0], counts
        if positions == "response":
            return x[:, 1], counts
        w = np.stack([n_p, n_tok - n_p], 1).astype(np.float64)[:, :, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.nansum(x[:, :2] * w, axis=1) / counts[:, None]
        means[counts == 0] = np.nan
        return means, counts

    def sites(self) -> list[str]:
        """Activation sites recorded under ``sites/`` (e.g. ``residual.3``, ``embed``), sorted by layer;
        in a pooled file the sites under ``pooled/`` (``sites/positions`` of a sampled file is not a site)."""
        names = [n for n in (self._f[S.SITES_GROUP].keys() if S.SITES_GROUP in self._f else []) if n != "positions"]
        if "pooled" in self._f:
            names += list(self._f["pooled"].keys())
        if not names:
            return []

        def key(n: str) -> tuple:
            head, _, tail = n.rpartition(".")
            return (head or n, int(tail)) if tail.lstrip("-").isdigit() else (n, -1)

        return sorted(names, key=key)

    def residual_layers(self) -> list[int]:
        return sorted(int(n.split(".", 1)[1]) for n in self.sites() if n.startswith("residual."))

    def has(self, path: str) -> bool:
        """Whether ``path`` exists and can be opened (an external link to a missing file cannot)."""
        if path not in self._f:
            return False
        try:
            self._f[path]  # an external link exists even when its target file is gone: open it to know
        except KeyError:
            return False
        return True

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._f[path].shape)

    # -- result views (the same two every driftkit result offers) ----------------------------------
    #: columns of :meth:`to_frame`, one row per sample
    FRAME_COLUMNS = ("sample", "id", "domain", "start", "stop", "n_tokens", "prompt_len", "response_len", "done")

    def to_frame(self) -> pd.DataFrame:
        """The sample index as a tidy table, one row per sample; columns :attr:`FRAME_COLUMNS`.

        ``start``/``stop`` are the sample's token rows in every per-token array (``read(path, start,
        stop)``). The arrays themselves stay on disk: a frame of every activation would not fit in
        memory for a real model, so read them with :meth:`read` / :meth:`iter_chunks`.
        """
        import pandas as pd

        n_tok = np.diff(self.offsets)
        return pd.DataFrame(
            {
                "sample": np.arange(self.n_samples),
                "id": self.sample_ids.astype(str),
                "domain": self.domains.astype(str),
                "start": self.offsets[:-1],
                "stop": self.offsets[1:],
                "n_tokens": n_tok,
                "prompt_len": self.prompt_len,
                "response_len": np.maximum(n_tok - self.prompt_len, 0),
                "done": self.done,
            },
            columns=list(self.FRAME_COLUMNS),
        )

    def to_dict(self) -> dict:
        """What the file holds, JSON-able: provenance attributes, capture settings, arrays and samples."""
        arrays = {
            p: {"shape": list(self._f[p].shape), "dtype": str(self._f[p].attrs.get("dtype", self._f[p].dtype))}
            for p in self.datasets()
        }
        for g in ("pooled", S.SITES_GROUP):  # --store pooled / sample:K arrays (not per token)
            for name, ds in self._f[g].items() if g in self._f else []:
                if isinstance(ds, h5py.Dataset) and ds.attrs.get("per") in ("sample", "sampled"):
                    arrays[f"{g}/{name}"] = {"shape": list(ds.shape), "dtype": str(ds.attrs.get("dtype", ds.dtype))}
        if S.FINAL_UNEMBED in self._f:
            arrays[S.FINAL_UNEMBED] = {
                "shape": list(self._f[S.FINAL_UNEMBED].shape),
                "dtype": str(self._f[S.FINAL_UNEMBED].dtype),
            }
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.attrs.items() if k != "config_json"}
        return {
            "path": str(self.path),
            **{k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool))},
            "complete": self.complete,
            "n_samples": self.n_samples,
            "n_tokens": self.n_tokens,
            "config": self.config,
            "sites": self.sites(),
            "arrays": arrays,
            "samples": self.to_frame().to_dict(orient="records"),
        }

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON text; written atomically to ``path`` when given."""
        from driftkit.atomic import atomic_write

        text = json.dumps(self.to_dict(), indent=indent, default=_json_default) + "\n"
        if path is not None:
            atomic_write(path, text)
        return text

    # -- masks -----------------------------------------------------------------------------------
    def sample_index(self) -> np.ndarray:
        """(T,) index of the sample that owns each token."""
        return np.repeat(np.arange(self.n_samples), np.diff(self.offsets))

    def done_mask(self) -> np.ndarray:
        """(T,) True for tokens of samples that were captured."""
        return np.repeat(self.done, np.diff(self.offsets))

    def has_responses(self) -> bool:
        """True when any sample holds tokens after its prompt (a generated or given response)."""
        return bool((np.diff(self.offsets) > np.asarray(self.prompt_len)).any())

    def position_mask(self, positions: str = "all") -> np.ndarray:
        """(T,) mask of token positions: ``all``, ``prompt`` (prompt tokens) or ``response``.

        Per-position quantities describe the prediction of token t+1, so the last token of each
        sample (which predicts nothing stored) is excluded from ``response`` and ``all`` masks used
        for next-token metrics by :meth:`predictive_mask`, not here.
        """
        if positions not in POSITIONS:
            raise DriftkitError(f"{opt('positions', None)} must be one of {', '.join(POSITIONS)}, not {positions!r}.")
        if positions == "all":
            return self.done_mask()
        rel = np.arange(self.n_tokens) - np.repeat(self.offsets[:-1], np.diff(self.offsets))
        plen = np.repeat(self.prompt_len, np.diff(self.offsets))
        m = rel < plen if positions == "prompt" else rel >= plen
        return m & self.done_mask()

    def predictive_mask(self, positions: str = "all") -> np.ndarray:
        """Positions whose next-token prediction is defined (not a sample's last token).

        For ``response`` this selects positions t whose *next* token t+1 is a response token, i.e.
        the distributions that generated the response (the last prompt token predicts the first
        response token).
        """
        last = np.zeros(self.n_tokens, dtype=bool)
        nonempty = np.diff(self.offsets) > 0
        last[self.offsets[1:][nonempty] - 1] = True
        if positions == "response":
            rel = np.arange(self.n_tokens) - np.repeat(self.offsets[:-1], np.diff(self.offsets))
            plen = np.repeat(self.prompt_len, np.diff(self.offsets))
            m = rel + 1 >= plen
        elif positions == "prompt":
            rel = np.arange(self.n_tokens) - np.repeat(self.offsets[:-1], np.diff(self.offsets))
            plen = np.repeat(self.prompt_len, np.diff(self.offsets))
            m = rel + 1 < plen
        elif positions == "all":
            m = np.ones(self.n_tokens, dtype=bool)
        else:
            raise DriftkitError(f"{opt('positions', None)} must be one of {', '.join(POSITIONS)}, not {positions!r}.")
        return m & ~last & self.done_mask()

    # -- arrays ----------------------------------------------------------------------------------
    def is_bf16(self, path: str) -> bool:
        return self._f[path].attrs.get("dtype", "") in ("bfloat16", b"bfloat16")

    def read(
        self,
        path: str,
        start: int = 0,
        stop: int | None = None,
        dtype: torch.dtype | None = torch.float32,
        out: ChunkBuffers | None = None,
    ) -> torch.Tensor:
        """Rows ``[start, stop)`` of a dataset as a torch tensor (bf16 bits decoded); ``dtype=None``
        keeps the storage dtype (float16, bfloat16 or float32). With ``out``, float rows land in its
        reused buffers (``"rows"`` as stored, ``"converted"`` for ``dtype``) instead of fresh
        tensors: the result is then valid until ``out`` is used again."""
        ds = self._f[path]
        bf16 = self.is_bf16(path)
        rows = _read_into_torch(ds, start, stop, bf16, out)
        if rows is not None:
            if dtype is None:
                return rows
            return rows.to(dtype) if out is None else out.converted("converted", rows, dtype)
        return torch.from_numpy(np.ascontiguousarray(ds[start:stop]))  # integers and flags, as stored

    def read_rows(self, path: str, rows: np.ndarray, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Arbitrary (sorted or not) rows of a dataset; reads the covering range then gathers."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            ds = self._f[path]
            return torch.empty((0, *ds.shape[1:]), dtype=dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = self.read(path, lo, hi, dtype)
        return block[torch.from_numpy(rows - lo)]

    def iter_chunks(
        self,
        path: str,
        chunk_tokens: int = 4096,
        mask: np.ndarray | None = None,
        dtype: torch.dtype | None = torch.float32,
        buffers: Callable[[], ChunkBuffers] | None = None,
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(token_indices, rows)`` over the dataset in contiguous chunks of ``chunk_tokens``,
        keeping only rows where ``mask`` is true. Memory is O(chunk_tokens x d). ``dtype=None``: rows
        in their storage dtype (the mask is applied before any conversion). ``buffers``: called once
        per chunk read, gives the :class:`~driftkit.store.buffers.ChunkBuffers` it is read into (a
        :class:`~driftkit.store.buffers.BufferRing` slot), and gathered into when the mask drops some
        of its rows; without it each chunk is a fresh tensor."""
        # token rows, or for a sample:K dataset its rows' token positions (the masked tokens that were kept)
        positions = self.sampled_positions() if self._f[path].attrs.get("per") == "sampled" else None
        n_rows = self.n_tokens if positions is None else len(positions)
        for start in range(0, n_rows, chunk_tokens):
            stop = min(n_rows, start + chunk_tokens)
            idx = np.arange(start, stop) if positions is None else positions[start:stop]
            sel = None if mask is None else mask[idx]
            if sel is not None and not sel.any():
                continue
            out = None if buffers is None else buffers()
            block = self.read(path, start, stop, dtype, out)
            if sel is not None and not sel.all():  # an all-true mask (every token, the usual case) copies nothing
                keep = np.flatnonzero(sel)
                idx, rows = idx[keep], torch.from_numpy(keep)
                if out is None:
                    block = block[rows]
                else:  # into the slot too: fresh copies of a few MB per chunk fragmented the heap
                    # sized as the whole chunk, so a later chunk that keeps more rows fits as well
                    kept = out.take("selected", tuple(block.shape), block.dtype)[: len(keep)]
                    block = torch.index_select(block, 0, rows, out=kept)
            yield idx, block

    def unembedding(self, dtype: torch.dtype = torch.float32) -> Unembedding:
        link = self._f.get(S.FINAL_UNEMBED, getlink=True)
        if isinstance(link, h5py.ExternalLink) and not self.has(S.FINAL_UNEMBED):
            raise DriftkitError(
                f"{self.path} keeps its unembedding in the shared file {link.filename} (relative to the capture's "
                f"folder), which is missing. Put that file back next to the capture, or capture again without "
                f"a shared unembedding."
            )
        if not self.has(S.FINAL_UNEMBED):
            raise DriftkitError(
                f"{self.path} has no {S.FINAL_UNEMBED}: capture it with the 'final' probe to compute KL or ranks."
            )
        ds = self._f[S.FINAL_UNEMBED]
        w = self.read(S.FINAL_UNEMBED, dtype=dtype)
        bias = self.read(S.FINAL_UNEMBED_BIAS, dtype=dtype) if S.FINAL_UNEMBED_BIAS in self._f else None
        softcap = ds.attrs.get("logit_softcap")
        scale = ds.attrs.get("logit_scale")
        return Unembedding(
            w, bias, float(softcap) if softcap is not None else None, float(scale) if scale is not None else None
        )
