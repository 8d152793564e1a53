"""Names fixed by the capture file contract (DESIGN.md section 3, schema ``driftkit.capture/1``).

Every other module takes these names from here so a rename is one edit plus a schema bump.
"""

from __future__ import annotations

SCHEMA = "driftkit.capture/1"

SAMPLES_ID = "samples/id"
SAMPLES_DOMAIN = "samples/domain"
SAMPLES_OFFSETS = "samples/offsets"
SAMPLES_PROMPT_LEN = "samples/prompt_len"
SAMPLES_DONE = "samples/done"
TOKEN_IDS = "tokens/ids"
#: (N, S) bool: sample i was written to per-token dataset j (attr ``sites``: JSON list of the S paths)
SAMPLES_SITES_WRITTEN = "samples/sites_written"
#: (N,) int32: tokens cut from sample i by ``--truncate`` (root attr ``truncate``: left | right)
SAMPLES_TRUNCATED = "samples/truncated"

SITES_GROUP = "sites"
FINAL_HIDDEN = "final/hidden"
FINAL_UNEMBED = "final/unembed"
FINAL_UNEMBED_BIAS = "final/unembed_bias"
FINAL_LOGPROB = "final/logprob"
FINAL_ENTROPY = "final/entropy"
FINAL_TOPK_IDS = "final/topk_ids"
FINAL_TOPK_LOGPROBS = "final/topk_logprobs"
#: the final norm (logit lens), once per file: weight (d,) with attrs ``type`` (rmsnorm | layernorm), ``eps``,
#: ``weight_offset`` (1.0 for Gemma's ``x * (1 + w)``, else 0.0) and ``module``; a LayerNorm's bias (d,) if any
FINAL_NORM_WEIGHT = "final/norm/weight"
FINAL_NORM_BIAS = "final/norm/bias"

#: attribute written on a uint16 dataset that actually holds bfloat16 bits
BF16_ATTR = ("dtype", "bfloat16")


def residual_site(layer: int) -> str:
    """HDF5 path of decoder layer ``layer``'s output (0-based, never negative)."""
    if layer < 0:
        raise ValueError("residual sites are stored by their non-negative layer index")
    return f"{SITES_GROUP}/residual.{layer}"


EMBED_SITE = f"{SITES_GROUP}/embed"
