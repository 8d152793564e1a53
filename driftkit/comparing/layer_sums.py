"""Accumulators the layer analyses share, through the engine's per-layer store.

Why: ``cka`` (per token) and ``similarity`` need the same d x d float64 sums of a layer's rows, and
``pca_shift``, ``similarity`` and ``cka unit=sample`` the same per-sample pooled sums. Each used to
fill its own (or share through a module-level pool that counted its users and skipped chunks by
token index). Here the first analysis that asks in ``start_layer`` creates the accumulator in the
layer's store (:meth:`CapturePair.layer_shared <driftkit.comparing.pair.CapturePair.layer_shared>`,
opened and closed by the engine around each layer, in ``--jobs`` workers too), the others get the
same object, and each chunk is added once, by whichever asks first
(:meth:`LayerChunk.shared <driftkit.comparing.engine.LayerChunk.shared>`), from the chunk's one
float64 conversion (:meth:`LayerChunk.float64 <driftkit.comparing.engine.LayerChunk.float64>`).

The sums are the ones each analysis computed alone, in the same order, so results are
bit-identical whether an analysis runs alone or with the others. Keys name the site's mask
(:func:`~driftkit.comparing.engine.mask_key`): consumers whose masks differ keep their own sums.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from driftkit.comparing.engine import mask_key
from driftkit.metrics.pca import SamplePooler
from driftkit.metrics.similarity import SimilarityAccumulator

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.comparing.engine import LayerChunk
    from driftkit.comparing.pair import CapturePair

#: store / chunk-memo key prefixes (with the mask's digest)
LAYER_SUMS, SAMPLE_SUMS = "driftkit.layer_sums", "driftkit.sample_sums"


class LayerSums:
    """A layer's CKA sums (:class:`~driftkit.metrics.similarity.SimilarityAccumulator`) for every
    consumer of one mask; :meth:`add` each chunk from ``on_layer``."""

    def __init__(self, key: tuple[str, str], acc: SimilarityAccumulator) -> None:
        self.key, self.acc = key, acc

    def add(self, chunk: LayerChunk) -> None:
        """Add ``chunk`` unless another consumer already did."""
        chunk.shared(self.key, self._update)

    def _update(self, chunk: LayerChunk) -> None:
        self.acc.update(*chunk.float64())


def layer_sums(
    pair: CapturePair, site: str, mask: np.ndarray, fourth: bool = False, standardized: bool = False
) -> LayerSums:
    """The shared sums of ``site`` over ``mask`` (ask in ``start_layer``). ``fourth=True`` keeps the
    fourth moments too, ``standardized=True`` takes every product in float64 (the standardized
    measures need it: :class:`~driftkit.metrics.similarity.Float64Stats`), whichever analysis asked
    first (no chunk has been added yet then). Raw CKA alone lets small drift take float32 products."""
    key = (LAYER_SUMS, mask_key(mask))
    d_a, d_b = pair.a.shape(site)[1], pair.b.shape(site)[1]
    sums: LayerSums = pair.layer_shared(
        key, lambda: LayerSums(key, SimilarityAccumulator(d_a, d_b, fourth=False, standardized=False))
    )
    if fourth:
        sums.acc.with_fourth()
    if standardized:
        sums.acc.with_standardized()
    return sums


class SampleSums:
    """Both captures' per-sample pooled sums of a layer (two
    :class:`~driftkit.metrics.pca.SamplePooler`) for every consumer of one mask."""

    def __init__(self, key: tuple[str, str], pools: tuple[SamplePooler, SamplePooler], token_sample: Any) -> None:
        self.key, self.pools, self.token_sample = key, pools, token_sample

    def add(self, chunk: LayerChunk) -> None:
        """Add ``chunk`` unless another consumer already did."""
        chunk.shared(self.key, self._update)

    def _update(self, chunk: LayerChunk) -> None:
        xa, xb = chunk.float64()  # float64 rows go into the float64 sums without another copy
        s = self.token_sample[chunk.idx]
        self.pools[0].update(s, xa)
        self.pools[1].update(s, xb)

    def means(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``((means_a, counts_a), (means_b, counts_b))``, as :meth:`SamplePooler.means`, computed
        once in the sums' memory and shared by every consumer, read-only
        (:meth:`SamplePooler.finish_means`; ask in ``finish_layer``, after the last chunk). They are
        what grows with the sample count: one copy per capture instead of a copy per consumer on top
        of the sums."""
        return self.pools[0].finish_means(), self.pools[1].finish_means()


def sample_sums(pair: CapturePair, site: str, mask: np.ndarray) -> SampleSums:
    """The shared per-sample pooled sums of ``site`` over ``mask`` (ask in ``start_layer``)."""
    key = (SAMPLE_SUMS, mask_key(mask))

    def make() -> SampleSums:
        n = pair.a.n_samples
        pools = (SamplePooler(n, pair.a.shape(site)[1]), SamplePooler(n, pair.b.shape(site)[1]))
        return SampleSums(key, pools, pair.token_sample)

    return pair.layer_shared(key, make)
