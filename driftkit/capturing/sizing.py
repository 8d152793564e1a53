"""Know the cost before spending it: the size of a capture from ``config.json`` and the tokenizer alone.

Why without weights: the question "will this study fit on the disk?" comes before the 28 GB
download of a 14B checkpoint. The model is built on PyTorch's ``meta`` device (shapes, no memory,
no weights), so every probe declares its arrays exactly as in a real capture; tokens are counted
with the model's own tokenizer (plus the ``--max-new-tokens`` budget per prompt with ``--generate``).

What :func:`estimate` returns (``driftkit capture --dry-run --json``):

- ``tokens``, ``samples``; ``bytes_per_token`` = the sum of ``per_site`` (bytes per token of every
  per-token array, ``tokens/ids`` included);
- ``bytes_per_sample`` = the sum of ``per_site_per_sample``: the arrays stored per sample by
  ``--store pooled`` (3 float32 vectors per layer site) or ``sample:K`` (K rows per layer site plus
  their int64 position; a sample shorter than K stores fewer rows);
- ``static_bytes``: arrays written once per file (the unembedding);
- ``total_bytes`` = tokens x bytes_per_token + the per-sample arrays actually stored (pooled:
  samples x bytes_per_sample; sample:K: the rows kept, at most K per sample) + static_bytes. The
  small sample index (ids, offsets, flags) is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from driftkit.capturing.config import CaptureConfig
from driftkit.capturing.pooling import parse_store, store_specs
from driftkit.errors import DriftkitError, opt
from driftkit.store.writer import ArraySpec, check_free_space, spec_row_bytes


def config_source(spec: str) -> str:
    """What ``from_pretrained`` should read for config + tokenizer: a local folder needs only
    ``config.json`` (no weights), a bundled name its cached folder, anything else is a hub id."""
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DriftkitError(f"Model folder {spec} has no config.json; --dry-run needs at least that file.")
        return str(p)
    from driftkit.models import resolve_model_path

    return resolve_model_path(spec)


def meta_model(source: str, dtype: str, device: str, trust_remote_code: bool = False) -> Any:
    """The causal LM built from its config on the ``meta`` device at the dtype a capture would use."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from driftkit.models import pick_device, pick_dtype

    dt = pick_dtype(dtype, pick_device(device))
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DriftkitError(
            f"Could not read the config of {source!r} ({str(exc).splitlines()[0]}); give a folder with config.json "
            "and a tokenizer, or a reachable hub id."
        ) from exc
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dt, trust_remote_code=trust_remote_code)


def sample_lengths(cfg: CaptureConfig, tokenizer: Any) -> list[int]:
    """Tokens per sample as the capture would hold them: prompt (+ given response) counted with the
    tokenizer, plus ``max_new_tokens`` for each prompt the model will answer (an upper bound)."""
    from driftkit.prompts import encode_prompt, encode_response, load_prompts

    if cfg.tokens_from:
        from driftkit.store.reader import CaptureReader

        with CaptureReader(cfg.tokens_from) as r:
            return [int(x) for x in (r.offsets[1:] - r.offsets[:-1])]
    if cfg.prompts is None:
        raise DriftkitError(f"No prompts given. Pass {opt('prompts', 'FILE.jsonl')} or {opt('tokens_from', 'X.h5')}.")
    out = []
    for p in load_prompts(cfg.prompts, limit=cfg.limit, seed=cfg.prompt_seed):
        n = len(encode_prompt(tokenizer, p, cfg.chat))
        if p.response is not None:
            n += len(encode_response(tokenizer, p.response, cfg.chat))
        elif cfg.generate:
            n += cfg.max_new_tokens
        out.append(n)
    return out


def _sampled_rows(lengths: Sequence[int], k: int) -> int:
    return int(sum(min(k, n) for n in lengths))


def check_space_before_generating(
    cfg: CaptureConfig, tokenizer: Any, specs: Sequence[ArraySpec], out: Path, static_bytes: int = 0
) -> None:
    """Refuse a ``--generate`` capture that cannot fit before generating anything (the writer checks the
    exact size again once the responses exist). The estimate assumes every response uses the whole
    budget, so the message says it is an upper bound."""
    lengths = sample_lengths(cfg, tokenizer)
    mode = parse_store(cfg.store)
    n_sampled = _sampled_rows(lengths, mode.k) if mode.kind == "sampled" else 0
    note = f", if every response uses all {cfg.max_new_tokens} --max-new-tokens"
    check_free_space(
        out,
        sum(lengths),
        specs,
        cfg.storage_dtype,
        len(lengths),
        n_sampled,
        upper_bound=note,
        static_bytes=static_bytes,
    )


def once_per_file_bytes(probes: Sequence[Any], layout: Any) -> int:
    """Bytes of the arrays the probes write once per file (the unembedding, its bias, the final norm)."""
    total = 0
    for p in probes:
        for st in p.static(layout):
            a = st.array
            total += int(a.numel() * a.element_size()) if isinstance(a, torch.Tensor) else int(getattr(a, "nbytes", 0))
    return total


def estimate(cfg: CaptureConfig) -> dict[str, Any]:
    """The size of the capture ``cfg`` describes, without loading weights (see the module docstring)."""
    from transformers import AutoTokenizer

    from driftkit.capturing.engine import make_probes
    from driftkit.registry.probe import ModelLayout

    mode = parse_store(cfg.store)
    source = config_source(cfg.model)
    model = meta_model(source, cfg.dtype, cfg.device, cfg.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DriftkitError(
            f"Could not load the tokenizer of {cfg.model!r} ({str(exc).splitlines()[0]}); --dry-run counts tokens "
            "with the model's own tokenizer, so the folder needs its tokenizer files next to config.json."
        ) from exc
    layout = ModelLayout.of(model)
    options = dict(cfg.probe_options)
    if cfg.layers is not None:
        options["layers"] = cfg.layers
    probes = make_probes(cfg.probes, options)
    raw = [
        ArraySpec(o.path, tuple(o.shape), o.dtype, tuple(o.attrs.items())) for p in probes for o in p.outputs(layout)
    ]
    specs, _ = store_specs(mode, raw)
    lengths = sample_lengths(cfg, tokenizer)
    tokens, n = int(sum(lengths)), len(lengths)
    per_site = {"tokens/ids": 4}
    per_sample: dict[str, int] = {}
    for s in specs:
        b = spec_row_bytes(s, cfg.storage_dtype)
        if s.rows == "token":
            per_site[s.path] = b
        elif s.rows == "sample":
            per_sample[s.path] = b
        else:
            per_sample[s.path] = mode.k * b
    if mode.kind == "sampled" and per_sample:
        per_sample["sites/positions"] = mode.k * 8
    static = once_per_file_bytes(probes, layout)
    bpt, bps = sum(per_site.values()), sum(per_sample.values())
    if mode.kind == "sampled":
        sampled = _sampled_rows(lengths, mode.k)
        sample_part = sampled * (bps // mode.k) if mode.k else 0
    else:
        sampled, sample_part = 0, n * bps
    return {
        "model": cfg.model,
        "store": mode.label,
        "storage_dtype": cfg.storage_dtype,
        "model_dtype": str(next(iter(model.parameters())).dtype).replace("torch.", ""),
        "num_layers": layout.num_layers,
        "hidden_size": layout.hidden_size,
        "vocab_size": layout.vocab_size,
        "samples": n,
        "tokens": tokens,
        "sampled_rows": sampled,
        "bytes_per_token": bpt,
        "per_site": per_site,
        "bytes_per_sample": bps,
        "per_site_per_sample": per_sample,
        "static_bytes": static,
        "total_bytes": tokens * bpt + sample_part + static,
    }


def human(n: float) -> str:
    """Bytes in the nearest binary unit (KiB, MiB, GiB, TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
