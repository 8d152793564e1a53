"""``residual``: each selected decoder layer's output (the residual stream) and the embedding output.

These are the representations the paper's PCA-shift and CKA analyses compare layer by layer.
"""
from __future__ import annotations

from typing import Any

from driftkit.registry.probe import ModelLayout, Output, Probe, Site, parse_layers
from driftkit.store.schema import EMBED_SITE, residual_site


class ResidualProbe(Probe):
    name = "residual"
    description = "decoder layer outputs (sites/residual.<L>) and the embedding output (sites/embed)"
    options: dict[str, Any] = {"layers": "all", "embed": True}

    def _layers(self, layout: ModelLayout) -> list[int]:
        return parse_layers(self.opts["layers"], layout.num_layers)

    def sites(self, layout: ModelLayout) -> list[Site]:
        out: list[Site] = []
        if str(self.opts["embed"]).lower() not in ("false", "0", "no"):
            out.append(Site(EMBED_SITE, layout.embed))
        out += [Site(residual_site(i), layout.layer(i)) for i in self._layers(layout)]
        return out
