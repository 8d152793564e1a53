"""The Analysis plugin kind: a computation on two comparable captures (A = reference, B = other).

Why this shape: ``driftkit compare`` checks once that the two files describe the same tokens, then
hands every analysis a :class:`~driftkit.comparing.pair.CapturePair` that already knows the user's
selection (positions, layers, domains, token subsample) and streams aligned chunks of any dataset
from both files. An analysis therefore only says what it needs (:meth:`Analysis.requirements`),
does its math chunk by chunk in :meth:`Analysis.run`, and returns a JSON-able dict; the report
machinery asks it for a terminal view (:meth:`render`), headline numbers for the side-by-side table
of several captures (:meth:`summary`) and figures for the HTML report (:meth:`figures`).

A third-party analysis is a subclass found through the ``driftkit.analyses`` entry point group or
given as ``path/to/file.py:ClassName`` (see docs/compare.md).
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from driftkit.registry.options import Configurable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from rich.console import RenderableType

    from driftkit.comparing.engine import LayerChunk, LogitsChunk
    from driftkit.comparing.pair import CapturePair


@dataclass(frozen=True)
class Figure:
    """One figure of the HTML report: an inline SVG document and a caption."""

    title: str
    svg: str
    caption: str = ""


class Analysis(Configurable, ABC):
    """Base class of analysis plugins.

    Subclasses set ``name`` (the key under ``analyses`` in the JSON report), ``title`` and
    ``description``, implement :meth:`run`, and usually :meth:`requirements`, :meth:`summary`,
    :meth:`render` and :meth:`figures`. Plugin-specific options arrive as keyword arguments
    (``driftkit compare --opt cka.unit=sample`` -> ``CKAAnalysis(unit="sample")``) and are read from
    ``self.opts``; declare them in ``options`` as :class:`~driftkit.registry.options.Option` (or
    plain defaults) so they are typed, validated and listed by ``driftkit plugins NAME``.
    """

    plugin_kind: ClassVar[str] = "analysis"
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Any]] = {}

    # -- what it needs ---------------------------------------------------------------------------
    def requirements(self, pair: CapturePair) -> list[str]:
        """HDF5 dataset paths both captures must hold (e.g. ``final/hidden``)."""
        return []

    def check(self, pair: CapturePair) -> str | None:
        """Why this analysis cannot run on ``pair`` (None when it can). Default: missing datasets."""
        missing = [p for p in self.requirements(pair) if not (pair.a.has(p) and pair.b.has(p))]
        if missing:
            return f"needs {', '.join(missing)} in both captures (record them with the matching probe)"
        return None

    #: the layer-row kinds (``driftkit capture --store``) this analysis can work on: ``"tokens"`` (a row
    #: per token), ``"sampled"`` (``sample:K``: K token rows per sample, the same positions in both files,
    #: streamed through ``on_layer`` like tokens) and ``"pooled"`` (3 vectors per sample; read them with
    #: ``pair.pooled_means(site)``, ``on_layer`` gets no chunks). None: the analysis reads no layer
    #: sites (KL, ranks). An analysis that consumes ``"layers"`` without declaring it needs per-token
    #: rows (``{"tokens", "sampled"}``). ``driftkit compare`` skips (and reports) an analysis whose
    #: need the files do not meet, before calling :meth:`check`.
    needs_layers: ClassVar[frozenset[str] | None] = None

    def layer_needs(self) -> frozenset[str] | None:
        """The effective :attr:`needs_layers` (override when it depends on options, e.g. CKA's unit)."""
        if self.needs_layers is None and "layers" in self.consumes:
            return frozenset({"tokens", "sampled"})
        return None if self.needs_layers is None else frozenset(self.needs_layers)

    def check_layers(self, pair: CapturePair) -> str | None:
        """Why the files' layer rows do not suit this analysis (None when they do, or it reads no layers)."""
        needs = self.layer_needs()
        if needs is None:
            return None
        problem = pair.layer_rows_problem()
        if problem is not None:
            return problem
        if pair.layer_rows not in needs:
            fix = "tokens" if "tokens" in needs else "pooled"
            return (
                f"needs layer sites stored as {' or '.join(sorted(needs))}, and the captures hold "
                f"{pair.layer_rows_label} layer states (capture with --store {fix})"
            )
        return None

    # -- the work --------------------------------------------------------------------------------
    #: what the analysis reads through the compare engine's shared passes: ``"logits"`` (both
    #: models' rebuilt next-token logits, :meth:`on_logits`) and/or ``"layers"`` (each layer's rows
    #: from both captures, :meth:`on_layer`). Empty: the analysis streams its own data in :meth:`run`.
    consumes: ClassVar[frozenset[str]] = frozenset()
    #: True when :meth:`on_logits` overwrites the logits blocks (used as scratch): the engine then
    #: feeds it after every read-only consumer (or gives it a copy when several overwrite).
    scratch_logits: ClassVar[bool] = False
    #: bytes per (position, vocabulary entry) of the analysis's own logits-sized scratch buffers
    #: (e.g. 12 for three float32 blocks); the engine sizes its blocks so the total stays bounded.
    logits_scratch_bytes: ClassVar[int] = 0
    #: the standard per-position quantities :meth:`on_logits` asks the chunk for (``"kl"``:
    #: ``chunk.kl()``, ``"ranks"``: ``chunk.ranks()``). Each is computed once per block for every
    #: analysis that asks; declaring it lets the engine budget its scratch once for the pass.
    logits_shared: ClassVar[frozenset[str]] = frozenset()

    def run(self, pair: CapturePair) -> dict[str, Any]:
        """Compute the result (a JSON-able dict) by streaming chunks through ``pair``.

        Override either this (the analysis reads what it wants itself) or the hooks below with a
        non-empty :attr:`consumes`; then ``run`` drives the shared passes for this analysis alone,
        and ``driftkit compare`` drives them once for every analysis of the comparison."""
        if not self.consumes:
            raise NotImplementedError(
                f"analysis {self.name!r} implements neither run(pair) nor the consumes/on_logits/on_layer/finish hooks"
            )
        from driftkit.comparing.engine import run_analyses

        return run_analyses(pair, [self])[0][self.name]

    # -- streaming hooks (analyses with ``consumes``; called by driftkit.comparing.engine) ------------
    def start(self, pair: CapturePair) -> None:
        """Before any chunk: set up accumulators (O(d^2) or O(samples x d), never O(tokens))."""

    def logits_mask(self, pair: CapturePair) -> np.ndarray:
        """(T,) positions whose logits this analysis wants. Default: the predictive mask of the
        selection (positions whose next token is in the selected part)."""
        return pair.mask("predictive")

    def max_logits_rows(self) -> int:
        """Most positions per logits block this analysis wants (the engine takes the smallest)."""
        return 512

    def on_logits(self, chunk: LogitsChunk) -> None:
        """One block of positions with both models' logits (``chunk.logits_a``/``logits_b``, (n, V)
        float32, read-only unless :attr:`scratch_logits`), the next-token ids and domain indices.
        Reduce it to per-position numbers now: the buffers are reused for the next block. Quantities
        other analyses may want too come from the chunk's per-block memo (``chunk.kl()``,
        ``chunk.ranks()``, ``chunk.shared(key, compute)``), computed once for all of them."""

    def layers_mask(self, pair: CapturePair) -> np.ndarray:
        """(T,) tokens whose layer rows this analysis wants. Default: the states mask."""
        return pair.mask("states")

    def layer_sites(self, pair: CapturePair) -> list[tuple[int | str, str]]:
        """``(layer, dataset path)`` this analysis wants. Default: every selected layer."""
        return pair.layer_sites()

    def start_layer(self, pair: CapturePair, layer: int | str, site: str) -> None:
        """Before the first chunk of a layer."""

    def on_layer(self, chunk: LayerChunk) -> None:
        """A chunk of one layer's rows from both captures (``chunk.xa``, ``chunk.xb`` float32,
        ``chunk.float64()``; read-only). Share per-chunk work with ``chunk.shared`` and per-layer
        accumulators with ``pair.layer_shared`` (docs/compare.md)."""

    def finish_layer(self, pair: CapturePair, layer: int | str, site: str) -> None:
        """After the last chunk of a layer (finalise that layer's numbers, free its accumulators)."""

    def finish(self, pair: CapturePair) -> dict[str, Any]:
        """After all passes: the result (a JSON-able dict)."""
        raise NotImplementedError(f"analysis {self.name!r} declares consumes but implements no finish(pair)")

    # -- presentation ----------------------------------------------------------------------------
    def summary(self, result: Mapping[str, Any]) -> dict[str, float]:
        """A few headline numbers (for the side-by-side table of several captures)."""
        out: dict[str, float] = {}
        for k, v in (result.get("summary") or {}).items():
            if isinstance(v, (int, float)):
                out[k] = v if type(v) is int else float(v)  # counts stay counts ("24", not "24.0000")
        return out

    def render(self, result: Mapping[str, Any]) -> RenderableType:
        """A rich renderable for the terminal report. Default: the summary as a small table."""
        from rich.table import Table

        t = Table(title=self.title or self.name, title_justify="left", show_header=True)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in self.summary(result).items():
            t.add_row(k, fmt(v))
        return t

    def figures(self, results: Mapping[str, Mapping[str, Any]]) -> list[Figure]:
        """Figures for the HTML report; ``results`` maps each compared capture's label to its result
        so one figure can overlay all pairs."""
        return []

    # -- the study report (``driftkit run`` / ``demo``) -----------------------------------------------
    # Why here: the pipeline and its report iterate over whatever analyses ran and name none, so an
    # analysis (bundled or a user's) brings its own part of the study. Every hook has a default.

    #: run by ``driftkit compare`` when no analyses are named; False for slow or optional ones
    default: ClassVar[bool] = True

    def study_entry(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """What the study's JSON records of this analysis for one tuned model (merged into
        ``representations.<model>`` or ``distributions.<model>``). Default: ``{name: summary}``."""
        return {self.name: self.summary(result)}

    def study_rows(self, result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
        """Headline rows of the study's drift table for one tuned model: ``(label, value, format)``,
        the format a ``format()`` spec such as ``".3f"``. Default: the :meth:`summary` numbers."""
        return [(k, v, ".3f") for k, v in self.summary(result).items()]

    def drift_measures(self, result: Mapping[str, Any]) -> dict[str, float]:
        """Headline drift numbers, oriented so that larger means B moved further from A; the study
        compares tuned models on them ("x drifts more than y on 3/3 measures"). Default: none."""
        return {}

    def drift_by_domain(self, result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """``{measure: {domain: value}}``: drift per prompt domain, set against each domain's score
        change in the study's drift-vs-transfer table and figure. Default: none."""
        return {}

    def findings(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """One-line findings for the study, generated from the numbers; ``results`` maps each tuned
        model's label to its result. Say "no measurable change" rather than quote zeros. Default: none."""
        return []

    # -- interactive HTML (``driftkit compare --html`` and the study report) ------------------------
    def html_sections(self, results: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Raw HTML fragments placed in this analysis's section of the compare report (after its
        figures) and in the study report; ``results`` maps each compared capture's (or tuned model's)
        label to its result. Why raw HTML: a view that is not a static figure (e.g. an interactive
        token view) brings its own markup, inline CSS and inline script. Each fragment must be
        self-contained (no network), work when several fragments share a page, and escape any text
        taken from the data. Default: none."""
        return []

    # -- layers across processes (``driftkit compare --jobs N``) ----------------------------------------
    # Why a hook pair and not pickled analyses: a worker process computes some layers with its own
    # fresh instance (same class, same options, its own ``start``), and only what ``finish_layer``
    # kept for a layer has to reach the parent's instance. The pair keeps that explicit, small and
    # plain (lists, dicts, numbers, arrays); nothing is ever unpickled from a file.

    def layer_state(self, layer: int | str) -> Any:
        """In a worker, right after :meth:`finish_layer` of ``layer``: what that call kept for this
        layer (plain picklable data). Return ``NotImplemented`` (the default) when the analysis cannot
        run its layers in other processes; ``--jobs`` then runs it in the main process, with a note."""
        return NotImplemented

    def load_layer_state(self, layer: int | str, state: Any) -> None:
        """In the main process, in the layer order of a one-process pass: take in what a worker's
        :meth:`layer_state` returned, so that :meth:`finish` gives exactly what ``--jobs 1`` gives."""
        raise NotImplementedError(f"analysis {self.name!r} implements layer_state but not load_layer_state")


def fmt(v: Any, digits: int = 4) -> str:
    """Human formatting for report numbers (None/NaN as an en dash)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    return str(v)
