"""The compare engine: one pass over the logits and one read of each layer, shared by all analyses.

Why: the two matmuls that rebuild both models' full-vocabulary logits (``hidden @ unembed.T``) are
the dominant cost of a comparison, and reading a layer from two HDF5 files is the next one. When
every analysis streamed its own data, KL and token ranks each rebuilt all logits and CKA and the PCA
shift each read every layer. Here an analysis declares what it consumes (``consumes = {"logits"}``
and/or ``{"layers"}``) and receives chunks through hooks (:class:`~driftkit.Analysis`): the engine
rebuilds each block of logits once and hands it to every logits consumer, and reads each layer once
for every layer consumer. An analysis that only overrides ``run(pair)`` (a third-party or legacy
one) is called as before, after the shared passes.

Masks: each consumer says which positions it wants (:meth:`Analysis.logits_mask`,
:meth:`Analysis.layers_mask`); the engine reads the union and hands each consumer its own subset
(the same chunk object when the subset is the whole chunk, which is the usual case).

Sharing without copies: logits blocks are read-only for consumers, except that one consumer that
declares ``scratch_logits = True`` (an in-place kernel of its own) is fed last and may overwrite them;
if several do, all but the last get a copy in a spare buffer pair.

Sharing per-position quantities: what several analyses derive from the same block (the exact KL
divergences, the rank statistics) is computed once per block, by whichever consumer asks first,
and memoised on the chunk (:meth:`LogitsChunk.kl`, :meth:`LogitsChunk.ranks`, and
:meth:`LogitsChunk.shared` for any other per-block value). The standard ones never overwrite the
blocks (the KL kernel runs on the pass's own scratch, :data:`SHARED_QUANTITIES`), so the order of
the read-only consumers does not matter (their scratch, declared in :attr:`Analysis.logits_shared`,
is allocated once for the pass: a few row slices, see :func:`~driftkit.metrics.kl.row_slices`). A
scratch consumer asks before it overwrites its blocks: every one but the last works on a copy, which
keeps the block's memo. Their time is reported as a shared pass split between the analyses that asked for them.

Reading ahead: both passes read their next chunk on a reader thread (:func:`read_ahead`) while the
consumers compute on the current one, and the layers pass converts it there too.

Layers: each chunk of a layer's rows is read in its storage dtype and converted once, on first use,
for every consumer (:class:`LayerChunk`: ``xa``/``xb`` float32, ``float64()``); what several
analyses accumulate over a whole layer lives in the layer's store (:class:`LayerStore`, reached
with ``pair.layer_shared``), opened around each layer by :func:`one_layer`, and is fed once per
chunk through :meth:`LayerChunk.shared` (:mod:`driftkit.comparing.layer_sums`).

Memory: the blocks hold ``rows`` positions, where ``rows`` comes from
:func:`~driftkit.metrics.kl.rows_for_budget` over the bytes per vocabulary entry of the engine's own
two blocks plus every consumer's declared scratch (:attr:`Analysis.logits_scratch_bytes`), so the
whole pass stays within a fixed byte budget at any vocabulary and any number of tokens. The shared
quantities' scratch is a few row slices (:data:`~driftkit.metrics.kl.SLICE_BYTES` each), outside
that budget. Both passes read (and the layers pass converts) every chunk into a few buffers reused in
rotation (:class:`~driftkit.store.buffers.BufferRing`), so a pass's memory does not grow with the
number of layers either; consumers keep nothing that aliases a chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from driftkit.comparing.read_ahead import held_chunks, read_ahead
from driftkit.metrics.kl import KLStats, kl_on_row_slices, logits_into, row_slices, rows_for_budget, slice_rows
from driftkit.metrics.ranks import RankStats, rank_stats
from driftkit.store import schema as S
from driftkit.store.buffers import BufferRing, ChunkBuffers

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.comparing.pair import CapturePair
    from driftkit.registry.analysis import Analysis

#: what an analysis may list in ``consumes``
LOGITS, LAYERS = "logits", "layers"
CONSUMABLE = (LOGITS, LAYERS)

#: byte budget of the logits pass's (rows, V) blocks: the engine's two float32 blocks plus the
#: consumers' declared scratch (512 positions at V = 49,152 for kl + token_rank, whose kernels work
#: on small row slices, :func:`~driftkit.metrics.kl.row_slices`). With the two float32 unembeddings of
#: a 49k x 576 model (226 MB) and the ~410 MB the imports take, a whole comparison stays under 1 GB. The logit matmuls
#: run ~7% faster per row at 512 rows than at 227 (one core, V = 49,152); beyond 512 they gain nothing.
LOGITS_BUDGET = 256 * 2**20

#: the standard per-position quantities of a block (``Analysis.logits_shared`` names them), with the
#: float32 (slice rows, V) scratch arrays each needs; the pass holds the largest such count once,
#: reused by every quantity in turn and by every row slice. ``kl``: :meth:`LogitsChunk.kl`;
#: ``ranks``: :meth:`LogitsChunk.ranks`.
SHARED_QUANTITIES = {"kl": 4, "ranks": 1}


class _SharedWork:
    """What the chunks of one logits pass share: the scratch of the standard quantities ((rows, V)
    float32 arrays, ``rows`` = one row slice) and the seconds spent computing memoised values
    (billed to the analyses that asked, not the first)."""

    def __init__(self, rows: int, vocab: int, blocks: int) -> None:
        self.rows, self.vocab = rows, vocab
        self.blocks = [torch.empty(rows, vocab) for _ in range(blocks)]
        self.seconds: dict[Hashable, float] = {}
        self.askers: dict[Hashable, list[str]] = {}
        self.computing: list[float] = []  # seconds of memo computations inside the current hook call
        self.current = ""  # the analysis being fed

    def scratch(self, n_blocks: int, n: int) -> list[torch.Tensor]:
        """``n_blocks`` (n, V) float32 views of the pass's scratch (allocated once, on first use
        when no consumer declared the quantity)."""
        while len(self.blocks) < n_blocks:
            self.blocks.append(torch.empty(self.rows, self.vocab))
        return [b[:n] for b in self.blocks[:n_blocks]]


@dataclass
class _Failed:
    """A memoised computation that raised (the error is raised again to each asker)."""

    error: Exception


@dataclass
class LogitsChunk:
    """One block of positions with both models' rebuilt logits (what :meth:`Analysis.on_logits` gets).

    ``logits_a``/``logits_b`` are (n, V) float32 views of buffers the engine reuses for the next
    block: read them, reduce them to per-position numbers, keep nothing that aliases them, and do
    not write to them unless the analysis declares ``scratch_logits = True``.

    Per-position quantities several analyses need are computed once per block and memoised here:
    :meth:`kl` and :meth:`ranks` (the standard ones), :meth:`shared` for any other. Their results
    are shared between analyses: read them, never modify them in place."""

    pair: CapturePair
    idx: np.ndarray  # (n,) token indices in the capture (position t predicts token t + 1)
    logits_a: torch.Tensor  # (n, V) float32, model A (the reference)
    logits_b: torch.Tensor  # (n, V) float32, model B
    next_ids: torch.Tensor  # (n,) the realised next token ids
    domain: torch.Tensor  # (n,) int64 index into pair.domain_names
    block_rows: int  # the most rows any block of this pass holds (size scratch buffers by it)
    work: _SharedWork | None = field(default=None, repr=False, compare=False)
    memo: dict[Hashable, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, sel: np.ndarray) -> LogitsChunk:
        """The rows where ``sel`` (n,) is true, copied (a consumer whose mask is narrower); it has
        its own memo (its quantities are over its rows)."""
        t = torch.from_numpy(np.flatnonzero(sel))
        return replace(
            self,
            idx=self.idx[sel],
            logits_a=self.logits_a.index_select(0, t),
            logits_b=self.logits_b.index_select(0, t),
            next_ids=self.next_ids[t],
            domain=self.domain[t],
            memo={},
        )

    def shared(self, key: Hashable, compute: Callable[[LogitsChunk], Any]) -> Any:
        """``compute(self)`` the first time any analysis asks for ``key`` in this block, the stored
        value after that. Use a key that names what is computed (e.g. ``("my_plugin.entropy",)``
        or the function itself); ``compute`` must only read the blocks. Why: each analysis reducing
        the same block to the same per-position numbers would repeat (n, V) passes."""
        if self.work is not None:
            who = self.work.askers.setdefault(key, [])
            if self.work.current and self.work.current not in who:
                who.append(self.work.current)
        if key not in self.memo:
            t0 = time.perf_counter()
            try:
                self.memo[key] = compute(self)
            except Exception as e:  # noqa: BLE001 - every asker gets the same error (blocks may be gone)
                self.memo[key] = _Failed(e)
            if self.work is not None:
                dt = time.perf_counter() - t0
                self.work.seconds[key] = self.work.seconds.get(key, 0.0) + dt
                self.work.computing.append(dt)
        value = self.memo[key]
        if isinstance(value, _Failed):
            raise value.error
        return value

    def _scratch(self, n_blocks: int, n: int) -> list[torch.Tensor]:
        """``n_blocks`` (n, V) float32 scratch arrays (``n``: the rows of one slice)."""
        vocab = self.logits_a.shape[1]
        if self.work is None or self.work.vocab != vocab or self.work.rows < n:
            self.work = _SharedWork(max(n, 1), vocab, 0)
        return self.work.scratch(n_blocks, n)

    def kl(self) -> KLStats:
        """Exact KL(P_B||P_A), KL(P_A||P_B), JS and the realised token's log-ratio at each position
        (:func:`~driftkit.metrics.kl.kl_from_logits_` in its non-destructive form: the blocks stay
        intact, so every consumer still reads them). Raises
        :class:`~driftkit.metrics.kl.NonFiniteLogits` naming the row (an index into this chunk)."""
        return self.shared("kl", _kl)

    def ranks(self) -> RankStats:
        """B's top token, its rank under A, and the realised token's rank under A and under B at each
        position (:func:`~driftkit.metrics.ranks.rank_stats`; the blocks are only read)."""
        return self.shared("ranks", _ranks)


def _kl(c: LogitsChunk) -> KLStats:
    n, vocab = c.logits_a.shape
    # a fourth scratch array (em_buf) keeps the blocks intact: they are read-only for the consumers
    return kl_on_row_slices(
        c.logits_a, c.logits_b, c.next_ids, c._scratch(SHARED_QUANTITIES["kl"], slice_rows(n, vocab))
    )


def _ranks(c: LogitsChunk) -> RankStats:
    n, vocab = c.logits_a.shape
    (scratch,) = c._scratch(SHARED_QUANTITIES["ranks"], slice_rows(n, vocab))
    parts = [
        rank_stats(c.logits_a[s:e], c.logits_b[s:e], c.next_ids[s:e], scratch[: e - s]) for s, e in row_slices(n, vocab)
    ]
    if len(parts) == 1:
        return parts[0]
    fields = ("top_b", "rank_a_of_top_b", "rank_a", "rank_b")
    return RankStats(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))


class LayerChunk:
    """A chunk of one layer's rows from both captures (what :meth:`Analysis.on_layer` gets); read-only,
    and valid only during the call: its rows and conversions live in buffers the pass reuses for a
    later chunk (:mod:`driftkit.store.buffers`), so copy what you keep.

    The engine reads the rows in their storage dtype (float16, bfloat16 decoded from its bits, or
    float32) and converts them only when asked, once per chunk for every consumer: :attr:`xa` /
    :attr:`xb` (float32) and :meth:`float64` (both converted directly from storage, not through
    float32: CKA's d x d sums and the per-sample pooled sums are float64). Why: converting a
    4096 x 576 float16 chunk pair to float32 took 9 ms, that to float64 another 18 ms, for each
    consumer that wanted float64, about 30% on top of CKA's own products.

    Per-chunk values several analyses need are memoised like :meth:`LogitsChunk.shared`:
    :meth:`shared`. Consumers with equal masks get the same chunk object, so they share its memo."""

    def __init__(
        self,
        layer: int | str,
        site: str,
        idx: np.ndarray,
        xa: torch.Tensor,
        xb: torch.Tensor,
        buffers: tuple[ChunkBuffers, ChunkBuffers] | None = None,
    ) -> None:
        self.layer = layer  # model layer index, or "embed"
        self.site = site  # HDF5 dataset path, e.g. "sites/residual.3"
        self.idx = idx  # (n,) token indices in the capture
        #: (n, d_a) / (n, d_b) rows as read (storage dtype); prefer :attr:`xa`, :attr:`xb`, :meth:`float64`
        self.rows_a, self.rows_b = xa, xb
        #: where the conversions go: the pass's reused buffers for this chunk (A's, B's), or None (fresh)
        self.buffers = buffers
        self.memo: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self.idx)

    def __repr__(self) -> str:
        return f"LayerChunk(layer={self.layer!r}, site={self.site!r}, n={len(self)}, dtype={self.rows_a.dtype})"

    @property
    def dtype(self) -> torch.dtype:
        """The rows' storage dtype (``torch.float16``, ``torch.bfloat16`` or ``torch.float32``)."""
        return self.rows_a.dtype

    @property
    def xa(self) -> torch.Tensor:
        """(n, d_a) float32 rows of capture A (converted on first access, then memoised)."""
        return self.shared("float32", _to_float32)[0]

    @property
    def xb(self) -> torch.Tensor:
        """(n, d_b) float32 rows of capture B."""
        return self.shared("float32", _to_float32)[1]

    def float64(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(xa, xb)`` as float64, converted directly from the storage dtype (exact: float16,
        bfloat16 and float32 values are all float64 values), once per chunk."""
        return self.shared("float64", _to_float64)

    def subset(self, sel: np.ndarray) -> LayerChunk:
        """The rows where ``sel`` is true, taken from the storage-dtype rows (before any conversion);
        it has its own memo (its values are over its rows)."""
        t = torch.from_numpy(np.flatnonzero(sel))
        return LayerChunk(
            self.layer, self.site, self.idx[sel], self.rows_a.index_select(0, t), self.rows_b.index_select(0, t)
        )

    def shared(self, key: Hashable, compute: Callable[[LayerChunk], Any]) -> Any:
        """``compute(self)`` the first time any analysis asks for ``key`` in this chunk, the stored
        value after that; an error is raised again to every asker. Key what is computed *and* for
        whom when it writes into something: two consumer groups whose masks both keep every row
        of a chunk get the same chunk object (e.g. ``("my_plugin.sums", mask_key(mask))``).
        ``compute`` must only read the rows."""
        if key not in self.memo:
            try:
                self.memo[key] = compute(self)
            except Exception as e:  # noqa: BLE001 - every asker gets the same error
                self.memo[key] = _Failed(e)
        value = self.memo[key]
        if isinstance(value, _Failed):
            raise value.error
        return value


def _converted(c: LayerChunk, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Both captures' rows as ``dtype``: into the chunk's reused buffers when it has them."""
    if c.buffers is None:
        return c.rows_a.to(dtype), c.rows_b.to(dtype)
    out_a, out_b = c.buffers
    return out_a.converted(str(dtype), c.rows_a, dtype), out_b.converted(str(dtype), c.rows_b, dtype)


def _to_float32(c: LayerChunk) -> tuple[torch.Tensor, torch.Tensor]:
    return _converted(c, torch.float32)


def _to_float64(c: LayerChunk) -> tuple[torch.Tensor, torch.Tensor]:
    return _converted(c, torch.float64)


class LayerStore:
    """What the consumers of one layer share for the whole layer (reach it with
    :meth:`CapturePair.layer_shared <driftkit.comparing.pair.CapturePair.layer_shared>`).

    The engine opens one in :func:`one_layer` before the consumers' ``start_layer`` and closes it
    after their ``finish_layer`` (so ``--jobs`` workers have one too); the next layer gets a fresh
    one. Why: accumulators several analyses fill from the same rows (CKA's and similarity's d x d
    sums, the per-sample pooled sums of pca_shift, similarity and sample CKA) are created by the
    first analysis that asks and fed once per chunk (with :meth:`LayerChunk.shared`)."""

    def __init__(self, layer: int | str, site: str) -> None:
        self.layer, self.site = layer, site
        self.values: dict[Hashable, Any] = {}
        self.open = True

    def get(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        """The value stored under ``key``, made with ``factory()`` by the first asker (a factory
        that raises stores nothing: the error goes to that asker)."""
        if not self.open:
            raise RuntimeError(f"the shared store of layer {self.layer!r} ({self.site}) is closed")
        if key not in self.values:
            self.values[key] = factory()
        return self.values[key]

    def close(self) -> None:
        self.values.clear()
        self.open = False


def mask_key(mask: np.ndarray) -> str:
    """A short digest of a (T,) position mask, for keys of values that depend on the rows kept
    (the per-layer store is shared by consumers whose masks may differ)."""
    import hashlib

    bits = np.packbits(np.asarray(mask, dtype=bool)).tobytes()
    return hashlib.blake2b(bits, digest_size=16).hexdigest() + f":{len(mask)}"


class _Clock:
    """Seconds per analysis (its own hooks) and per shared pass (reads and matmuls)."""

    def __init__(self) -> None:
        self.own: dict[str, float] = {}
        self.shared: dict[str, float] = {}
        self.sharers: dict[str, list[str]] = {}

    def call(self, an: Analysis, fn: Any, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.own[an.name] = self.own.get(an.name, 0.0) + time.perf_counter() - t

    def seconds(self) -> dict[str, float]:
        """Each analysis's own time plus an equal share of each shared pass it consumed (the
        figures add up to the comparison's total)."""
        out = dict(self.own)
        for what, secs in self.shared.items():
            names = self.sharers.get(what, [])
            for n in names:
                out[n] = out.get(n, 0.0) + secs / len(names)
        return {k: round(v, 3) for k, v in out.items()}


def _select(mask: np.ndarray, idx: np.ndarray) -> np.ndarray | None:
    """None when ``mask`` keeps every row of ``idx`` (hand over the chunk itself)."""
    sel = mask[idx]
    return None if bool(sel.all()) else sel


def _logits_pass(pair: CapturePair, consumers: list[Analysis], clock: _Clock) -> None:
    """Rebuild both models' logits once per block and feed every logits consumer."""
    masks = {an.name: clock.call(an, an.logits_mask, pair) for an in consumers}
    union = np.logical_or.reduce(list(masks.values()))
    # read-only consumers first, then those that overwrite the blocks (all but the last on a copy)
    order = [an for an in consumers if not an.scratch_logits] + [an for an in consumers if an.scratch_logits]
    n_copies = max(0, sum(an.scratch_logits for an in consumers) - 1)
    declared = [q for an in consumers for q in sorted(an.logits_shared)]
    for an in consumers:
        bad = set(an.logits_shared) - set(SHARED_QUANTITIES)
        if bad:
            raise ValueError(
                f"analysis {an.name!r} declares logits_shared {sorted(bad)}; known: {', '.join(SHARED_QUANTITIES)}"
            )
    t0 = time.perf_counter()
    ua, ub = pair.a.unembedding(), pair.b.unembedding()
    vocab = int(ua.weight.shape[0])
    n_work = max((SHARED_QUANTITIES[q] for q in declared), default=0)  # one scratch set, reused by each quantity
    per_entry = 8 * (1 + n_copies) + sum(int(an.logits_scratch_bytes) for an in consumers)
    rows = rows_for_budget(vocab, min(int(an.max_logits_rows()) for an in consumers), per_entry, LOGITS_BUDGET)
    la_buf, lb_buf = torch.empty(rows, vocab), torch.empty(rows, vocab)
    spare = (torch.empty(rows, vocab), torch.empty(rows, vocab)) if n_copies else None
    work = _SharedWork(slice_rows(rows, vocab), vocab, n_work)  # scratch for one row slice
    shared = time.perf_counter() - t0
    total, done = int(union.sum()), 0
    names = ", ".join(an.name for an in consumers)
    read_time = [0.0]
    hidden = pair.iter_pair(S.FINAL_HIDDEN, union, buffers=BufferRing(held_chunks()))  # no churn of chunk blocks
    blocks = read_ahead(hidden, prepare=lambda it: (*it, *_targets(pair, it[0])))
    for idx, ha, hb, y_all, dom_all in _timed(blocks, read_time):
        for s in range(0, len(idx), rows):
            e = min(len(idx), s + rows)
            t0 = time.perf_counter()
            la = logits_into(ua, ha[s:e], la_buf[: e - s])
            lb = logits_into(ub, hb[s:e], lb_buf[: e - s])
            shared += time.perf_counter() - t0
            chunk = LogitsChunk(pair, idx[s:e], la, lb, y_all[s:e], dom_all[s:e], rows, work)
            scratch_seen = 0
            for an in order:
                sel = _select(masks[an.name], chunk.idx)
                if sel is not None and not sel.any():
                    continue
                part = chunk if sel is None else chunk.subset(sel)
                if an.scratch_logits and sel is None and scratch_seen < n_copies and spare is not None:
                    m = len(part)  # the copy keeps the chunk's memo: the same numbers
                    part = replace(part, logits_a=spare[0][:m].copy_(la), logits_b=spare[1][:m].copy_(lb))
                scratch_seen += int(an.scratch_logits)
                _feed(an, part, clock)
        done += len(idx)
        pair.progress(f"logits ({names})", done, total)
    clock.shared[LOGITS] = shared + read_time[0]
    clock.sharers[LOGITS] = [an.name for an in consumers]
    for key, secs in work.seconds.items():  # each memoised quantity: split between those that asked
        clock.shared[f"{LOGITS}:{key}"] = secs
        clock.sharers[f"{LOGITS}:{key}"] = work.askers.get(key, [])


def _targets(pair: CapturePair, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The realised next token and the domain of each position (looked up on the reader thread)."""
    return pair.next_token_ids(idx), pair.domain_index(idx)


def _feed(an: Analysis, chunk: LogitsChunk, clock: _Clock) -> None:
    """``an.on_logits(chunk)``, its own time net of the memoised quantities it computed first."""
    work = chunk.work
    assert work is not None
    work.current, work.computing = an.name, []
    try:
        clock.call(an, an.on_logits, chunk)
    finally:
        clock.own[an.name] -= sum(work.computing)
        work.current, work.computing = "", []


def _timed(items: Iterator[Any], seconds: list[float]) -> Iterator[Any]:
    """Yield from ``items``, adding the time spent producing them (the shared file reads) to
    ``seconds[0]``, so the report can split a pass into shared work and each analysis's own."""
    while True:
        t0 = time.perf_counter()
        item = next(items, None)
        seconds[0] += time.perf_counter() - t0
        if item is None:
            return
        yield item


def _layers_pass(pair: CapturePair, consumers: list[Analysis], clock: _Clock) -> None:
    """Read each layer once (the union of what the consumers want) and feed every layer consumer.

    The reads run one chunk ahead on a reader thread (:func:`read_ahead`), across layers too: the
    next chunk is read and converted (to the dtypes the consumers asked for so far, see
    :class:`_Conversions`) while the consumers compute on the current one."""
    masks = {an.name: clock.call(an, an.layers_mask, pair) for an in consumers}
    wanted = {an.name: list(clock.call(an, an.layer_sites, pair)) for an in consumers}
    sites = layer_sites_union(consumers, wanted)
    plan = [(layer, path, [an for an in consumers if (layer, path) in wanted[an.name]]) for layer, path in sites]
    conversions = _Conversions()

    end = object()  # marks the end of a layer's chunks in the stream

    # every chunk is read (and converted) into one of a few buffers reused in rotation: fresh blocks
    # per chunk fragmented the allocator's heaps, and the pass's memory grew with the layer count
    ring = BufferRing(held_chunks())

    def chunks() -> Iterator[Any]:
        for layer, path, cons in plan:
            union = np.logical_or.reduce([masks[an.name] for an in cons])
            for item in pair.iter_pair(path, union, dtype=None, buffers=ring):
                yield LayerChunk(layer, path, *item, buffers=ring.current)
            yield end

    read_time = [0.0]
    stream = _timed(read_ahead(chunks(), prepare=conversions.prepare), read_time)
    try:
        for i, (layer, path, cons) in enumerate(plan):
            layer_chunks = iter(lambda: next(stream), end)
            one_layer(pair, layer, path, cons, masks, clock, read_time, layer_chunks, conversions)
            pair.progress(f"layers ({', '.join(an.name for an in consumers)})", i + 1, len(sites))
    finally:
        stream.close()
    clock.shared[LAYERS] = read_time[0]
    clock.sharers[LAYERS] = [an.name for an in consumers]


#: largest chunk (both captures' rows, as float64) the reader converts ahead of use. Above it the
#: reader only reads and the consumers convert on first use: converted copies waiting in the queue
#: would otherwise hold up to two more chunks in memory (2 x 335 MB at d = 5,120 and 4,096 tokens).
READ_AHEAD_CONVERT_BYTES = 128 * 2**20


def _converted_bytes(chunk: LayerChunk) -> int:
    return 8 * (chunk.rows_a.numel() + chunk.rows_b.numel())


class _Conversions:
    """The conversions the consumers asked of whole chunks so far in a layers pass (``float32``,
    ``float64``): the reader thread makes them for the chunks it reads ahead, so the consumers
    find them in the chunk's memo. Learned from the first chunk (analyses ask for the same forms
    at every layer); a conversion nobody asks for again is only wasted work, never a wrong value."""

    #: memo key -> how a consumer asks for it
    KINDS: dict[str, Callable[[LayerChunk], Any]] = {"float32": lambda c: c.xa, "float64": lambda c: c.float64()}

    def __init__(self) -> None:
        self.wanted: set[str] = set()

    def prepare(self, chunk: Any) -> Any:
        if isinstance(chunk, LayerChunk) and _converted_bytes(chunk) <= READ_AHEAD_CONVERT_BYTES:
            for kind in self.wanted:
                self.KINDS[kind](chunk)
        return chunk

    def learn(self, chunk: LayerChunk) -> None:
        """Called on the main thread; the reader reads ``wanted``, so it is replaced, never mutated."""
        new = {k for k in self.KINDS if k in chunk.memo} - self.wanted
        if new:
            self.wanted = self.wanted | new


def layer_sites_union(
    consumers: Sequence[Analysis], wanted: dict[str, list[tuple[int | str, str]]]
) -> list[tuple[int | str, str]]:
    """Every ``(layer, path)`` some consumer wants, in the consumers' order (the order layers are read)."""
    sites: list[tuple[int | str, str]] = []
    for an in consumers:
        sites += [s for s in wanted[an.name] if s not in sites]
    return sites


def one_layer(
    pair: CapturePair,
    layer: int | str,
    path: str,
    cons: Sequence[Analysis],
    masks: dict[str, np.ndarray],
    clock: _Clock,
    read_time: list[float],
    chunks: Iterator[LayerChunk] | None = None,
    conversions: _Conversions | None = None,
    buffers: BufferRing | None = None,
) -> None:
    """One layer for its consumers: ``start_layer``, every chunk to ``on_layer``, ``finish_layer``,
    with the layer's shared store (:class:`LayerStore`, ``pair.layer_shared``) open throughout.
    ``chunks``: the layer's chunks as the layers pass reads them ahead (read here when None, into
    ``buffers``: one slot serves, since each chunk is read after the previous one is done; pass the
    same ring for every layer so its buffers are allocated once).

    Shared by the one-process pass and the ``--jobs`` workers (driftkit.comparing.layer_jobs), so a
    layer is computed by the same code, in the same chunks, wherever it runs."""
    store = LayerStore(layer, path)
    previous, pair.layer_store = pair.layer_store, store
    conversions = conversions or _Conversions()
    try:
        for an in cons:
            clock.call(an, an.start_layer, pair, layer, path)
        union = np.logical_or.reduce([masks[an.name] for an in cons])
        distinct, group = _mask_groups(cons, masks)
        # rows in their storage dtype: subsets are taken before any conversion, and each conversion is
        # made once per chunk, by the first consumer that asks (LayerChunk.xa / .float64()) or ahead of
        # time by the reader thread
        if chunks is None:
            ring = buffers or BufferRing(1)
            items = _timed(pair.iter_pair(path, union, dtype=None, buffers=ring), read_time)
            chunks = (LayerChunk(layer, path, *item, buffers=ring.current) for item in items)
        for chunk in chunks:
            _feed_layer(chunk, cons, group, distinct, clock)
            conversions.learn(chunk)
            del chunk  # its float64 copy goes before the next chunk arrives
        for an in cons:
            clock.call(an, an.finish_layer, pair, layer, path)
    finally:
        pair.layer_store = previous
        store.close()


def _mask_groups(cons: Sequence[Analysis], masks: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, int]]:
    """The distinct masks of ``cons`` and each consumer's index among them. Consumers with equal
    masks get the same chunk object: one subset copy per distinct mask, not one per consumer (and
    analyses that share work per chunk see one chunk)."""
    distinct: list[np.ndarray] = []
    group: dict[str, int] = {}
    for an in cons:
        m = masks[an.name]
        hit = next((i for i, r in enumerate(distinct) if r is m or np.array_equal(r, m)), None)
        if hit is None:
            distinct.append(m)
            hit = len(distinct) - 1
        group[an.name] = hit
    return distinct, group


def _feed_layer(
    chunk: LayerChunk, cons: Sequence[Analysis], group: dict[str, int], distinct: list[np.ndarray], clock: _Clock
) -> None:
    """One chunk to every consumer (its own subset per distinct mask). A function of its own so the
    chunk and its memo (its float64 copy) are freed before the next chunk is read."""
    views: dict[int, LayerChunk | None] = {}
    for an in cons:
        g = group[an.name]
        if g not in views:
            sel = _select(distinct[g], chunk.idx)
            views[g] = chunk if sel is None else (chunk.subset(sel) if sel.any() else None)
        view = views[g]
        if view is not None:
            clock.call(an, an.on_layer, view)


def run_analyses(
    pair: CapturePair, analyses: Sequence[Analysis], jobs: int = 1
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run ``analyses`` (already checked) on ``pair``: streaming ones share one logits pass and one
    read per layer, legacy ones (``run`` only) run on their own. Returns ``(results by name,
    seconds by name)``; results keep the order of ``analyses``.

    ``jobs > 1`` spreads the layers pass over that many processes (driftkit.comparing.layer_jobs);
    the results are identical to ``jobs=1``."""
    clock = _Clock()
    streaming = [an for an in analyses if an.consumes]
    for an in streaming:
        bad = set(an.consumes) - set(CONSUMABLE)
        if bad:
            raise ValueError(f"analysis {an.name!r} consumes {sorted(bad)}; known: {', '.join(CONSUMABLE)}")
        clock.call(an, an.start, pair)
    logit_cons = [an for an in streaming if LOGITS in an.consumes]
    layer_cons = [an for an in streaming if LAYERS in an.consumes]
    done: dict[str, Any] = {}
    if logit_cons:
        _logits_pass(pair, logit_cons, clock)
        # an analysis that needs nothing more finishes now, so its logits-sized scratch is freed
        # before the layer pass (peak memory is the larger of the two passes, not their sum)
        for an in logit_cons:
            if LAYERS not in an.consumes:
                done[an.name] = clock.call(an, an.finish, pair)
    if layer_cons and jobs > 1:
        from driftkit.comparing.layer_jobs import layers_pass_jobs

        layers_pass_jobs(pair, layer_cons, clock, jobs)
    elif layer_cons:
        _layers_pass(pair, layer_cons, clock)
    results: dict[str, Any] = {}
    for an in analyses:
        if an.name not in done:
            done[an.name] = clock.call(an, an.finish if an.consumes else an.run, pair)
        results[an.name] = done[an.name]
    return results, clock.seconds()
