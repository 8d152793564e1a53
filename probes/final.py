"""``final``: the input of ``lm_head`` (after the final norm), the unembedding once per file, and
per-token summaries of the model's own next-token distribution.

Why store hidden + unembedding instead of logits: logits are V wide (49k-256k); ``hidden @ W.T``
rebuilds them exactly at compare time for 40-80x less disk, which is what makes exact
full-vocabulary KL and ranks affordable. Both are stored at the model's own dtype (not
``--storage-dtype``): a float16-rounded hidden state of a float32 model shifts a small KL by ~1%.
:meth:`FinalProbe.check` proves on the first batch that
the rebuild matches the model's own logits, so an architecture with an unknown final transform
fails loudly instead of producing silently wrong KL.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from driftkit.errors import DriftkitError
from driftkit.metrics.products import rowdot
from driftkit.registry.options import Option
from driftkit.registry.probe import Batch, ModelLayout, Output, Probe, Site, StaticArray
from driftkit.store import schema as S
from driftkit.store.buffers import ChunkBuffers
from driftkit.store.reader import apply_final_transform

LOGITS_KEY = "final/_logits"
#: log2(e): ``exp(y) = exp2(y * LOG2E)`` (:func:`_exp`)
LOG2E = 1.0 / math.log(2.0)


#: the final-hidden storage dtype per model compute dtype: the model's own values, bit for bit
_HIDDEN_STORAGE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def final_transform(model: Any) -> tuple[float | None, float | None]:
    """``(softcap, scale)`` of the transform a HF causal LM applies after ``lm_head``.

    Each supported architecture does exactly one of these after ``logits = lm_head(hidden)``
    (transformers' modeling code): Gemma 2/3 ``softcap * tanh(logits / softcap)``
    (``final_logit_softcapping``); Cohere ``logits * logit_scale``; Granite (and GraniteMoe*)
    ``logits / logits_scaling``, stored as ``logit_scale = 1 / logits_scaling`` so every reader,
    old ones included, applies it through the one multiplicative ``logit_scale`` (at most one float32
    ulp from the division; exact for the power-of-two values Granite ships). Anything else is caught
    by :meth:`FinalProbe.check`.
    """
    cfg = model.config.get_text_config()
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    scale = float(scale) if scale not in (None, 1.0) else None
    divisor = getattr(cfg, "logits_scaling", None)
    if divisor not in (None, 1.0):
        scale = (scale if scale is not None else 1.0) / float(divisor)
    return (float(softcap) if softcap else None, scale)


def hidden_storage(layout: ModelLayout) -> str:
    """Storage dtype of ``final/hidden``: the model's own compute dtype (that of ``lm_head``), so the
    rebuilt logits are the model's own; ``--storage-dtype`` applies to the layer sites only."""
    return _HIDDEN_STORAGE.get(layout.model.get_output_embeddings().weight.dtype, "float32")


#: float32 bytes of the unembedding the first-batch logit check (:meth:`FinalProbe.check`) converts at
#: a time, on the model's device
CHECK_SLICE_BYTES = 64 << 20


#: vocabulary entries per block of :func:`top_k`'s first pass (measured on this CPU at V = 49,152,
#: k = 20, 16 rows: 271 us at 128, 231 at 64, 257 at 32, against 960 for ``torch.topk``)
TOPK_BLOCK = 64


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=-1)`` (values in descending order, their ids) of (n, V) rows, exactly, in two
    passes on a CPU: the maximum of every block of :data:`TOPK_BLOCK` entries, then ``topk`` over
    the k blocks whose maxima are largest (and the ragged tail), mapped back to vocabulary ids.

    Why exact: the k selected block maxima are k entries >= M_k, the smallest of them, so the k-th
    largest value is >= M_k; an entry above M_k cannot sit in an unselected block (whose maximum is
    <= M_k). So every entry the top k needs is a candidate and the values are those of ``topk`` over
    the whole row; among entries tied at the k-th value, which ids are kept may differ (both are
    top-k). Why: ``topk`` over 49,152 entries was the largest part of the final probe's work on a
    CPU, and this path is 4x faster (the numbers at :data:`TOPK_BLOCK`). On a GPU, and for
    vocabularies too small to gain, it is ``topk`` itself."""
    n, vocab = x.shape
    nb = vocab // TOPK_BLOCK
    if x.device.type != "cpu" or nb < 8 * k:
        return x.topk(k, dim=-1)
    full = x[:, : nb * TOPK_BLOCK].view(n, nb, TOPK_BLOCK)
    blocks = full.amax(-1).topk(k, dim=-1).indices  # (n, k): the blocks with the largest maxima
    cand = full.gather(1, blocks.unsqueeze(-1).expand(n, k, TOPK_BLOCK)).view(n, k * TOPK_BLOCK)
    ids = (blocks.unsqueeze(-1) * TOPK_BLOCK + torch.arange(TOPK_BLOCK)).view(n, k * TOPK_BLOCK)
    if nb * TOPK_BLOCK < vocab:  # the ragged tail is always a candidate
        cand = torch.cat([cand, x[:, nb * TOPK_BLOCK :]], 1)
        ids = torch.cat([ids, torch.arange(nb * TOPK_BLOCK, vocab).expand(n, -1)], 1)
    v, j = cand.topk(k, dim=-1)
    return v, ids.gather(1, j)


def _exp(y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``exp(y)`` into ``out``; for float32 on a CPU as ``exp2(y * log2 e)``.

    Why: ``torch.exp`` of float32 measured 2.9x slower than ``torch.exp2`` on this project's 2-core
    AVX-512 machine (torch 2.13, a (16, 49,152) chunk: 908 us vs 256 us at one thread, 493 vs 159 us
    at two; with the multiply, 226 us at two), and this exp over every position's V logits was the
    largest single cost of the probe (80 of 193 ms per 2,048 positions at V = 49,152). The multiply
    rounds ``y`` by a relative 6e-8, so an entry's relative error grows with ``|y|`` (1.7e-6 at
    ``y = -40``, against 6e-8); the sums here are dominated by the entries near the max, and the
    stored statistics stay within 1e-6 relative of float64 (tests/test_next_token_stats.py). Not used
    for compare's KL, whose relative precision at KL ~1e-7 it would cost 5x. Elsewhere (an exp is a
    fast intrinsic on a GPU, where an extra pass costs memory traffic) it is ``torch.exp``."""
    if y.device.type == "cpu" and y.dtype == torch.float32:
        return torch.mul(y, LOG2E, out=out).exp2_()
    return torch.exp(y, out=out)


def next_token_stats(
    logits: torch.Tensor, next_ids: torch.Tensor, k: int, chunk: int | None = None, rows: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per position: log p(next token), entropy, top-k ids and log-probs, from full logits.

    ``logits`` is (N, V), ``next_ids`` (N,) (any value where there is no next token). With ``rows``
    (M,), only those rows of ``logits`` are scored (``next_ids`` is then (M,)): they are gathered chunk by
    chunk, so a padded batch is never copied whole. The V-wide work per row is one top-k on the raw
    logits (:func:`top_k`; its first value is the row max, and the order equals the log-probs' order), one subtract,
    one exp (:func:`_exp`: through ``exp2`` on a CPU, 2.2x faster there),
    one sum and one dot product (:func:`~driftkit.metrics.products.rowdot`, 1.6x faster than
    ``linalg.vecdot`` on a 16-row chunk): with ``e = exp(x - max)``, ``z = sum e``,
    ``logsumexp = max + log z`` and ``H = log z - (e . (x - max)) / z``, where ``log z`` is
    ``log1p`` of the sum without the max's own term, so a confident position's entropy keeps its
    relative precision (measured: within 1e-6 down to H = 1e-6 nats, against 4e-2 for ``log`` of the whole sum,
    tests/test_next_token_stats.py); no (N, V) log-softmax is
    materialised and no second exp is taken. On a CPU, row chunks are sized to ~3 MB so every
    temporary stays in cache: measured on this CPU at V = 49,152, 16-row chunks are 2.6x faster than
    512-row ones. The chunk-sized temporaries (the gathered rows, their float32 copy, ``x - max`` and
    its exp) are reused buffers (:class:`~driftkit.store.buffers.ChunkBuffers`; on a GPU, where
    chunks pass its size limit, fresh tensors from the caching allocator). As fresh 3 MB tensors, glibc could give their
    pages back and fault them in again, chunk after chunk (its trim threshold follows its mmap
    threshold: twice 3 MB here), depending on the heap's state: 1,574 scored rows of a padded batch
    took 178-447 ms at 2 threads and 284-557 ms at 1 before, 154-201 and 208-272 ms after (2-core
    AMD EPYC), with the same results bit for bit.

    On a GPU the work stays there: chunks of up to 256 MB per temporary (a few kernel launches per
    chunk instead of per 5 rows at V = 151,936) and one copy of the (M,) and (M, k) results to the
    host at the end. Why: copying a 14B model's bfloat16 logits to the host and scoring them there
    cost more than the whole forward (measured on an H200, docs/scale.md).
    """
    N, V = logits.shape
    M = N if rows is None else int(rows.shape[0])
    dev = logits.device
    if chunk is None:
        chunk = max(1, (3 << 20 if dev.type == "cpu" else 256 << 20) // (4 * max(V, 1)))
    logprob = torch.empty(M, dtype=torch.float32, device=dev)
    entropy = torch.empty(M, dtype=torch.float32, device=dev)
    top_ids = torch.empty((M, k), dtype=torch.int32, device=dev)
    top_lp = torch.empty((M, k), dtype=torch.float32, device=dev)
    if rows is not None:
        rows = rows.to(logits.device)
    next_ids = next_ids.to(logits.device)
    bufs = ChunkBuffers()
    for s in range(0, M, chunk):
        n = min(chunk, M - s)
        if rows is None:
            x = logits[s : s + n]
        else:
            x = torch.index_select(logits, 0, rows[s : s + n], out=bufs.take("rows", (n, V), logits.dtype, dev))
        x = bufs.converted("float32", x, torch.float32)
        v, i = top_k(x, k)
        m = v[:, :1]
        y = torch.sub(x, m, out=bufs.take("y", (n, V), torch.float32, dev))
        e = _exp(y, bufs.take("e", (n, V), torch.float32, dev))
        # The max's own term (exactly 1) is left out of the sum and added back exactly by log1p: a
        # confident position's z = 1 + (tiny) would otherwise round, and log z with it, to float32's
        # 6e-8, a 4% error in an entropy of 1e-6 nats. Its y is 0, so the dot product is unchanged.
        e.scatter_(1, i[:, :1], 0.0)
        rest = e.sum(dim=-1)  # z - 1
        log_z = torch.log1p(rest)
        z = rest + 1.0
        lse = m[:, 0] + log_z
        logprob[s : s + chunk] = x.gather(1, next_ids[s : s + chunk, None].clamp_min(0)).squeeze(1) - lse
        # H = lse - sum p x = log z - sum p (x - max), with p = e / z: two non-negative terms (y <= 0),
        # so no cancellation either
        entropy[s : s + chunk] = log_z - rowdot(e, y) / z
        top_ids[s : s + chunk] = i
        top_lp[s : s + chunk] = v - lse[:, None]
    out = {"logprob": logprob, "entropy": entropy, "topk_ids": top_ids, "topk_logprobs": top_lp}
    return {name: t.cpu() for name, t in out.items()}


def _hidden_output(layout: ModelLayout) -> Output:
    """``final/hidden`` at the model's dtype; bfloat16 as its raw bits (uint16 + attr, as the layer sites)."""
    storage = hidden_storage(layout)
    if storage == "bfloat16":
        return Output(S.FINAL_HIDDEN, (layout.hidden_size,), "uint16", {S.BF16_ATTR[0]: S.BF16_ATTR[1]})
    return Output(S.FINAL_HIDDEN, (layout.hidden_size,), storage)


def _to_hidden_storage(hidden: torch.Tensor, storage: str) -> torch.Tensor:
    """The tensor the writer stores for ``final/hidden``: exact for the model's own dtype."""
    if storage == "bfloat16":
        return hidden.to(torch.bfloat16).contiguous().view(torch.uint16)
    return hidden.to(getattr(torch, storage))


class FinalProbe(Probe):
    name = "final"
    description = "lm_head input (final/hidden), unembedding, next-token logprob, entropy, top-k"
    options = {"topk": Option(20, "How many most likely next tokens to store per position (final/topk_*).")}

    def sites(self, layout: ModelLayout) -> list[Site]:
        return [
            Site(S.FINAL_HIDDEN, layout.lm_head, io="input"),
            Site(LOGITS_KEY, "", io="output", select=lambda out: out.logits),
        ]

    def outputs(self, layout: ModelLayout) -> list[Output]:
        k = int(self.opts["topk"])
        self._storage = hidden_storage(layout)  # finalize() sees no layout; outputs() always runs first
        return [
            _hidden_output(layout),
            Output(S.FINAL_LOGPROB, (), "float32"),
            Output(S.FINAL_ENTROPY, (), "float32"),
            Output(S.FINAL_TOPK_IDS, (k,), "int32"),
            Output(S.FINAL_TOPK_LOGPROBS, (k,), "float32"),
        ]

    def static(self, layout: ModelLayout) -> list[StaticArray]:
        head = layout.model.get_output_embeddings()
        softcap, scale = final_transform(layout.model)
        attrs = {k: v for k, v in (("logit_softcap", softcap), ("logit_scale", scale)) if v is not None}
        out = [StaticArray(S.FINAL_UNEMBED, head.weight.detach(), "model", attrs)]
        if getattr(head, "bias", None) is not None:
            out.append(StaticArray(S.FINAL_UNEMBED_BIAS, head.bias.detach(), "model"))
        return out + final_norm_arrays(layout)

    def finalize(self, values: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        logits = values[LOGITS_KEY]  # (B, S, V)
        B, T, V = logits.shape
        k = int(self.opts["topk"])
        lengths = torch.as_tensor(batch.lengths)
        valid = torch.arange(T)[None, :] < lengths[:, None]  # padding is never scored
        rows = valid.reshape(-1).nonzero().squeeze(1)  # flat (b, t) rows of real tokens, in row-major order
        next_ids = torch.roll(batch.input_ids, -1, dims=1).reshape(-1)[rows]
        stats = next_token_stats(logits.reshape(B * T, V), next_ids, k, rows=rows)
        # A sample's last token predicts nothing stored: its logprob is NaN (DESIGN.md section 3).
        last = torch.zeros((B, T), dtype=torch.bool)
        last[torch.arange(B), (lengths - 1).clamp_min(0)] = True
        stats["logprob"][last[valid]] = float("nan")

        def scatter(x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((B, T, *x.shape[1:]), dtype=x.dtype)
            out[valid] = x
            return out

        return {
            S.FINAL_HIDDEN: _to_hidden_storage(values[S.FINAL_HIDDEN], self._hidden_storage(values[S.FINAL_HIDDEN])),
            S.FINAL_LOGPROB: scatter(stats["logprob"]),
            S.FINAL_ENTROPY: scatter(stats["entropy"]),
            S.FINAL_TOPK_IDS: scatter(stats["topk_ids"]),
            S.FINAL_TOPK_LOGPROBS: scatter(stats["topk_logprobs"]),
        }

    def _hidden_storage(self, hidden: torch.Tensor) -> str:
        return getattr(self, "_storage", None) or _HIDDEN_STORAGE.get(hidden.dtype, "float32")

    def check(self, values: dict[str, torch.Tensor], batch: Batch, layout: ModelLayout, storage_dtype: str) -> None:
        """Rebuild logits from ``final/hidden`` as stored and the unembedding, exactly as a reader
        will, and compare them with the model's own logits on the first batch.

        ``final/hidden`` and ``final/unembed`` hold the model's own values bit for bit, so the only
        honest difference is rounding in the product: float32 summation order (BLAS blocking, row
        count) and, for a float16/bfloat16 model, the rounding of its logits (and of its bias add,
        scale, softcap) to that dtype. The bound is elementwise,
        ``8 * eps * (|scale| * (|h| @ |W|.T + |b|) + |logits|)`` with ``eps`` the float32 epsilon
        (the model dtype's when coarser, TF32's when CUDA matmuls run in TF32): a few ulps of the
        magnitudes summed, with no absolute slack, so a missing or wrong transform (a scale off by
        1e-5, a bias of 1e-4, a softcap) fails while honest rounding never does."""
        h_model = values[S.FINAL_HIDDEN][0, : batch.lengths[0]]
        rows = slice(0, min(64, h_model.shape[0]))
        stored = _to_hidden_storage(h_model[rows], self._hidden_storage(h_model))
        if stored.dtype == torch.uint16:
            stored = stored.view(torch.bfloat16)
        head = layout.model.get_output_embeddings()
        dev = head.weight.device  # on the model's device: a 14B model's float32 unembedding is 3 GB
        h = stored.to(dev).float()
        ref_rows = values[LOGITS_KEY][0, : batch.lengths[0]][rows].to(dev)
        bias = head.bias.detach() if getattr(head, "bias", None) is not None else None
        softcap, scale = final_transform(layout.model)
        eps = torch.finfo(torch.float32).eps
        if ref_rows.is_floating_point():
            eps = max(eps, torch.finfo(ref_rows.dtype).eps)
        if head.weight.is_cuda and torch.get_float32_matmul_precision() != "highest":
            eps = max(eps, 2.0**-10)  # TF32 (or bf16x3) float32 matmuls on the GPU
        # vocabulary slices: the check never holds a float32 copy of the whole unembedding
        vocab, step = head.weight.shape[0], max(1, CHECK_SLICE_BYTES // (4 * head.weight.shape[1]))
        err_max, worst, n_bad = 0.0, 0.0, 0
        for v0 in range(0, vocab, step):
            W = head.weight[v0 : v0 + step].detach().float()
            b = bias[v0 : v0 + step].float() if bias is not None else None
            rebuilt = apply_final_transform(h @ W.T + (b if b is not None else 0.0), softcap, scale)
            mag = h.abs() @ W.abs().T + (b.abs() if b is not None else 0.0)
            ref = ref_rows[:, v0 : v0 + step].float()
            bound = 8 * eps * (abs(scale if scale is not None else 1.0) * mag + ref.abs())
            err = (rebuilt - ref).abs()
            bad = ~(err <= bound)  # NaN counts as a mismatch
            if bad.any():
                ratio = err / bound.clamp_min(torch.finfo(torch.float32).tiny)
                worst = max(worst, float(torch.nan_to_num(ratio, nan=float("inf")).max()))
                err_max = max(err_max, float(torch.nan_to_num(err, nan=float("inf")).max()))
                n_bad += int(bad.sum())
        if n_bad:
            raise DriftkitError(
                f"Logits rebuilt from final/hidden @ final/unembed.T do not match the model's own logits "
                f"(max |difference| {err_max:.4g}, {worst:.3g} times the rounding bound; {n_bad} of "
                f"{h.shape[0] * vocab} values beyond it). This "
                f"{type(layout.model).__name__} applies a final transform driftkit does not know (only a bias, "
                f"final_logit_softcapping, logit_scale and logits_scaling are supported), so exact KL and ranks "
                f"would be wrong. Capture without the 'final' probe, or write a custom probe that stores what this "
                f"model does."
            )


def find_final_norm(layout: ModelLayout) -> tuple[str, torch.nn.Module] | None:
    """``(dotted name, module)`` of the norm whose output feeds ``lm_head``, found structurally: the
    last module registered after the decoder-layer list, outside it and outside ``lm_head``, whose
    class is a norm over the hidden width (``model.norm``, ``transformer.ln_f``, ``final_layernorm``,
    ...). transformers registers the final norm after the layers in every causal LM family, and an
    embedding norm (Bloom's) before them, so no architecture needs naming here."""
    d, found, after = layout.hidden_size, None, False
    for name, mod in layout.model.named_modules():
        if name == layout.layers:
            after = True
            continue
        inside = name.startswith(layout.layers + ".") or name == layout.lm_head or name.startswith(layout.lm_head + ".")
        if not after or inside:
            continue
        is_norm = isinstance(mod, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or type(mod).__name__.lower().endswith("norm")
        w = getattr(mod, "weight", None)
        if is_norm and (w is None or tuple(w.shape) == (d,)):
            found = (name, mod)
    return found


def final_norm_arrays(layout: ModelLayout) -> list[StaticArray]:
    """``final/norm/weight`` (+ ``final/norm/bias``) with the norm's type, eps and weight offset as
    attrs, for the logit lens; nothing when the model's final norm is not found or is of a kind
    :func:`~driftkit.metrics.lens.classify_norm` does not reproduce (the lens then skips the file
    with that reason instead of applying a wrong norm)."""
    from driftkit.metrics.lens import classify_norm

    hit = find_final_norm(layout)
    if hit is None:
        return []
    name, mod = hit
    spec = classify_norm(mod, layout.hidden_size)
    if spec is None:
        return []
    kind, eps, offset = spec
    w = getattr(mod, "weight", None)
    weight = w.detach() if w is not None else torch.ones(layout.hidden_size)
    attrs = {"type": kind, "eps": eps, "weight_offset": offset, "module": name}
    out = [StaticArray(S.FINAL_NORM_WEIGHT, weight, "model", attrs)]
    b = getattr(mod, "bias", None)
    if kind == "layernorm" and isinstance(b, torch.Tensor):
        out.append(StaticArray(S.FINAL_NORM_BIAS, b.detach(), "model"))
    return out
