"""The logit lens: a layer's residual read through the model's own final norm and unembedding.

Why a kernel of its own: the lens needs one thing the capture did not store before, the final norm
(``final/norm/*``, written by the ``final`` probe), and one formula per norm family. Everything else,
the logits rebuild and the exact streaming KL, is :mod:`driftkit.metrics.kl`'s, reused as is so the
lens at the last layer is the same number as the ``kl`` analysis when the last layer's output is
the final norm's input.

Supported norms (the families of Hugging Face causal LMs), computed in float32:

- ``rmsnorm``: ``x * rsqrt(mean(x^2) + eps) * (weight_offset + w)``; ``weight_offset`` is 0 for
  Llama/Qwen/Mistral/OLMo/Granite, 1 for Gemma's ``(1 + w)`` convention;
- ``layernorm``: ``(x - mean) * rsqrt(var + eps) * w (+ b)`` (GPT-2, GPT-NeoX, Falcon, Phi; Cohere
  without bias).

The capture classifies a model's norm by running the module on a synthetic input against these
formulas (:func:`classify_norm`), so an unknown variant is never stored under a wrong name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: the norm types a capture can record and the lens can apply
NORM_TYPES = ("rmsnorm", "layernorm")


@dataclass
class FinalNorm:
    """A model's final norm as stored in a capture (``final/norm/*``)."""

    type: str  # one of NORM_TYPES
    weight: torch.Tensor  # (d,) float32
    bias: torch.Tensor | None  # (d,) float32, LayerNorm only
    eps: float
    weight_offset: float = 0.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The normed rows of ``x`` (n, d), float32."""
        return apply_norm(x, self.type, self.weight, self.bias, self.eps, self.weight_offset)


def apply_norm(
    x: torch.Tensor,
    kind: str,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    weight_offset: float = 0.0,
) -> torch.Tensor:
    """``kind`` norm of the rows of ``x`` in float32, in the operation order of transformers' modules
    (variance, ``rsqrt(var + eps)``, multiply, then the weight), so a float32 model's own norm output
    is reproduced to the last bit or two."""
    x = x.float()
    if kind == "rmsnorm":
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    elif kind == "layernorm":
        c = x - x.mean(-1, keepdim=True)
        y = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    else:
        raise ValueError(f"unknown norm type {kind!r}; known: {', '.join(NORM_TYPES)}")
    if weight is not None:
        w = weight.float()
        y = y * (w + weight_offset if weight_offset else w)
    if bias is not None:
        y = y + bias.float()
    return y


def norm_eps(module: torch.nn.Module) -> float | None:
    """The epsilon of a norm module under the names transformers and torch use."""
    for attr in ("variance_epsilon", "eps", "epsilon", "layer_norm_eps"):
        v = getattr(module, attr, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def classify_norm(module: torch.nn.Module, d: int) -> tuple[str, float, float] | None:
    """``(type, eps, weight_offset)`` of a norm module, found by running it on a synthetic input and
    matching its output against each known formula; None when none matches (an unsupported norm).

    Why numerically and not by class name: the same class names hide different conventions (Gemma's
    ``(1 + w)``, OLMo's weight-before-cast, Cohere's bias-free LayerNorm); running the module is the
    one test that cannot be fooled by a name. The tolerance is a few roundings of the module's dtype at the
    output's scale; the candidate formulas differ by O(1) on this input."""
    eps = norm_eps(module)
    w = getattr(module, "weight", None)
    if eps is None or (w is not None and tuple(w.shape) != (d,)):
        return None
    b = getattr(module, "bias", None)
    try:
        dev = w.device if w is not None else torch.device("cpu")
        dtype = w.dtype if w is not None else torch.float32
        if dev.type == "meta":
            return None
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(8, d, generator=g) * 2.0 + 2.0).to(device=dev, dtype=dtype)  # mean != 0: LN != RMS
        with torch.no_grad():
            ref = module(x).float().cpu()
    except Exception:  # noqa: BLE001 - a module that cannot run alone is simply not recorded
        return None
    xf = x.float().cpu()
    wf = w.detach().float().cpu() if w is not None else None
    bf = b.detach().float().cpu() if isinstance(b, torch.Tensor) else None
    tol = 8 * max(torch.finfo(torch.float32).eps, torch.finfo(dtype).eps if dtype.is_floating_point else 0.0)
    for kind, offset in (("rmsnorm", 0.0), ("rmsnorm", 1.0), ("layernorm", 0.0)):
        got = apply_norm(xf, kind, wf, bf if kind == "layernorm" else None, eps, offset)
        if kind == "rmsnorm" and bf is not None:
            continue
        # a few roundings of the largest output (the weight and bias scale the normed values' rounding)
        if bool(((got - ref).abs() <= tol * (got.abs() + float(got.abs().max()))).all()):
            return kind, eps, offset
    return None
