"""Capture configuration: everything that decides what a capture file holds.

It is stored whole in the file (``config_json``) so a file documents itself, and ``--resume``
refuses to continue a file made with different settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: fields that must match for --resume to continue a file (the rest are run-time knobs)
#: (probes' resolved options, prompt contents, weights and compute dtype are compared too: see engine._resume_diffs)
RESUME_KEYS = (
    "model",
    "prompts",
    "probes",
    "chat",
    "generate",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "tokens_from",
    "storage_dtype",
    "limit",
    "prompt_seed",
    "revision",
    "compression",
    "truncate",
    "shared_unembed",
    "store",
    "shard",
)
TRUNCATE_MODES = ("left", "right")


@dataclass
class CaptureConfig:
    model: str
    out: str | Path
    prompts: Any = None  # JSONL path, bundled:NAME, hf:..., or a list of dicts
    probes: list[Any] = field(default_factory=lambda: ["residual", "final"])  # names, file.py:Class, or Probe instances
    probe_options: dict[str, Any] = field(default_factory=dict)  # option -> value, given to probes that declare it
    layers: str | None = None  # shortcut for probe_options["layers"]
    chat: bool = False
    generate: bool = False
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    tokens_from: str | Path | None = None
    limit: int | None = None
    prompt_seed: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    storage_dtype: str = "float16"
    compression: str | None = None
    max_batch_tokens: int = 4096
    gen_batch_size: int = 32  # decoding is memory-bound: 32 rows cost ~1.4x 8 rows per step
    trust_remote_code: bool = False
    revision: str | None = None
    overwrite: bool = False
    resume: bool = False
    shared_unembed: str | Path | None = None  # one unembedding file shared by captures of a checkpoint
    check_logits: bool = True
    truncate: str | None = None  # left | right: cut samples longer than the model's positions instead of refusing
    store: str = "tokens"  # layer sites: tokens | pooled | sample:K (driftkit.capturing.pooling)
    backend: str = "hf"  # generation back-end for --generate: hf | vllm (driftkit.generation_backends)
    device_map: Any = None  # "auto" (or a dict): accelerate places the layers over the devices (models bigger than one)
    shard: list[int] | None = None  # [rank, world]: capture only this rank's share (capturing/distributed.py)

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["tokens_from"] = str(self.tokens_from) if self.tokens_from else None
        d["shared_unembed"] = str(self.shared_unembed) if self.shared_unembed else None
        if not isinstance(self.prompts, (str, Path, type(None))):
            d["prompts"] = f"<{len(list(self.prompts))} prompts given in Python>"
        else:
            d["prompts"] = str(self.prompts) if self.prompts is not None else None
        d["probes"] = [p if isinstance(p, str) else f"{type(p).__module__}.{type(p).__qualname__}" for p in self.probes]
        return d
