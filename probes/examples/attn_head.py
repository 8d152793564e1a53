"""A complete custom probe: record one attention head's output at one layer.

Use it as a template::

    driftkit capture smollm2-135m --prompts bundled:general-mix \\
        --probe probes/examples/attn_head.py:AttnHeadProbe --probe-opt layer=3 --probe-opt head=2 --out head.h5

An attention block's ``o_proj`` input is the concatenation of every head's output, so head ``h`` is
the slice ``[h * head_dim, (h + 1) * head_dim)`` of it. The probe asks the engine for that module's
input (a :class:`Site`), cuts the slice with ``select`` and declares the stored array's shape.
"""

from __future__ import annotations

from driftkit.registry.options import Option
from driftkit.registry.probe import ModelLayout, Output, Probe, Site, first_tensor, parse_layers


class AttnHeadProbe(Probe):
    name = "attn_head"
    description = "one attention head's output (input slice of o_proj) at one layer"
    options = {
        "layer": Option(0, "Decoder layer (negative: from the end)."),
        "head": Option(0, "Attention head index within the layer."),
        "module": Option("self_attn.o_proj", "Module (inside the layer) whose input holds the concatenated heads."),
    }

    def _geometry(self, layout: ModelLayout) -> tuple[int, int, int]:
        layer = parse_layers(str(self.opts["layer"]), layout.num_layers)[0]
        cfg = layout.model.config.get_text_config()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return layer, int(self.opts["head"]), int(head_dim)

    def sites(self, layout: ModelLayout) -> list[Site]:
        layer, head, hd = self._geometry(layout)
        lo, hi = head * hd, (head + 1) * hd
        return [
            Site(
                key=f"sites/attn_head.{layer}.{head}",
                module=f"{layout.layer(layer)}.{self.opts['module']}",
                io="input",
                select=lambda x: first_tensor(x)[..., lo:hi],
            )
        ]

    def outputs(self, layout: ModelLayout) -> list[Output]:
        layer, head, hd = self._geometry(layout)
        return [Output(f"sites/attn_head.{layer}.{head}", (hd,))]
