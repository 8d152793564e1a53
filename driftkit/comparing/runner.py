"""``driftkit.compare(paths, ...)``: check, pair, run analyses, return a :class:`Report`.

The first capture is the reference A (usually the base model); each other capture B is compared
against it. The core never imports an analysis by name: names are resolved through the registry
(entry points ``driftkit.analyses`` or ``path.py:Class``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftkit.comparing.engine import run_analyses
from driftkit.comparing.pair import CapturePair, CaptureReader, CompareOptions, Progress, check_comparable
from driftkit.errors import DriftkitError, opt
from driftkit.registry.analysis import Analysis

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.report.report import Report

SCHEMA = "driftkit.report/1"


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique labels: file stems, prefixed by the parent folder when stems collide."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    labels = [f"{p.parent.name}/{p.stem}" for p in paths]
    return labels if len(set(labels)) == len(labels) else [f"{i}:{s}" for i, s in enumerate(stems)]


def resolve_analyses(
    specs: Sequence[str | type[Analysis] | Analysis] | None,
    plugin_options: dict[str, dict[str, Any]],
    extra: Sequence[str | type[Analysis] | Analysis] = (),
) -> tuple[list[Analysis], set[str]]:
    """Instantiate the requested analyses (all registered ones when ``specs`` is None) plus ``extra``.

    Returns the instances and the names the user asked for explicitly: an explicit analysis that
    cannot run is an error, a default one is skipped with a note."""
    from driftkit import registry

    explicit_specs = list(specs) if specs is not None else []
    if specs is None:  # every registered analysis that runs by default (``Analysis.default``)
        specs = [n for n in registry.available("analysis") if getattr(registry.load("analysis", n), "default", True)]
    # Extras given by file or module are imported first, which registers their names, so
    # ``--analysis my.py:Mine --analyses kl,mine`` selects them by name; named ones run once.
    extra = [registry.load("analysis", s.strip()) if isinstance(s, str) else s for s in extra]
    named = {str(s).strip() for s in specs if isinstance(s, str)}
    extra = [e for e in extra if getattr(e, "name", None) not in named]
    all_specs = list(specs) + list(extra)
    out: list[Analysis] = []
    explicit: set[str] = set()
    for n, spec in enumerate(all_specs):
        is_explicit = n >= len(specs) or bool(explicit_specs)
        if isinstance(spec, Analysis):
            inst = spec
        else:
            cls = spec if isinstance(spec, type) else registry.load("analysis", str(spec).strip())
            if not (isinstance(cls, type) and issubclass(cls, Analysis)):
                raise DriftkitError(f"{spec!r} is not an Analysis subclass.")
            if not cls.name:
                raise DriftkitError(
                    f"Analysis class {cls.__name__} sets no 'name'; give it a short name (the JSON key of its result)."
                )
            inst = cls(**plugin_options.get(cls.name, {}))
        out.append(inst)
        if is_explicit:
            explicit.add(inst.name)
    names = [a.name for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DriftkitError(f"Analysis {', '.join(dup)} requested twice; name each analysis once.")
    unknown_opts = sorted(set(plugin_options) - set(names))
    if unknown_opts:
        raise DriftkitError(
            f"Options were given for {', '.join(unknown_opts)}, which is not among the analyses run "
            f"({', '.join(names)})."
        )
    return out, explicit


def _capture_info(r: CaptureReader, label: str) -> dict[str, Any]:
    return {
        "label": label,
        "path": str(r.path),
        "model": r.model,
        "weights_sha256": r.attrs.get("weights_sha256"),
        "tokenizer_sha256": r.attrs.get("tokenizer_sha256"),
        "n_samples": r.n_samples,
        "n_tokens": r.n_tokens,
        "complete": r.complete,
        "store": r.store,
    }


def compare(
    paths: Sequence[str | Path],
    analyses: Sequence[str | type[Analysis] | Analysis] | None = None,
    *,
    positions: str = "auto",
    layers: str | list[int] | None = None,
    domains: Sequence[str] | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    allow_incomplete: bool = False,
    chunk_tokens: int = 4096,
    options: dict[str, dict[str, Any]] | None = None,
    progress: Progress | None = None,
    extra_analyses: Sequence[str | type[Analysis] | Analysis] = (),
    jobs: int = 1,
    skip_unfit: bool = False,
) -> Report:
    """Compare captures: the first is the reference A, each other one is compared against it.

    ``positions``: ``auto`` (default: response tokens when both captures hold responses, else all),
    ``all``, ``prompt`` or ``response``; the positions used are recorded in every pair and result.
    ``analyses``: registered names (``"cka"``, ``"kl"``, ...), ``"file.py:Class"`` specs, classes or
    instances; None runs every registered analysis the captures support; ``extra_analyses`` run in
    addition (e.g. a ``file.py:Class`` next to the defaults). ``options`` holds
    per-analysis plugin options, e.g. ``{"cka": {"unit": "sample"}}``. Returns a
    :class:`~driftkit.report.Report` (``.show()``, ``.to_json()``, ``.to_frame()``, ``.to_html()``).
    ``jobs``: processes for the layers pass (CKA, PCA shift, ...); the results are identical to 1.
    ``skip_unfit``: a named analysis the files cannot feed (token CKA on pooled captures) is skipped
    with a note, as a default one is, instead of refused (``driftkit run`` names its analyses once for
    captures of any ``store``).

    Long because of its documented keyword parameters and the per-pair bookkeeping (checks, skipped analyses, timings)
    that the JSON report records.
    """
    from driftkit.report.report import Report

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise DriftkitError(
            "compare needs at least two capture files: the reference (A) first, then one or more to compare."
        )
    opts = CompareOptions(
        positions=positions,
        layers=layers,
        domains=list(domains) if domains else None,
        max_tokens=max_tokens,
        seed=seed,
        chunk_tokens=chunk_tokens,
        allow_incomplete=allow_incomplete,
        plugin_options=dict(options or {}),
    )
    opts.validate()
    if jobs < 1:
        raise DriftkitError(f"{opt('jobs', jobs)} must be at least 1 (processes for the layers pass).")
    instances, explicit = resolve_analyses(analyses, opts.plugin_options, extra_analyses or ())
    labels = _labels(paths)
    readers = [CaptureReader(p, allow_incomplete=allow_incomplete) for p in paths]
    try:
        pairs: list[CapturePair] = []
        for r, label in zip(readers[1:], labels[1:]):
            notes = check_comparable(readers[0], r)  # all checks before any math
            pairs.append(CapturePair(readers[0], r, opts, labels[0], label, progress, notes))
        bodies: list[dict[str, Any]] = []
        for pair in pairs:
            if pair.n_samples == 0:
                raise DriftkitError(
                    f"No samples left to compare between {pair.a.path} and {pair.b.path} after the selection "
                    f"(domains {opts.domains}, {opt('allow_incomplete', allow_incomplete)})."
                )
            runnable: list[Analysis] = []
            skipped: dict[str, str] = {}  # analysis -> why (JSON "skipped"; the terminal shows the notes)
            for an in instances:
                reason = an.check_layers(pair) or an.check(pair)  # --store first: what the files hold
                if reason is not None:
                    if an.name in explicit and not skip_unfit:
                        raise DriftkitError(
                            f"Analysis {an.name!r} cannot run on {pair.a.path} vs {pair.b.path}: {reason}."
                        )
                    pair.notes.append(f"{an.name} skipped: {reason}")
                    skipped[an.name] = reason
                    continue
                runnable.append(an)
            if pair.layer_rows == "pooled" and opts.max_tokens is not None and runnable:
                pair.notes.append("--max-tokens does not subsample pooled layer states (one vector per sample)")
            # one logits pass and one read per layer, shared by every analysis (driftkit.comparing.engine)
            results, timings = run_analyses(pair, runnable, jobs=jobs)
            for result in results.values():
                if isinstance(result, dict):  # every summary records the positions it used
                    result.setdefault("positions", pair.positions)
            bodies.append(
                {
                    "a": pair.label_a,
                    "b": pair.label_b,
                    "positions": pair.positions,
                    "n_samples": pair.n_samples,
                    "n_tokens": pair.n_tokens,
                    "notes": pair.notes,
                    "skipped": skipped,
                    "seconds": timings,
                    "analyses": results,
                }
            )
        captures = [_capture_info(r, label) for r, label in zip(readers, labels)]
    finally:
        for r in readers:
            r.close()
    return Report.build(SCHEMA, captures, opts.to_dict(), bodies, {a.name: a for a in instances})
