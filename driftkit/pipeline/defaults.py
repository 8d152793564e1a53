"""The default choices of an experiment file: which analyses, benchmarks and drift measures a study
uses when the file does not say.

Why a module of its own: these are data, not logic. With :mod:`driftkit.pipeline.demo` it is the only
place in the pipeline that names plugins; the steps and the report iterate over whatever the
experiment asks for (tests/test_generic_core.py checks this).
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    "bench": {"suite": "default", "limit": 20, "data": "auto", "options": {}, "enabled": True},
    "capture": {
        "prompts": "bundled:general-mix",
        "chat_prompts": "bundled:general-mix",
        "chat_limit": None,
        "max_new_tokens": 64,
        "layers": "all",
        "max_batch_tokens": 4096,
        "storage_dtype": "float16",
        # scale (docs/scale.md): layer storage of the raw-text captures, processes per capture, the
        # generation engine of the answers, accelerate's placement of models bigger than one device
        "store": "tokens",
        "nproc": 1,
        "backend": "hf",
        "device_map": None,
    },
    # raw_analyses run on the raw-text captures (representations), gen_analyses on each tuned model's
    # own answers scored by both models (distributions)
    "compare": {
        "raw_analyses": ["cka", "similarity", "pca_shift", "umap", "logit_lens"],
        "gen_analyses": ["kl", "token_rank", "token_view"],
        "options": {},
        "jobs": 1,  # processes for the layers pass (identical numbers; not hashed)
    },
    "transfer": {"sigma": "pooled"},
    # measures: key of each drift point -> "analysis.summary_key"; headline: the measure whose
    # half-way step the findings quote
    "drift": {
        "enabled": True,
        "bench": ["math500"],
        "bench_limit": None,
        "layers": "every:4",
        "measures": {"cka": "cka.mean_linear_cka", "kl": "kl.kl_forward", "shifted": "token_rank.shifted"},
        "headline": "kl",
    },
    # expect: "A > B" = model A is expected to drift more than model B; expect_why opens the finding
    "study": {"expect": [], "expect_why": "The expected pattern"},
}
