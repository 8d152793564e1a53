"""The capture engine: tokenize (and optionally generate), batch, trace with nnsight, hand arrays to
the background writer.

Data flow for one batch: right-padded ``input_ids`` -> one ``nnsight`` trace that fetches every
probe's sites in the model's execution order -> each probe's ``finalize`` -> per-sample slices
(padding dropped) -> :class:`~driftkit.store.writer.BackgroundWriter`. Nothing is kept across
batches, so memory is flat in the number of prompts.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch

from driftkit import __version__
from driftkit.capturing.batching import padded_batch, token_budget_batches
from driftkit.capturing.config import RESUME_KEYS, TRUNCATE_MODES, CaptureConfig
from driftkit.capturing.distributed import take_share
from driftkit.capturing.lock import CaptureLock, busy_message, holder_of
from driftkit.capturing.pooling import all_sample_positions, parse_store, reduce_packed, store_specs
from driftkit.errors import DriftkitError, opt
from driftkit.models import LoadedModel, load_model, tokenizer_sha256, weights_sha256
from driftkit.prompts import Prompt, encode_prompt, encode_response, load_prompts
from driftkit.registry import load as load_plugin
from driftkit.registry.probe import Batch, ModelLayout, Probe, Site
from driftkit.store import schema as S
from driftkit.store.dtypes import STORAGE_DTYPES
from driftkit.store.reader import CaptureReader
from driftkit.store.shared import SHARED_PATHS, ensure_shared_unembed, link_target
from driftkit.store.writer import ArraySpec, BackgroundWriter, CaptureWriter

Progress = Callable[[str, int, int], None]  # (phase, completed, total)


@dataclass
class SampleSet:
    ids: list[str]
    domains: list[str]
    tokens: list[list[int]]
    prompt_len: list[int]
    content_sha256: str = ""  # hash of the prompt records (or source tokens) the samples came from
    truncated: list[int] | None = field(default=None)  # tokens cut per sample (--truncate), None when not asked


# -- probes -----------------------------------------------------------------------------------------
def make_probes(specs: Sequence[Any], options: dict[str, Any]) -> list[Probe]:
    """Instantiate probes from names / ``file.py:Class`` / instances; each gets the options it declares."""
    probes: list[Probe] = []
    used: set[str] = set()
    for spec in specs:
        if isinstance(spec, Probe):
            probes.append(spec)
            continue
        cls = load_plugin("probe", str(spec))
        mine = {k: v for k, v in options.items() if k in cls.options}
        used.update(mine)
        probes.append(cls(**mine))
    unused = set(options) - used
    if unused and not all(isinstance(s, Probe) for s in specs):
        raise DriftkitError(
            f"No selected probe takes the option(s) {', '.join(sorted(unused))}. Check --probe-opt names with "
            "'driftkit plugins'."
        )
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise DriftkitError(f"A probe is selected twice ({', '.join(names)}); give each probe once.")
    return probes


def module_call_order(model: Any, example_ids: torch.Tensor) -> dict[tuple[str, str], int]:
    """Order of module inputs/outputs in a real forward pass, found once with hooks on a short input.

    nnsight 0.8 requires values to be requested in execution order; this is that order for any
    architecture, including modules called more than once (the first call counts). The forward takes
    the capture's own inputs (:func:`forward_inputs`), so a module that only runs with a KV cache
    cannot enter the order.
    """
    order: dict[tuple[str, str], int] = {}
    handles = []

    def pre(name: str):
        def hook(_m: Any, _a: Any) -> None:
            order.setdefault((name, "input"), len(order))

        return hook

    def post(name: str):
        def hook(_m: Any, _a: Any, _o: Any) -> None:
            order.setdefault((name, "output"), len(order))

        return hook

    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(pre(name)))
        handles.append(mod.register_forward_hook(post(name)))
    ids = example_ids.to(next(model.parameters()).device)
    try:
        with torch.no_grad():  # the same kind of forward as the capture's trace (no KV cache)
            model(**forward_inputs(model, ids, torch.ones_like(ids)))
    finally:
        for h in handles:
            h.remove()
    return order


def _envoy(nn_model: Any, dotted: str) -> Any:
    env = nn_model
    for part in filter(None, dotted.split(".")):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


def forward_inputs(model: Any, input_ids: torch.Tensor, attn: torch.Tensor) -> dict[str, Any]:
    """The keyword inputs of a capture's forward: the batch, and ``use_cache=False`` where the model's
    ``forward`` takes it.

    Why: a capture runs every batch once and never decodes on from it, but a HF causal LM builds a
    KV cache by default, keeping every layer's keys and values until the forward returns: 46 KB per
    token for SmolLM2-135M (189 MB per 4,096-token batch, written by copies the capture never reads),
    and gigabytes per batch of thousands of thinking tokens at 14B. Hidden states and logits do not
    depend on it."""
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attn}
    if "use_cache" in inspect.signature(model.forward).parameters:
        inputs["use_cache"] = False
    return inputs


# -- samples ----------------------------------------------------------------------------------------
def prompts_sha256(prompts: Sequence[Prompt]) -> str:
    """Hash of what shapes the samples: each prompt's id, domain, text/messages and response, in order.

    Stored as the root attr ``prompts_sha256`` so ``--resume`` notices prompts edited in place
    under the same ids (ids alone would let an edit through silently)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(p.as_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _tokens_sha256(ids: Sequence[str], tokens: Sequence[Sequence[int]], prompt_len: Sequence[int]) -> str:
    h = hashlib.sha256()
    for i, t, n in zip(ids, tokens, prompt_len):
        h.update(json.dumps([i, n, list(t)]).encode())
    return h.hexdigest()


def max_positions(model: Any) -> int | None:
    """The model's maximum sequence length from its config (max_position_embeddings / n_positions), or None."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for name in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def fit_lengths(
    ids: Sequence[str],
    prompts: list[list[int]],
    responses: list[list[int]],
    room_for: Sequence[int],
    limit: int | None,
    truncate: str | None,
) -> list[int]:
    """Check every sample against the model's ``limit`` positions before any compute; cut in place with ``truncate``.

    ``room_for[i]``: tokens still to be generated after sample i's prompt (``--max-new-tokens`` when the
    model answers it, else 0). Without ``truncate`` an over-long sample is refused (DriftkitError naming
    it, its length and the limit); with ``left`` the oldest tokens go, with ``right`` the newest. Returns
    the tokens cut per sample.
    """
    cut = [0] * len(ids)
    if limit is None:
        return cut
    need = [len(p) + len(r) + g for p, r, g in zip(prompts, responses, room_for)]
    over = [i for i, n in enumerate(need) if n > limit]
    if not over:
        return cut

    def what(i: int) -> str:
        gen = f" = prompt {len(prompts[i])} + up to {room_for[i]} generated" if room_for[i] else ""
        return f"{ids[i]!r} ({need[i]} tokens{gen})"

    if truncate is None:
        names = ", ".join(what(i) for i in over[:5]) + (f" and {len(over) - 5} more" if len(over) > 5 else "")
        raise DriftkitError(
            f"{len(over)} sample(s) are longer than the model's maximum of {limit} positions: {names}. Nothing was "
            "computed "
            "and no file was written. Shorten or drop them, lower --max-new-tokens, or pass --truncate left|right "
            "to cut "
            f"them to {limit} tokens (the file records how many tokens each sample lost in samples/truncated)."
        )
    if truncate not in TRUNCATE_MODES:
        raise DriftkitError(
            f"Unknown --truncate {truncate!r}; use left (drop the oldest tokens) or right (the newest)."
        )
    for i in over:
        room = limit - room_for[i]
        if room <= 0:
            raise DriftkitError(
                f"--max-new-tokens {room_for[i]} leaves no room for a prompt in the model's {limit} "
                f"positions (sample {ids[i]!r}); lower --max-new-tokens below {limit}."
            )
        seq, P = prompts[i] + responses[i], len(prompts[i])
        cut[i] = len(seq) - room
        if truncate == "right":
            seq, P = seq[:room], min(P, room)
        else:
            seq, P = seq[cut[i] :], max(0, P - cut[i])
        prompts[i], responses[i] = seq[:P], seq[P:]
    return cut


def _samples_from_capture(path: str | Path, tok_hash: str) -> SampleSet:
    with CaptureReader(path) as r:
        other = str(r.attrs.get("tokenizer_sha256", ""))
        if other != tok_hash:
            raise DriftkitError(
                f"--tokens-from {path} was made with another tokenizer (model {r.model}, tokenizer hash {other[:12]}… "
                f"vs this model's {tok_hash[:12]}…). Its token ids mean different text for this model; score text with "
                f"a model that shares the tokenizer, or capture both from the same prompts instead."
            )
        ids = [str(x) for x in r.sample_ids]
        tokens = [r.sample_tokens(i).tolist() for i in range(r.n_samples)]
        plen = [int(x) for x in r.prompt_len]
        return SampleSet(ids, [str(d) for d in r.domains], tokens, plen, _tokens_sha256(ids, tokens, plen))


def build_samples(cfg: CaptureConfig, loaded: LoadedModel, progress: Progress | None = None) -> SampleSet:
    """Token ids of every sample: from another capture, or prompts (+ given or generated responses)."""
    limit = max_positions(loaded.model)
    if cfg.tokens_from:
        s = _samples_from_capture(cfg.tokens_from, tokenizer_sha256(loaded.tokenizer))
        ps = [t[:n] for t, n in zip(s.tokens, s.prompt_len)]
        rs = [t[n:] for t, n in zip(s.tokens, s.prompt_len)]
        cut = fit_lengths(s.ids, ps, rs, [0] * len(ps), limit, cfg.truncate)
        if cfg.shard:  # this rank's contiguous share of the source's samples (capturing/distributed.py)
            budgets = [len(a) + len(b) for a, b in zip(ps, rs)]
            s.ids, s.domains, ps, rs, cut = take_share(cfg.shard, budgets, s.ids, s.domains, ps, rs, cut)
        return SampleSet(
            s.ids,
            s.domains,
            [a + b for a, b in zip(ps, rs)],
            [len(a) for a in ps],
            s.content_sha256,
            cut if cfg.truncate else None,
        )
    if cfg.prompts is None:
        raise DriftkitError(
            "No prompts given. Pass --prompts FILE.jsonl, --prompts bundled:general-mix, or --tokens-from CAPTURE.h5."
        )
    prompts = load_prompts(cfg.prompts, limit=cfg.limit, seed=cfg.prompt_seed)
    tok = loaded.tokenizer
    prompt_ids = [encode_prompt(tok, p, cfg.chat) for p in prompts]
    responses: list[list[int]] = [
        encode_response(tok, p.response, cfg.chat) if p.response is not None else [] for p in prompts
    ]
    empty = [p.id for p, ids in zip(prompts, prompt_ids) if not ids]
    if empty:
        raise DriftkitError(f"Prompt {empty[0]!r} tokenizes to nothing; give it some text.")
    room = [cfg.max_new_tokens if cfg.generate and p.response is None else 0 for p in prompts]
    cut = fit_lengths([p.id for p in prompts], prompt_ids, responses, room, limit, cfg.truncate)
    content_sha256 = prompts_sha256(prompts)  # of the whole set, in every shard too (resume compares it)
    if cfg.shard:  # this rank's contiguous share, by token budget (capturing/distributed.py)
        budgets = [len(a) + len(b) + g for a, b, g in zip(prompt_ids, responses, room)]
        prompts, prompt_ids, responses, room, cut = take_share(
            cfg.shard, budgets, prompts, prompt_ids, responses, room, cut
        )
    if cfg.generate:
        from driftkit.generation_backends import make_backend, release

        todo = [i for i, p in enumerate(prompts) if p.response is None]
        gen = make_backend(
            cfg.backend, loaded, batch_size=cfg.gen_batch_size, seed=cfg.seed, trust_remote_code=cfg.trust_remote_code
        )
        done = [0.0, 0]  # samples, tokens

        def tick(n: float, tokens: int = 0) -> None:
            done[0] += n
            done[1] += tokens
            if progress:
                progress("generate", done[0], len(todo))
                progress("generate tokens", done[1], len(todo) * cfg.max_new_tokens)  # of the budget

        outs = gen.generate(
            [prompt_ids[i] for i in todo], cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed, progress=tick
        )
        release(gen)  # the forward passes need the memory a vLLM engine holds
        if progress:  # rows that stopped at EOS used less than the budget: close the line at what was made
            progress("generate tokens", done[1], done[1])
        for i, o in zip(todo, outs):
            responses[i] = o
    return SampleSet(
        ids=[p.id for p in prompts],
        domains=[p.domain for p in prompts],
        tokens=[a + b for a, b in zip(prompt_ids, responses)],
        prompt_len=[len(a) for a in prompt_ids],
        content_sha256=content_sha256,
        truncated=cut if cfg.truncate else None,
    )


def pack_batch(
    outputs: dict[str, torch.Tensor],
    batch_idx: Sequence[int],
    lengths: Sequence[int],
    seq_len: int,
    keep: Any,
    finish: Callable[[str, torch.Tensor, list[int]], dict[str, torch.Tensor]] | None = None,
) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Drop the padding of a batch's ``(B, S, ...)`` outputs and concatenate the samples' rows in file
    order (increasing sample index), one ``index_select`` per array (none when the batch has no
    padding and is already in file order: the rows are the array itself).

    Why: the writer then stores each array with one HDF5 write per batch (a union of row ranges)
    instead of one write per sample and array, and converts dtypes once per array. Returns the
    samples in file order and the packed arrays (only paths in ``keep``). ``finish(path, rows,
    samples in file order)``, when given, turns each packed array into what is kept of it (the store
    mode's reduction, the copy to the host) before the next one is packed, so a GPU holds one packed
    copy at a time, not one per site."""
    order = sorted(range(len(batch_idx)), key=lambda r: batch_idx[r])
    whole = order == list(range(len(order))) and all(lengths[i] == seq_len for i in batch_idx)
    rows = None if whole else torch.cat([torch.arange(lengths[batch_idx[r]]) + r * seq_len for r in order])
    in_order = [batch_idx[r] for r in order]
    packed: dict[str, torch.Tensor] = {}
    for path, t in outputs.items():
        if path not in keep:
            continue
        if tuple(t.shape[:2]) != (len(batch_idx), seq_len):
            raise DriftkitError(
                f"A probe returned {path} with shape {tuple(t.shape)}; finalize must return "
                f"(batch, seq, ...) = ({len(batch_idx)}, {seq_len}, ...) arrays."
            )
        flat = t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])
        kept = flat if rows is None else flat.index_select(0, rows.to(flat.device))  # on the model's device
        packed.update(finish(path, kept, in_order) if finish is not None else {path: kept})
    return in_order, packed


# -- the engine -------------------------------------------------------------------------------------
def _check_backend(cfg: CaptureConfig) -> None:
    """An unknown ``--backend``, or one given without ``--generate``, fails before the model loads."""
    from driftkit.generation_backends import BACKENDS

    if cfg.backend not in BACKENDS:
        raise DriftkitError(
            f"Unknown {opt('backend', cfg.backend)}; use {' or '.join(sorted(BACKENDS))} (hf is the default)."
        )
    if cfg.backend != "hf" and not cfg.generate:
        raise DriftkitError(
            f"{opt('backend', cfg.backend)} picks the engine that generates responses, so it needs "
            f"{opt('generate')}; without it the capture scores the given prompts (and responses) only."
        )
    if cfg.generate:
        from driftkit.generation_backends import check_available

        check_available(cfg.backend)


class CaptureEngine:
    """Runs one capture. Use :func:`capture` unless you need the pieces (tests, benchmarks)."""

    def __init__(self, cfg: CaptureConfig, loaded: LoadedModel | None = None, progress: Progress | None = None) -> None:
        if cfg.storage_dtype not in STORAGE_DTYPES:
            raise DriftkitError(f"Unknown {opt('storage_dtype', cfg.storage_dtype)}; use float16 or bfloat16.")
        if cfg.overwrite and cfg.resume:
            raise DriftkitError(f"{opt('overwrite')} and {opt('resume')} contradict each other; pick one.")
        if cfg.max_batch_tokens <= 0:
            raise DriftkitError(f"{opt('max_batch_tokens', None)} must be positive, got {cfg.max_batch_tokens}.")
        if cfg.truncate is not None and cfg.truncate not in TRUNCATE_MODES:
            raise DriftkitError(
                f"Unknown {opt('truncate', cfg.truncate)}; use left (drop the oldest tokens) or right (the newest)."
            )
        _check_backend(cfg)
        self.store_mode = parse_store(cfg.store)  # --store: what the layer sites keep (pooling.py); before the load
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = progress
        self.opened = False  # True once the output file was created or reopened (an interrupt then leaves a file)
        holder = holder_of(self.out)  # checked first: a file being written is neither "existing" nor "crashed"
        if holder is not None:
            raise DriftkitError(busy_message(self.out, holder))
        if self.out.exists() and not (cfg.overwrite or cfg.resume):
            raise DriftkitError(
                f"{self.out} already exists. Pass {opt('overwrite')} to replace it, or {opt('resume')} to "
                f"continue an interrupted capture."
            )
        if self.out.is_dir():
            raise DriftkitError(
                f"{opt('out', str(self.out))} is a folder; give a file name like {self.out / 'capture.h5'}."
            )
        options = dict(cfg.probe_options)
        if cfg.layers is not None:
            options["layers"] = cfg.layers
        self.probes = make_probes(cfg.probes, options)
        self.loaded = loaded or load_model(
            cfg.model,
            cfg.dtype,
            cfg.device,
            cfg.trust_remote_code,
            cfg.revision,
            device_map=cfg.device_map,
            progress=(lambda m: progress("convert", 0, 1)) if progress else None,
        )
        self.layout = ModelLayout.of(self.loaded.model)
        self.sites: list[tuple[Probe, Site]] = [(p, s) for p in self.probes for s in p.sites(self.layout)]
        keys = [s.key for _, s in self.sites]
        if len(set(keys)) != len(keys):
            raise DriftkitError(
                f"Two probes record the same site ({', '.join(k for k in keys if keys.count(k) > 1)}); drop one of "
                "them."
            )
        self.specs = [
            ArraySpec(o.path, tuple(o.shape), o.dtype, tuple(o.attrs.items()))
            for p in self.probes
            for o in p.outputs(self.layout)
        ]
        self.specs, self.layer_paths = store_specs(self.store_mode, self.specs)
        self.timing: dict[str, float] = {"forward": 0.0, "finalize": 0.0, "queue_wait": 0.0}

    # ---------------------------------------------------------------------------------------------
    def _attrs(self) -> dict[str, Any]:
        cfg, lm = self.cfg, self.loaded
        return {
            "driftkit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": cfg.model,
            "model_path": lm.path,
            "model_revision": cfg.revision or "",
            "weights_sha256": self.weights_sha256,
            "tokenizer_sha256": tokenizer_sha256(lm.tokenizer),
            "dtype": str(lm.dtype).replace("torch.", ""),
            "device": str(lm.device),
            "config_json": json.dumps(
                {**cfg.as_json(), "probe_details": [p.describe() for p in self.probes]}, default=str
            ),
            "truncate": cfg.truncate or "",
            "num_layers": self.layout.num_layers,
            "hidden_size": self.layout.hidden_size,
            "vocab_size": self.layout.vocab_size,
        }

    def _content_sha256(self) -> str:
        """The prompts' (or source capture's tokens') content hash, without tokenizing or generating."""
        cfg = self.cfg
        if cfg.tokens_from:
            with CaptureReader(cfg.tokens_from) as r:
                ids = [str(x) for x in r.sample_ids]
                tokens = [r.sample_tokens(i).tolist() for i in range(r.n_samples)]
                return _tokens_sha256(ids, tokens, [int(x) for x in r.prompt_len])
        if cfg.prompts is None:
            return ""
        return prompts_sha256(load_prompts(cfg.prompts, limit=cfg.limit, seed=cfg.prompt_seed))

    def _resume_diffs(self, reader: CaptureReader) -> list[str]:
        """Every setting that shapes the file and differs from the file's: 'name: file X, now Y'.

        Beyond the plain config keys: each probe's resolved options (``--layers``, ``--probe-opt``),
        the set of datasets they write, the prompts' content hash, the weights hash, the model's
        compute dtype (final/hidden is stored at it) and the tokenizer."""
        old, now = reader.config, self.cfg.as_json()
        diffs = [(k, old.get(k), now.get(k)) for k in RESUME_KEYS if str(old.get(k)) != str(now.get(k))]
        norm = lambda x: json.dumps(x, sort_keys=True, default=str)  # noqa: E731
        old_p = {d.get("name"): d.get("options", {}) for d in old.get("probe_details") or []}
        new_p = {p.name: p.describe()["options"] for p in self.probes}
        for name in sorted(set(old_p) | set(new_p)):
            a, b = old_p.get(name), new_p.get(name)
            if a is None or b is None:
                continue  # a probe added or dropped shows in 'probes' above
            for key in sorted(set(a) | set(b)):
                if norm(a.get(key)) != norm(b.get(key)):
                    diffs.append((f"{name} option {key}", a.get(key), b.get(key)))
        if S.SAMPLES_SITES_WRITTEN in reader.h5:
            had = json.loads(reader.h5[S.SAMPLES_SITES_WRITTEN].attrs["sites"])
            want = [s.path for s in self.specs]
            if sorted(had) != sorted(want):
                gone, new = sorted(set(had) - set(want)), sorted(set(want) - set(had))
                more = lambda xs: ", ".join(xs[:4]) + (" …" if len(xs) > 4 else "")  # noqa: E731
                change = [f"would not write {more(gone)}"] if gone else []
                change += [f"would add {more(new)}"] if new else []
                diffs.append(("datasets", len(had), f"{len(want)} ({'; '.join(change)})"))
        old_hash = str(reader.attrs.get("prompts_sha256", ""))
        if not old_hash:
            raise DriftkitError(
                f"Cannot resume {self.out}: it was made by a driftkit version that did not record the prompts' content "
                "hash (prompts_sha256), so an edit to the prompt texts could not be detected. Start over with "
                f"{opt('overwrite')}."
            )
        new_hash = self._content_sha256()
        if old_hash != new_hash:
            diffs.append(("prompt contents (sha256)", old_hash[:12], new_hash[:12]))
        model_ids = (
            ("weights_sha256", self.weights_sha256),
            ("tokenizer_sha256", tokenizer_sha256(self.loaded.tokenizer)),
        )
        for key, new in model_ids:
            if str(reader.attrs.get(key, "")) != new:
                diffs.append((f"model {key}", str(reader.attrs.get(key, ""))[:12], new[:12]))
        dt = str(self.loaded.dtype).replace("torch.", "")
        if str(reader.attrs.get("dtype")) != dt:
            diffs.append(("model dtype", reader.attrs.get("dtype"), dt))
        return [f"{k}: file {a!r}, now {b!r}" for k, a, b in diffs]

    def _open(self) -> tuple[CaptureWriter, SampleSet, list[Any]]:
        """Create (or reopen for --resume) the file; returns the writer, the samples and the static
        arrays still to write (the caller queues them on the writer thread)."""
        cfg = self.cfg
        if cfg.resume and self.out.exists():
            try:
                reader = CaptureReader(self.out, allow_incomplete=True)
            except DriftkitError as exc:
                raise DriftkitError(f"Cannot resume {self.out}: {exc} Start over with {opt('overwrite')}.") from exc
            with reader:
                diffs = self._resume_diffs(reader)
                if diffs:
                    raise DriftkitError(
                        f"Cannot resume {self.out}: these settings differ from the ones it was made with: "
                        f"{'; '.join(diffs)}. "
                        "Resuming would leave holes or mix two captures in one file. Either rerun with "
                        f"{opt('resume')} and the "
                        f"original settings (see 'driftkit inspect {self.out}'), or pass {opt('overwrite')} to start "
                        "over "
                        "with the new ones."
                    )
                samples = SampleSet(
                    [str(x) for x in reader.sample_ids],
                    [str(d) for d in reader.domains],
                    [reader.sample_tokens(i).tolist() for i in range(reader.n_samples)],
                    [int(x) for x in reader.prompt_len],
                )
            writer = CaptureWriter.open_resume(self.out, self.specs, cfg.storage_dtype)
        else:
            from driftkit.capturing.sizing import check_space_before_generating, once_per_file_bytes

            # once-per-file arrays count too; with --shared-unembed they go to that file instead
            static = 0 if cfg.shared_unembed else once_per_file_bytes(self.probes, self.layout)
            if cfg.generate and cfg.compression in (None, "none"):
                check_space_before_generating(cfg, self.loaded.tokenizer, self.specs, self.out, static)
            samples = build_samples(cfg, self.loaded, self.progress)
            if self.out.exists():
                self.out.unlink()  # --overwrite (checked in __init__; the lock says nobody else writes it)
            attrs = {**self._attrs(), "prompts_sha256": samples.content_sha256, "store": self.store_mode.label}
            writer = CaptureWriter.create(
                self.out,
                attrs,
                samples.ids,
                samples.domains,
                samples.tokens,
                samples.prompt_len,
                self.specs,
                cfg.storage_dtype,
                cfg.compression,
                truncated=samples.truncated,
                sampled_positions=(
                    all_sample_positions(samples.tokens, self.store_mode.k)
                    if self.store_mode.kind == "sampled"
                    else None
                ),
                static_bytes=static,
            )
        self.opened = True
        # Static arrays are written when missing, also on resume: a run killed before its first flush
        # may have lost them. Existing ones are left alone (rewriting would touch HDF5 metadata).
        statics = [st for p in self.probes for st in p.static(self.layout)]
        shared = self._shared_unembed(statics)
        pending = []
        for st in statics:
            if shared is not None and st.path in SHARED_PATHS:
                writer.link_static(st.path, link_target(self.out, shared))
            elif st.path not in writer.f:
                pending.append(st)
        writer.flush()
        return writer, samples, pending

    @cached_property
    def weights_sha256(self) -> str:
        """The checkpoint's weights hash, computed once per capture (it reads up to 32 MiB per shard)
        and used by the file's attrs, the resume check and the shared unembedding check."""
        return weights_sha256(self.loaded.path)

    def _shared_unembed(self, statics: list[Any]) -> Path | None:
        """The shared unembedding file (checked or written) when ``shared_unembed`` is set."""
        if not self.cfg.shared_unembed or not any(st.path in SHARED_PATHS for st in statics):
            return None
        return ensure_shared_unembed(self.cfg.shared_unembed, statics, self.weights_sha256, self.cfg.model)

    def _stored(
        self, path: str, rows: torch.Tensor, in_order: list[int], samples: SampleSet
    ) -> dict[str, torch.Tensor]:
        """What the file keeps of one packed array: the store mode's reduction (pooled: (samples, 3, d)
        per layer) on the model's device, then the one copy to the host."""
        kept = reduce_packed(
            self.store_mode,
            {path: rows},
            in_order,
            samples.tokens,
            samples.prompt_len,
            self.cfg.storage_dtype,
            self.layer_paths,
        )
        return {k: v.cpu() for k, v in kept.items()}

    def ordered_sites(self, example_ids: torch.Tensor) -> list[tuple[Probe, Site]]:
        """The probes' sites in the model's own call order (what nnsight needs within one trace), found
        with forward hooks on ``example_ids`` (1, n); a site whose module the model never calls is an error."""
        order = module_call_order(self.loaded.model, example_ids)
        missing = [s for _, s in self.sites if (s.module, s.io) not in order]
        if missing:
            raise DriftkitError(
                f"Probe site {missing[0].key} names module {missing[0].module!r} ({missing[0].io}), which the "
                "model never calls."
            )
        return sorted(self.sites, key=lambda ps: order[(ps[1].module, ps[1].io)])

    def _forward(
        self, nn_model: Any, ordered: list[tuple[Probe, Site]], input_ids: torch.Tensor, attn: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        import nnsight

        envs = [(_envoy(nn_model, s.module), s) for _, s in ordered]
        with torch.no_grad():
            with nn_model.trace(forward_inputs(self.loaded.model, input_ids, attn)):
                saved = nnsight.save([s.select(env.output if s.io == "output" else env.input) for env, s in envs])
        return {s.key: v for (_, s), v in zip(ordered, saved)}

    def run(self) -> Path:
        from nnsight import TransformersModel

        lock = CaptureLock(self.out).acquire()
        try:
            return self._run_locked(nn_model_cls=TransformersModel)
        finally:
            lock.release()

    def _run_locked(self, nn_model_cls: Any) -> Path:
        """The capture loop in one place (long on purpose): batches, the nnsight forward, probe finalize,
        the first-batch logit check and the hand-off to the writer thread must share one try/finally so
        that a crash keeps every batch already handed over."""
        cfg = self.cfg
        writer, samples, statics = self._open()
        lengths = [len(t) for t in samples.tokens]
        todo = [i for i in range(len(lengths)) if not writer.done[i]]
        total_tokens = sum(lengths)
        done_tokens = total_tokens - sum(lengths[i] for i in todo)
        model = self.loaded.model
        device = next(model.parameters()).device
        pad_id = self.loaded.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else int(pad_id)

        if todo:
            ordered = self.ordered_sites(torch.as_tensor(samples.tokens[todo[0]][:8], dtype=torch.long)[None])
            nn_model = nn_model_cls(model, tokenizer=self.loaded.tokenizer)
        keep = writer.specs.keys() | self.layer_paths  # the arrays a batch hands to the writer
        stored = partial(self._stored, samples=samples)
        bg = BackgroundWriter(writer)
        for st in statics:  # written while the first batch runs
            bg.run(partial(writer.write_static, st.path, st.array, st.dtype, st.attrs))
        checked = not cfg.check_logits
        if self.progress:  # start the clock (rate, ETA) before the first batch, not after it
            self.progress("capture", done_tokens, total_tokens)
        try:
            for batch_idx in token_budget_batches(lengths, todo, cfg.max_batch_tokens):
                ids, attn = padded_batch(samples.tokens, batch_idx, pad_id)
                S_ = ids.shape[1]
                t0 = time.perf_counter()
                values = self._forward(nn_model, ordered, ids.to(device), attn.to(device))
                # kept on the model's device: the probes reduce them there (the final probe's (B, S, V)
                # logits never leave a GPU), and so do pack_batch and the store mode below
                values = {k: v.detach() for k, v in values.items()}
                t1 = time.perf_counter()
                batch = Batch(ids, attn, [lengths[i] for i in batch_idx])
                outputs: dict[str, torch.Tensor] = {}
                for probe in self.probes:
                    mine = {s.key: values[s.key] for p, s in self.sites if p is probe}
                    if not checked:
                        probe.check(mine, batch, self.layout, cfg.storage_dtype)
                    outputs.update(probe.finalize(mine, batch))
                checked = True
                values = mine = None  # frees the logits (what the probes keep is in outputs)
                file_order, packed = pack_batch(outputs, batch_idx, lengths, S_, keep, stored)
                del outputs
                t2 = time.perf_counter()
                bg.put_packed(file_order, packed)
                self.timing["queue_wait"] += time.perf_counter() - t2
                self.timing["forward"] += t1 - t0
                self.timing["finalize"] += t2 - t1
                done_tokens += sum(lengths[i] for i in batch_idx)
                if self.progress:
                    self.progress("capture", done_tokens, total_tokens)
            bg.close()
            writer.finalize()
        except BaseException:
            try:
                bg.close()  # keep every batch that was already handed over
            except BaseException:
                pass
            writer.close()
            raise
        writer.close()
        return self.out


def capture(cfg: CaptureConfig, loaded: LoadedModel | None = None, progress: Progress | None = None) -> Path:
    """Run a capture described by ``cfg`` and return the path of the complete HDF5 file."""
    return CaptureEngine(cfg, loaded, progress).run()
