"""The Probe plugin kind: what to record during a forward pass.

Why probes declare *sites* instead of writing trace code: nnsight 0.8 runs intervention code
interleaved with the real forward pass and requires module values to be requested in execution
order. When several probes record at once (residual layers, an attention head, the final norm),
only the engine sees all requests, so it orders them by the model's real module call order (found
once with forward hooks) and fetches each value inside one nnsight trace. A probe therefore says
*which module value* it wants (a :class:`Site`), optionally how to cut it (``select``), and may turn
the recorded values into the arrays it stores (:meth:`Probe.finalize`).

A custom probe is ~20 lines; see ``probes/examples/attn_head.py``.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from driftkit.errors import DriftkitError
from driftkit.registry.options import Configurable


def first_tensor(value: Any) -> torch.Tensor:
    """Module outputs are tensors in transformers 5 for decoder layers, tuples for attention blocks."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise TypeError(f"cannot take a tensor from a module value of type {type(value).__name__}")


@dataclass(frozen=True)
class Site:
    """One module value to record.

    ``module`` is the dotted name in the Hugging Face model (``model.layers.3.self_attn``; ``""``
    is the whole model, whose output holds ``logits``), ``io`` says whether the module's input (its
    first positional argument) or output is recorded, ``select`` cuts the raw value into a
    ``(batch, seq, ...)`` tensor. ``key`` names the value for :meth:`Probe.finalize`; it is also the
    HDF5 path when the probe stores values as recorded.
    """

    key: str
    module: str
    io: str = "output"
    select: Callable[[Any], torch.Tensor] = first_tensor


@dataclass(frozen=True)
class Output:
    """One array a probe stores. ``dtype`` ``"activation"`` uses the capture's storage dtype
    (float16 / bfloat16); anything else is a numpy dtype name (``"float32"``, ``"int32"``).
    ``shape`` is the trailing shape after the token axis."""

    path: str
    shape: tuple[int, ...]
    dtype: str = "activation"
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StaticArray:
    """An array written once per file (e.g. the unembedding), not per token."""

    path: str
    array: np.ndarray | torch.Tensor
    dtype: str = "model"  # "model": the model's own dtype (exact); "activation"; or a numpy dtype
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelLayout:
    """Where the standard pieces of a causal LM live, found structurally (works across archs).

    This is what a probe sees of the model; its fields are public API (docs/plugins.md):

    - ``num_layers``: decoder layers (``parse_layers(spec, layout.num_layers)`` resolves ``-1`` etc.);
    - ``hidden_size``: width of the residual stream (the trailing shape of a per-token activation);
    - ``vocab_size``: rows of the unembedding (``lm_head``);
    - ``layers``: dotted module name of the decoder-layer list, ``layer(i)`` names layer ``i``;
    - ``embed`` / ``lm_head``: dotted module names of the input and output embeddings;
    - ``model``: the Hugging Face model itself (for ``model.config`` values such as ``head_dim``,
      and for :meth:`Probe.static` arrays). Read it; never run it from a probe.
    """

    num_layers: int
    hidden_size: int
    vocab_size: int
    layers: str  # dotted name of the decoder-layer ModuleList
    embed: str  # input embedding module
    lm_head: str  # output embedding module
    model: Any = None  # the HF model (for static arrays and config)

    def layer(self, i: int) -> str:
        """Dotted module name of decoder layer ``i`` (0-based), e.g. ``model.layers.3``."""
        return f"{self.layers}.{i}"

    @classmethod
    def of(cls, model: Any) -> ModelLayout:
        cfg = model.config.get_text_config()
        n = int(cfg.num_hidden_layers)
        names = {id(m): name for name, m in model.named_modules()}
        layers_name = None
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
                layers_name = name
                break
        if layers_name is None:
            raise DriftkitError(
                f"Could not find the {n} decoder layers of {type(model).__name__}; this architecture is not supported "
                "by the bundled probes."
            )
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings()
        if head is None or id(head) not in names or id(emb) not in names:
            raise DriftkitError(
                f"{type(model).__name__} has no output embedding (lm_head); driftkit needs a causal LM."
            )
        return cls(
            num_layers=n,
            hidden_size=int(cfg.hidden_size),
            vocab_size=int(head.weight.shape[0]),
            layers=layers_name,
            embed=names[id(emb)],
            lm_head=names[id(head)],
            model=model,
        )


def parse_layers(spec: str | int | list[int] | None, num_layers: int) -> list[int]:
    """Parse a layer selection: ``all``, ``0,4,8``, ``every:4``, ``-1`` (from the end), ``2-5``.

    Returns sorted, unique, non-negative indices; raises with the valid range on a bad index.
    """
    if spec is None or spec == "all":
        return list(range(num_layers))
    if isinstance(spec, int):
        items: list[str] = [str(spec)]
    elif isinstance(spec, (list, tuple)):
        items = [str(s) for s in spec]
    else:
        items = [s.strip() for s in str(spec).split(",") if s.strip()]
    out: set[int] = set()
    valid = f"valid layers are 0..{num_layers - 1} (or -{num_layers}..-1 from the end), 'all', 'every:K', 'A-B' ranges"
    for item in items:
        try:
            if item == "all":
                out.update(range(num_layers))
            elif item.startswith("every:"):
                k = int(item.split(":", 1)[1])
                if k <= 0:
                    raise ValueError
                out.update(range(0, num_layers, k))
            elif "-" in item[1:]:
                a, b = item.split("-", 1) if not item.startswith("-") else (item, "")
                lo, hi = int(a), int(b)
                if not (0 <= lo <= hi < num_layers):
                    raise DriftkitError(f"Layer range {item!r} is outside the model's {num_layers} layers; {valid}.")
                out.update(range(lo, hi + 1))
            else:
                i = int(item)
                j = i + num_layers if i < 0 else i
                if not 0 <= j < num_layers:
                    raise DriftkitError(f"Unknown layer {i}: the model has {num_layers} decoder layers; {valid}.")
                out.add(j)
        except ValueError:
            raise DriftkitError(f"Cannot parse layer selection {item!r}; {valid}.") from None
    return sorted(out)


@dataclass
class Batch:
    """What a probe's :meth:`Probe.finalize` sees of the batch being captured."""

    input_ids: torch.Tensor  # (B, S) right-padded
    attention_mask: torch.Tensor  # (B, S)
    lengths: list[int]


class Probe(Configurable, ABC):
    """Base class of probe plugins.

    Subclasses set ``name`` and ``description``, declare their options in ``options`` (name ->
    :class:`~driftkit.registry.options.Option` or a plain default; the CLI passes ``--probe-opt
    name=value`` and ``--layers`` to probes that declare them, already converted to the option's
    type, into ``self.opts``) and implement :meth:`sites` and :meth:`outputs`. Override
    :meth:`finalize` to derive stored arrays from recorded values, :meth:`static` for once-per-file
    arrays and :meth:`check` to verify the first batch.
    """

    plugin_kind: ClassVar[str] = "probe"
    name: ClassVar[str] = "probe"
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Any]] = {}

    # -- what to record ----------------------------------------------------------------------------
    def sites(self, layout: ModelLayout) -> list[Site]:
        """Module values to record (keys must be unique across probes; use your name as a prefix)."""
        raise NotImplementedError

    def outputs(self, layout: ModelLayout) -> list[Output]:
        """Arrays stored per token. Default: one activation array per site, stored under the site key."""
        return [Output(s.key, (layout.hidden_size,)) for s in self.sites(layout)]

    # -- after the forward pass --------------------------------------------------------------------
    def finalize(self, values: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Turn recorded ``(B, S, ...)`` values into ``(B, S, ...)`` arrays keyed by output path.

        ``values`` are on the model's device (a GPU in a GPU capture); ``batch`` is on the CPU. Return
        tensors on any device: the engine drops the padding and copies only the stored rows to the
        host, so reducing on the device is what keeps a GPU capture from moving (B, S, V)-sized data."""
        return {o: values[o] for o in values}

    def static(self, layout: ModelLayout) -> list[StaticArray]:
        """Arrays stored once per file."""
        return []

    def check(self, values: dict[str, torch.Tensor], batch: Batch, layout: ModelLayout, storage_dtype: str) -> None:
        """Verify the first batch; raise DriftkitError when what is stored cannot be trusted."""
        return None

    def describe(self) -> dict[str, Any]:
        """What goes into the file's config_json for this probe."""
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}", "options": self.opts}
