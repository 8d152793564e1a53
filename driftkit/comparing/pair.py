"""Two comparable captures and the user's selection, as analyses see them.

Why checks come first: every analysis pairs row ``t`` of file A with row ``t`` of file B. That is
only meaningful when both files hold the same samples in the same order with identical token ids,
so :func:`check_comparable` refuses anything else with a message that names the first offending
sample and the likely cause (different tokenizers, or different prompts/responses), before any math.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from driftkit.errors import DriftkitError, IncompatibleCaptures, opt
from driftkit.store import schema as S
from driftkit.store.buffers import BufferRing, ChunkBuffers
from driftkit.store.reader import POSITIONS, CaptureReader

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.comparing.engine import LayerStore

#: what ``--positions`` accepts: the reader's selections plus ``auto`` (resolved per pair)
COMPARE_POSITIONS = ("auto", *POSITIONS)

#: callback(description, done, total) used to drive a progress bar
Progress = Callable[[str, int, int], None]


@dataclass
class CompareOptions:
    """The user's selection, shared by all analyses of a comparison."""

    positions: str = "auto"  # auto | all | prompt | response (auto: see CapturePair.positions)
    layers: str | list[int] | None = None  # residual layers (model indices); None = all captured
    domains: list[str] | None = None
    max_tokens: int | None = None  # random subsample of scored tokens (per analysis mask), seeded
    seed: int = 0
    chunk_tokens: int = 4096
    allow_incomplete: bool = False
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        if self.positions not in COMPARE_POSITIONS:
            raise DriftkitError(
                f"{opt('positions', None)} must be one of {', '.join(COMPARE_POSITIONS)}, not {self.positions!r}."
            )
        if self.max_tokens is not None and self.max_tokens < 4:
            raise DriftkitError(
                f"{opt('max_tokens', None)} must be at least 4 (CKA needs 4 rows), got {self.max_tokens}."
            )
        if self.chunk_tokens < 1:
            raise DriftkitError(f"chunk_tokens must be positive, got {self.chunk_tokens}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "positions": self.positions,
            "layers": self.layers if self.layers is None or isinstance(self.layers, str) else list(self.layers),
            "domains": self.domains,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "allow_incomplete": self.allow_incomplete,
        }


def _first_true(x: np.ndarray) -> int | None:
    idx = np.flatnonzero(x)
    return int(idx[0]) if idx.size else None


def check_comparable(a: CaptureReader, b: CaptureReader) -> list[str]:
    """Raise :class:`IncompatibleCaptures` unless ``a`` and ``b`` cover identical tokens; return
    notes (e.g. sites present in only one file, which analyses will skip)."""
    pa, pb = a.path, b.path
    if a.n_samples != b.n_samples or not np.array_equal(a.sample_ids, b.sample_ids):
        if a.n_samples == b.n_samples and set(a.sample_ids) == set(b.sample_ids):
            i = _first_true(a.sample_ids != b.sample_ids)
            raise IncompatibleCaptures(
                f"{pa} and {pb} hold the same samples in a different order (first difference at position {i}: "
                f"{a.sample_ids[i]!r} vs {b.sample_ids[i]!r}). Capture both from the same prompt file, or capture "
                f"{pb.name} with {opt('tokens_from', str(pa))} so it reuses A's samples and tokens."
            )
        only_a = [s for s in a.sample_ids if s not in set(b.sample_ids)]
        only_b = [s for s in b.sample_ids if s not in set(a.sample_ids)]
        raise IncompatibleCaptures(
            f"{pa} ({a.n_samples} samples) and {pb} ({b.n_samples} samples) hold different samples "
            f"(only in A: {only_a[:3]}{'...' if len(only_a) > 3 else ''}; "
            f"only in B: {only_b[:3]}{'...' if len(only_b) > 3 else ''}). "
            f"Capture both checkpoints on the same prompt file, or capture B with {opt('tokens_from', str(pa))}."
        )
    both_done = a.done & b.done
    lens_a, lens_b = np.diff(a.offsets), np.diff(b.offsets)
    bad_len = (lens_a != lens_b) & both_done
    first_bad: int | None = _first_true(bad_len)
    if first_bad is None:
        ta, tb = a.token_ids, b.token_ids
        tok_sample = a.sample_index()
        diff = (ta != tb) & both_done[tok_sample]
        t = _first_true(diff)
        first_bad = int(tok_sample[t]) if t is not None else None
    if first_bad is not None:
        sid = a.sample_ids[first_bad]
        sha_a, sha_b = a.attrs.get("tokenizer_sha256"), b.attrs.get("tokenizer_sha256")
        if sha_a and sha_b and sha_a != sha_b:
            cause = (
                f"The two checkpoints use different tokenizers "
                f"(tokenizer_sha256 {str(sha_a)[:12]} vs {str(sha_b)[:12]}), "
                f"so the same text gives other ids; token-level comparison needs one tokenizer."
            )
        else:
            cause = (
                "The tokenizers are the same, so the texts differ: most often each model generated its own "
                f"response. Capture B on A's exact tokens with {opt('tokens_from', str(pa))}."
            )
        raise IncompatibleCaptures(
            f"{pa} and {pb} have different token ids for sample {sid!r} (sample #{first_bad}: {lens_a[first_bad]} vs "
            f"{lens_b[first_bad]} tokens). {cause}"
        )
    notes: list[str] = []
    sa, sb = set(a.sites()), set(b.sites())
    if sa != sb:
        only = sorted(sa ^ sb)
        notes.append(f"sites recorded in only one capture are skipped: {', '.join(only)}")
    if not both_done.all():
        notes.append(
            f"using the {int(both_done.sum())} of {a.n_samples} samples captured in both files "
            f"({opt('allow_incomplete')})"
        )
    return notes


class CapturePair:
    """A checked (A, B) pair plus the selection; what an :class:`~driftkit.Analysis` works on."""

    #: the store of the layer the compare engine is in (see :meth:`layer_shared`); None between layers
    layer_store: LayerStore | None = None

    def __init__(
        self,
        a: CaptureReader,
        b: CaptureReader,
        options: CompareOptions | None = None,
        label_a: str | None = None,
        label_b: str | None = None,
        progress: Progress | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.a, self.b = a, b
        self.options = options or CompareOptions()
        self.label_a = label_a or Path(a.path).stem
        self.label_b = label_b or Path(b.path).stem
        self._progress = progress
        self.notes = list(notes or [])
        if self.options.domains:
            present = sorted(set(a.domains))
            unknown = [d for d in self.options.domains if d not in present]
            if unknown:
                raise DriftkitError(
                    f"{opt('domains', ','.join(unknown))} not found in {a.path}; its domains are: {', '.join(present)}."
                )

    # -- samples and tokens ----------------------------------------------------------------------
    @cached_property
    def positions(self) -> str:
        """The positions every analysis of this pair uses: ``--positions`` itself, or for ``auto``
        ``response`` when both captures hold responses (generated or given) and ``all`` otherwise.

        Why ``auto`` is the default: on captures with responses, the question is how the tuned model
        answers; prompt tokens are the same text for every checkpoint and would dilute KL and rank
        summaries toward the base. On raw-text captures there is no response, so all tokens count."""
        chosen = self.options.positions
        if chosen != "auto":
            return chosen
        if self.a.has_responses() and self.b.has_responses():
            self.notes.append("positions: auto -> response (both captures hold responses)")
            return "response"
        return "all"

    @cached_property
    def sample_selected(self) -> np.ndarray:
        """(N,) samples captured in both files and in the selected domains."""
        sel = self.a.done & self.b.done
        if self.options.domains:
            sel &= np.isin(self.a.domains, self.options.domains)
        return sel

    @cached_property
    def domain_names(self) -> list[str]:
        """Selected domains, sorted (index space of :meth:`domain_index`)."""
        return sorted(set(self.a.domains[self.sample_selected]))

    @cached_property
    def token_sample(self) -> np.ndarray:
        return self.a.sample_index()

    @cached_property
    def _sample_domain_idx(self) -> np.ndarray:
        lut = {d: i for i, d in enumerate(self.domain_names)}
        return np.array([lut.get(d, -1) for d in self.a.domains], dtype=np.int64)

    def domain_index(self, token_idx: np.ndarray) -> torch.Tensor:
        """(n,) int64 index into :attr:`domain_names` of the sample owning each token."""
        return torch.from_numpy(self._sample_domain_idx[self.token_sample[token_idx]])

    @property
    def n_samples(self) -> int:
        return int(self.sample_selected.sum())

    @property
    def n_tokens(self) -> int:
        lens = np.diff(self.a.offsets)
        return int(lens[self.sample_selected].sum())

    def mask(self, kind: str = "states", positions: str | None = None, max_tokens: int | None = -1) -> np.ndarray:
        """(T,) token mask for an analysis.

        ``kind="states"``: tokens whose hidden states are compared (``--positions`` picks prompt or
        response tokens). ``kind="predictive"``: positions whose next-token distribution is compared
        (position t predicts token t+1; a sample's last token predicts nothing stored). The
        ``--max-tokens`` subsample is drawn with ``--seed`` so reruns give the same tokens.
        """
        positions = positions or self.positions
        if kind == "states":
            m = self.a.position_mask(positions)
        elif kind == "predictive":
            m = self.a.predictive_mask(positions)
        else:
            raise ValueError(f"unknown mask kind {kind!r}")
        m = m & self.sample_selected[self.token_sample]
        cap = self.options.max_tokens if max_tokens == -1 else max_tokens
        if cap is not None and int(m.sum()) > cap:
            rng = np.random.default_rng(self.options.seed)
            keep = np.sort(rng.choice(np.flatnonzero(m), size=cap, replace=False))
            m = np.zeros_like(m)
            m[keep] = True
        return m

    # -- sites -----------------------------------------------------------------------------------
    def common_sites(self) -> list[str]:
        sb = set(self.b.sites())
        return [s for s in self.a.sites() if s in sb]

    def layer_sites(self, include_embed: bool = True) -> list[tuple[int | str, str]]:
        """``(layer, dataset path)`` for the embedding output (``"embed"``) and each residual layer
        recorded in both captures, restricted to ``--layers`` (model layer indices)."""
        common = self.common_sites()
        layers = sorted(int(s.split(".", 1)[1]) for s in common if s.startswith("residual."))
        if self.options.layers not in (None, "all"):
            from driftkit.registry.probe import parse_layers

            n_layers = int(self.a.attrs.get("num_layers", max(layers, default=-1) + 1))
            wanted = parse_layers(self.options.layers, n_layers)
            missing = [layer for layer in wanted if layer not in layers]
            if missing:
                raise DriftkitError(
                    f"{opt('layers', None)} asks for layers {missing} that are not recorded in both captures; "
                    "recorded: "
                    f"{layers or 'none'}. Pick among those or capture with {opt('layers', 'all')}."
                )
            layers = wanted
            include_embed = False  # an explicit selection names decoder layers only
        out: list[tuple[int | str, str]] = []
        if include_embed and "embed" in common:
            out.append(("embed", S.EMBED_SITE))
        out += [(layer, S.residual_site(layer)) for layer in layers]
        return out

    # -- storage budgets (--store) ----------------------------------------------------------------
    @cached_property
    def layer_rows(self) -> str:
        """What a layer-site row is in both files: ``tokens``, ``pooled`` or ``sampled`` (a sampled file
        pairs with a sampled or per-token one on the positions both hold); ``mixed`` when one file is
        pooled and the other is not (see :meth:`layer_rows_problem`)."""
        kinds = {self.a.layer_rows, self.b.layer_rows}
        if "pooled" in kinds:
            return "pooled" if kinds == {"pooled"} else "mixed"
        return "sampled" if "sampled" in kinds else "tokens"

    @property
    def layer_rows_label(self) -> str:
        """How the layer rows were chosen, for results: ``tokens``, ``pooled`` or ``sampled:K``."""
        if self.layer_rows != "sampled":
            return self.layer_rows
        mode = self.a.store if self.a.layer_rows == "sampled" else self.b.store
        return "sampled:" + mode.split(":", 1)[1]

    def layer_rows_problem(self) -> str | None:
        """Why layer rows of the two files cannot be paired (None when they can)."""
        if self.layer_rows != "mixed":
            return None
        pooled, other = (self.a, self.b) if self.a.layer_rows == "pooled" else (self.b, self.a)
        return (
            f"{pooled.path} stores layer sites pooled per sample (--store pooled) and {other.path} stores them as "
            f"{other.store}; a pooled layer cannot be paired with per-token rows, so capture both with the same "
            "--store"
        )

    @cached_property
    def sampled_mask(self) -> np.ndarray | None:
        """(T,) tokens whose layer rows both files hold when either is ``sample:K`` (None otherwise)."""
        m = None
        for r in (self.a, self.b):
            if r.layer_rows == "sampled":
                held = np.zeros(r.n_tokens, dtype=bool)
                held[r.sampled_positions()] = True
                m = held if m is None else m & held
        return m

    def logits_problem(self) -> str | None:
        """Why next-token distributions cannot be rebuilt for both captures (None when they can):
        both need the final hidden states and an unembedding over the same vocabulary."""
        for p in (S.FINAL_HIDDEN, S.FINAL_UNEMBED):
            if not (self.a.has(p) and self.b.has(p)):
                return f"needs {p} in both captures (capture with --probe final)"
        va, vb = self.a.shape(S.FINAL_UNEMBED)[0], self.b.shape(S.FINAL_UNEMBED)[0]
        if va != vb:
            return (
                f"the vocabularies differ ({va} vs {vb} tokens); distributions over different vocabularies "
                "cannot be compared"
            )
        return None

    # -- streaming -------------------------------------------------------------------------------
    def pooled_means(self, site: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Both files' per-sample means of a pooled layer site over the pair's positions:
        ``((means_a, counts_a), (means_b, counts_b))`` (see :meth:`CaptureReader.pooled_means`)."""
        return self.a.pooled_means(site, self.positions), self.b.pooled_means(site, self.positions)

    def iter_pair(
        self,
        path: str,
        mask: np.ndarray | None = None,
        chunk_tokens: int | None = None,
        dtype: torch.dtype | None = torch.float32,
        buffers: BufferRing | None = None,
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Yield ``(token_indices, rows_a, rows_b)`` of dataset ``path`` from both files, aligned,
        in chunks; memory O(chunk x d). ``dtype=None``: rows in their storage dtype.

        ``buffers``: each chunk is read into the ring's next slot (``buffers.current`` while it is
        yielded; :mod:`driftkit.store.buffers`), so its rows are valid until that slot comes round
        again; without it every chunk is a fresh tensor."""
        step = chunk_tokens or self.options.chunk_tokens
        if path.startswith(S.SITES_GROUP + "/") and self.layer_rows in ("pooled", "mixed"):
            return  # per-sample vectors: analyses read them with pooled_means (nothing per token to stream)
        if path.startswith(S.SITES_GROUP + "/") and self.sampled_mask is not None:
            mask = self.sampled_mask if mask is None else mask & self.sampled_mask
        out_a = out_b = None
        if buffers is not None:  # zip reads A's chunk first: it advances the ring, B's read takes the same slot
            ring = buffers

            def out_a() -> ChunkBuffers:
                return ring.advance()[0]

            def out_b() -> ChunkBuffers:
                assert ring.current is not None
                return ring.current[1]

        it_b = self.b.iter_chunks(path, step, mask, dtype, out_b)
        for (idx, xa), (_idx_b, xb) in zip(self.a.iter_chunks(path, step, mask, dtype, out_a), it_b):
            yield idx, xa, xb

    def next_token_ids(self, token_idx: np.ndarray) -> torch.Tensor:
        """Token ``t+1`` for each position ``t`` (the realised next token)."""
        return torch.from_numpy(self.a.token_ids[np.asarray(token_idx) + 1])

    @cached_property
    def _tokenizer(self) -> Any:
        """The tokenizer of capture A if it can be loaded locally (for readable token strings).

        Why the ``tokenizers`` library first: a comparison only decodes a few dozen ids for its
        report, and importing transformers for that costs about a second (3 s on a busy machine),
        more than some whole analyses. A fast tokenizer's ``tokenizer.json`` decodes the same
        strings through the same Rust decoder; transformers is the fallback for other tokenizers
        and for those that post-process decoded text (``clean_up_tokenization_spaces``)."""
        import json
        import os

        path = self.a.attrs.get("model_path") or self.a.attrs.get("model")
        if not path or not os.path.isdir(str(path)):
            return None
        folder = Path(str(path))
        try:
            cfg = (
                json.loads((folder / "tokenizer_config.json").read_text())
                if (folder / "tokenizer_config.json").exists()
                else {}
            )
            if (folder / "tokenizer.json").exists() and not cfg.get("clean_up_tokenization_spaces"):
                from tokenizers import Tokenizer

                return _RustTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")))
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(path))
        except Exception:  # noqa: BLE001 - strings are a nicety; ids are reported regardless
            return None

    def token_strings(self, ids: list[int] | np.ndarray) -> list[str]:
        """Readable strings for token ids (``<id 123>`` when the tokenizer is not available)."""
        tok = self._tokenizer
        ids = [int(i) for i in ids]
        if tok is None:
            return [f"<id {i}>" for i in ids]
        out = []
        for i in ids:
            s = tok.decode([i])
            if "\ufffd" in s:  # one byte of a multi-byte character: show the raw BPE token instead
                s = str(tok.convert_ids_to_tokens(i))
            out.append(s)
        return out

    # -- the layer pass's shared store ------------------------------------------------------------
    def layer_shared(self, key: Any, factory: Callable[[], Any]) -> Any:
        """The value every consumer of the current layer shares under ``key``: ``factory()`` for the
        first analysis that asks (in ``start_layer``, ``on_layer`` or ``finish_layer``), the same
        object for the others; the next layer starts empty. Include what the value depends on in
        the key (the site is implied; the mask is not: ``driftkit.comparing.engine.mask_key``).

        Why: analyses that accumulate the same thing from a layer's rows (CKA's and similarity's
        d x d sums, per-sample pooled sums) fill one accumulator between them, each chunk added
        once via :meth:`LayerChunk.shared <driftkit.comparing.engine.LayerChunk.shared>`."""
        store = self.layer_store
        if store is None:
            raise RuntimeError(
                f"pair.layer_shared({key!r}) was called outside a layer: the compare engine opens the "
                "per-layer store just before the layer's start_layer hooks and closes it after its "
                "finish_layer hooks; call it from those hooks or on_layer."
            )
        return store.get(key, factory)

    # -- progress --------------------------------------------------------------------------------
    def progress(self, description: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(f"{self.label_b}: {description}", done, total)


class _RustTokenizer:
    """The two calls :meth:`CapturePair.token_strings` makes, on a ``tokenizers.Tokenizer`` (the
    same decoding as transformers' fast tokenizer: special tokens kept, no clean-up)."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def convert_ids_to_tokens(self, i: int) -> str | None:
        return self._tok.id_to_token(i)
