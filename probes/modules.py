"""``attn`` and ``mlp``: the output of each selected layer's attention block or MLP block.

They show *where* inside a layer fine-tuning acts. Module names are found structurally (the first
child whose name contains ``attn`` / ``mlp``), so Llama, Qwen, Gemma and GPT-2 style models work.
"""

from __future__ import annotations

from driftkit.errors import DriftkitError
from driftkit.registry.options import Option
from driftkit.registry.probe import ModelLayout, Probe, Site, parse_layers


def _child(layout: ModelLayout, layer: int, needles: tuple[str, ...]) -> str:
    block = layout.model.get_submodule(layout.layer(layer))
    for name, _ in block.named_children():
        if any(n in name.lower() for n in needles):
            return f"{layout.layer(layer)}.{name}"
    children = ", ".join(n for n, _ in block.named_children())
    raise DriftkitError(
        f"Layer {layer} has no child named like {needles} (children: {children}); write a custom probe for this "
        "architecture."
    )


class _BlockProbe(Probe):
    prefix = ""
    needles: tuple[str, ...] = ()
    options = {"layers": Option("all", "Decoder layers to record: all, 0,4,8, every:4, -1 (from the end), 2-5.")}

    def sites(self, layout: ModelLayout) -> list[Site]:
        return [
            Site(f"sites/{self.prefix}.{i}", _child(layout, i, self.needles))
            for i in parse_layers(self.opts["layers"], layout.num_layers)
        ]


class AttnProbe(_BlockProbe):
    name = "attn"
    description = "attention block outputs (sites/attn.<L>), before the residual add"
    prefix = "attn"
    needles = ("attn", "attention")


class MlpProbe(_BlockProbe):
    name = "mlp"
    description = "MLP block outputs (sites/mlp.<L>), before the residual add"
    prefix = "mlp"
    needles = ("mlp", "feed_forward", "ffn")
