"""Storage budgets for layer sites (``--store``): per token, pooled per sample, or K sampled tokens.

Why: at 14B every layer stored per token is ~410 KiB per token (41 sites x 5120 x 2 bytes), so a
study of 4M tokens x 5 captures is terabytes. The paper's own statistics do not need that: the
PCA shift uses per-sample means, and CKA is as well estimated on a fixed sample of tokens. The
final probe (``final/*``) is never reduced: exact KL and ranks need every position.

Modes (root attr ``store``):

- ``tokens``: ``sites/<name>`` (T, d), today's layout;
- ``pooled``: ``pooled/<name>`` (N, 3, d) float32; rows :data:`POOLED_ROWS` (mean over the prompt
  tokens, mean over the response tokens, the last prompt token's state; NaN where the sample has no
  such token). Each token is rounded to the storage dtype first and the mean taken in float64, so
  the means equal what a reader would pool from a ``tokens`` capture of the same run;
- ``sample:K``: ``sites/<name>`` (T_s, d) holding K rows per sample (all rows of a shorter sample)
  and ``sites/positions`` (T_s,) int64, the token-axis index of each row. The K positions are drawn
  by a generator seeded with a hash of the sample's token ids alone, so two captures of the same
  tokens (two checkpoints, ``--tokens-from``) store the same positions and their rows pair up.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from driftkit.errors import DriftkitError, opt
from driftkit.store import schema as S
from driftkit.store.writer import ArraySpec

#: names of the 3 rows of a pooled dataset (its attr ``rows``)
POOLED_ROWS = ("prompt_mean", "response_mean", "last_prompt")
POOLED_GROUP = "pooled"
POSITIONS_PATH = f"{S.SITES_GROUP}/positions"
STORE_HELP = "tokens (every layer per token), pooled (3 vectors per sample and layer) or sample:K (K tokens/sample)"


@dataclass(frozen=True)
class StoreMode:
    """A parsed ``--store`` value: ``kind`` is ``tokens``, ``pooled`` or ``sampled`` (``k`` rows per sample)."""

    kind: str
    k: int = 0

    @property
    def label(self) -> str:
        """The value written to the root attr ``store`` (``tokens``, ``pooled``, ``sample:64``)."""
        return f"sample:{self.k}" if self.kind == "sampled" else self.kind


def parse_store(spec: str | None) -> StoreMode:
    """``tokens`` | ``pooled`` | ``sample:K`` (K >= 1) -> :class:`StoreMode`; a one-paragraph error otherwise."""
    s = (spec or "tokens").strip()
    if s in ("tokens", "pooled"):
        return StoreMode(s)
    if s.startswith("sample:"):
        try:
            k = int(s.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return StoreMode("sampled", k)
    near = difflib.get_close_matches(s, ["tokens", "pooled"], n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise DriftkitError(
        f"Unknown {opt('store', s)}{hint}: use tokens (every layer site per token, the default), pooled (per sample "
        "and layer: the prompt mean, the response mean and the last prompt token) or sample:K with K >= 1 (K "
        "token positions per sample, the same positions for every capture of the same tokens)."
    )


def is_layer_output(path: str, dtype: str) -> bool:
    """Layer sites are the activation arrays under ``sites/`` (residual, embed, attn, mlp, custom probes);
    ``final/*`` and non-activation arrays always stay per token."""
    return path.startswith(S.SITES_GROUP + "/") and dtype == "activation"


def pooled_path(site_path: str) -> str:
    """``sites/residual.3`` -> ``pooled/residual.3``."""
    return f"{POOLED_GROUP}/{site_path.split('/', 1)[1]}"


def store_specs(mode: StoreMode, specs: Sequence[ArraySpec]) -> tuple[list[ArraySpec], set[str]]:
    """The datasets a capture in ``mode`` creates from the probes' per-token ``specs``, and the probe
    output paths that ``mode`` reduces (empty for ``tokens``)."""
    if mode.kind == "tokens":
        return list(specs), set()
    layer = {s.path for s in specs if is_layer_output(s.path, s.dtype)}
    out: list[ArraySpec] = []
    for s in specs:
        if s.path not in layer:
            out.append(s)
        elif mode.kind == "pooled":
            rows_attr = ("rows", json.dumps(list(POOLED_ROWS)))
            out.append(ArraySpec(pooled_path(s.path), (3, *s.shape), "float32", (*s.attrs, rows_attr), rows="sample"))
        else:
            out.append(dataclasses.replace(s, rows="sampled"))
    return out, layer


def _seed_of(tokens: np.ndarray) -> int:
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i8").tobytes()).digest()[:8], "little")


def sample_positions(tokens: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """Sorted positions (0-based, within the sample) of the K rows stored for a sample in ``sample:K``.

    The rule sees only the token ids: a sample of n <= K tokens keeps every row; otherwise K distinct
    positions drawn by ``numpy.random.Generator(PCG64(seed))`` with ``seed`` = the first 8 bytes of
    SHA-256 of the ids as little-endian int64. Changing it changes which rows pair up across files,
    so it is part of the file contract."""
    ids = np.asarray(tokens, dtype=np.int64)
    n = len(ids)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(_seed_of(ids)))
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def all_sample_positions(token_ids: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """(T_s,) token-axis indices of every stored row of a ``sample:K`` capture, in file order."""
    out, start = [], 0
    for t in token_ids:
        out.append(sample_positions(t, k) + start)
        start += len(t)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _rounded(t: torch.Tensor, storage_dtype: str) -> torch.Tensor:
    """The values a ``tokens`` capture would store (float16/bfloat16 rounding), as float64."""
    dt = torch.bfloat16 if storage_dtype == "bfloat16" else torch.float16
    r = t.to(dt).to(torch.float64)
    if dt == torch.float16 and torch.isinf(r).any():
        big = float(t.detach().abs().max())
        raise DriftkitError(
            f"An activation reaches {big:.4g}, beyond float16's range (65504), so it would be pooled as inf. "
            "Capture with --storage-dtype bfloat16."
        )
    return r


def pool_packed(x: torch.Tensor, lengths: Sequence[int], prompt_len: Sequence[int], storage_dtype: str) -> torch.Tensor:
    """(n_samples, 3, d) float32 :data:`POOLED_ROWS` of packed rows ``x`` (sum(lengths), d), no Python loop
    over tokens: one ``index_add_`` per group with a per-row sample index."""
    n = len(lengths)
    d = int(x.shape[-1])
    dev = x.device  # on a GPU capture the pooling runs there and only (n, 3, d) reaches the host
    lens = torch.as_tensor(list(lengths), dtype=torch.int64, device=dev)
    plen = torch.minimum(torch.as_tensor(list(prompt_len), dtype=torch.int64, device=dev), lens)
    starts = torch.cumsum(lens, 0) - lens
    owner = torch.repeat_interleave(torch.arange(n, device=dev), lens)
    rel = torch.arange(int(lens.sum()), device=dev) - starts[owner]
    is_prompt = rel < plen[owner]
    vals = _rounded(x, storage_dtype)
    out = torch.full((n, 3, d), float("nan"), dtype=torch.float64, device=dev)
    for j, sel in enumerate((is_prompt, ~is_prompt)):
        sums = torch.zeros(n, d, dtype=torch.float64, device=dev).index_add_(0, owner[sel], vals[sel])
        cnt = torch.bincount(owner[sel], minlength=n).to(torch.float64)
        out[:, j] = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], out[:, j])
    has = plen > 0
    out[has, 2] = vals[(starts + plen - 1)[has]]
    return out.to(torch.float32)


def sampled_rows(x: torch.Tensor, token_ids: Sequence[Sequence[int]], k: int) -> torch.Tensor:
    """The ``sample:K`` rows of packed rows ``x`` whose samples hold ``token_ids`` (in packed order)."""
    return x.index_select(0, torch.from_numpy(all_sample_positions(token_ids, k)).to(x.device))


def reduce_packed(
    mode: StoreMode,
    packed: dict[str, torch.Tensor],
    samples: Sequence[int],
    tokens: Sequence[Sequence[int]],
    prompt_len: Sequence[int],
    storage_dtype: str,
    layer_paths: set[str],
) -> dict[str, torch.Tensor]:
    """Turn a batch's packed per-token layer arrays into what ``mode`` stores (others pass unchanged).

    ``samples`` are the batch's sample indices in file order (as packed); ``tokens``/``prompt_len``
    cover every sample of the capture."""
    if mode.kind == "tokens":
        return packed
    out: dict[str, torch.Tensor] = {}
    toks = [tokens[i] for i in samples]
    for path, t in packed.items():
        if path not in layer_paths:
            out[path] = t
        elif mode.kind == "pooled":
            out[pooled_path(path)] = pool_packed(
                t, [len(x) for x in toks], [prompt_len[i] for i in samples], storage_dtype
            )
        else:
            out[path] = sampled_rows(t, toks, mode.k)
    return out
