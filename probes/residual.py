"""``residual``: each selected decoder layer's output (the residual stream) and the embedding output.

These are the representations the paper's PCA-shift and CKA analyses compare layer by layer.
"""

from __future__ import annotations

from driftkit.registry.options import Option
from driftkit.registry.probe import ModelLayout, Probe, Site, parse_layers
from driftkit.store.schema import EMBED_SITE, residual_site


class ResidualProbe(Probe):
    name = "residual"
    description = "decoder layer outputs (sites/residual.<L>) and the embedding output (sites/embed)"
    options = {
        "layers": Option("all", "Decoder layers to record: all, 0,4,8, every:4, -1 (from the end), 2-5."),
        "embed": Option(True, "Also record the embedding output (sites/embed, the paper's layer 0)."),
    }

    def _layers(self, layout: ModelLayout) -> list[int]:
        return parse_layers(self.opts["layers"], layout.num_layers)

    def sites(self, layout: ModelLayout) -> list[Site]:
        out: list[Site] = []
        if self.opts["embed"]:
            out.append(Site(EMBED_SITE, layout.embed))
        out += [Site(residual_site(i), layout.layer(i)) for i in self._layers(layout)]
        return out
