"""Score records (``driftkit.scores/1``, DESIGN.md section 5): write, read, validate.

A score file is one JSON summary::

    {"schema": "driftkit.scores/1", "model": "...",
     "scores": [{"benchmark": "math500", "domain": "math", "metric": "accuracy", "value": 60.4,
                 "n": 500, "stderr": 2.1, "primary": true}, ...],
     "provenance": {"settings": {...}, "benchmarks": {"math500": {...}}, "model": {...}, ...}}

plus, beside it, ``<stem>.items.jsonl``: one line per (benchmark, item) with the model's output and
its per-item score, so two models can be compared item by item (paired tests, error analysis).

Why ``provenance.settings`` and ``provenance.benchmarks`` are separated from ``provenance.model``:
the first two must be equal between a base model and a tuned model for their scores to be
comparable (``driftkit transfer`` checks them); the last one differs by construction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftkit.atomic import atomic_write
from driftkit.errors import DriftkitError, opt

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.metrics.transfer import TransferResult

SCHEMA = "driftkit.scores/1"
DOMAINS = ("math", "other", "non")
_REQUIRED = ("benchmark", "domain", "metric", "value", "n")


#: columns of :meth:`Scores.to_frame`, one row per score record
SCORE_COLUMNS = ("model", "benchmark", "domain", "metric", "value", "n", "stderr", "primary")


class Scores(dict):
    """A ``driftkit.scores/1`` document: the plain dict (``doc["scores"]``, JSON as written) plus views.

    Why a dict subclass: score documents are read, indexed and re-serialised by scripts and by
    ``driftkit transfer``; the subclass keeps all of that working and adds the views every driftkit
    result offers (:meth:`to_frame`, :meth:`to_json`).
    """

    @property
    def model(self) -> str:
        return str(self["model"])

    def primary(self) -> dict[str, dict[str, Any]]:
        """One record per benchmark (see :func:`primary_scores`)."""
        return primary_scores(self)

    def to_frame(self) -> Any:
        """Tidy table, one row per score record; columns :data:`SCORE_COLUMNS` (``primary``: the
        record is its benchmark's headline metric, the one ``driftkit transfer`` uses)."""
        import pandas as pd

        prim = {id(r) for r in primary_scores(self).values()}
        rows = [
            {
                "model": self["model"],
                "benchmark": r["benchmark"],
                "domain": r["domain"],
                "metric": r["metric"],
                "value": float(r["value"]),
                "n": r.get("n"),
                "stderr": r.get("stderr"),
                "primary": id(r) in prim,
            }
            for r in self["scores"]
        ]
        return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The document as JSON text; written atomically to ``path`` when given."""
        text = json.dumps(dict(self), indent=indent, ensure_ascii=False, default=str) + "\n"
        if path is not None:
            atomic_write(path, text)
        return text


def items_path(summary_path: str | Path) -> Path:
    """Where the per-item results of a summary file live: ``scores/base.json`` -> ``scores/base.items.jsonl``."""
    p = Path(summary_path)
    return p.with_name(p.name[: -len(p.suffix)] + ".items.jsonl" if p.suffix else p.name + ".items.jsonl")


def validate(doc: Any, where: str = "score file") -> dict[str, Any]:
    """Check a parsed score document against ``driftkit.scores/1``; raise DriftkitError naming the problem."""
    if not isinstance(doc, dict):
        raise DriftkitError(
            f'{where} is not a JSON object; a driftkit score file starts with {{"schema": "{SCHEMA}", ...}}.'
        )
    if doc.get("schema") != SCHEMA:
        raise DriftkitError(
            f"{where} has schema {doc.get('schema')!r}, expected {SCHEMA!r}. Produce it with 'driftkit bench' "
            f"(or 'driftkit bench --import-lm-eval DIR' for lm-evaluation-harness results)."
        )
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise DriftkitError(f"{where} has no 'model' name; set \"model\" to the checkpoint's name.")
    scores = doc.get("scores")
    if not isinstance(scores, list) or not scores:
        raise DriftkitError(f"{where} has no 'scores' list (or it is empty); it holds no results to use.")
    seen: set[tuple[str, str]] = set()
    for i, s in enumerate(scores):
        if not isinstance(s, dict):
            raise DriftkitError(f"{where}: scores[{i}] is not an object.")
        missing = [k for k in _REQUIRED if k not in s]
        if missing:
            raise DriftkitError(
                f"{where}: scores[{i}] lacks {', '.join(missing)}; each score needs {', '.join(_REQUIRED)}."
            )
        if s["domain"] not in DOMAINS:
            raise DriftkitError(
                f"{where}: scores[{i}] ({s['benchmark']}) has domain {s['domain']!r}; use one of {', '.join(DOMAINS)}."
            )
        v = s["value"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not (0.0 <= v <= 100.0):
            raise DriftkitError(
                f"{where}: scores[{i}] ({s['benchmark']} {s['metric']}) has value {v!r}; values are on a 0-100 scale "
                f"(a fraction like 0.6 must be written as 60)."
            )
        key = (s["benchmark"], s["metric"])
        if key in seen:
            raise DriftkitError(
                f"{where}: {s['benchmark']} {s['metric']} appears twice; keep one record per benchmark and metric."
            )
        seen.add(key)
    doc.setdefault("provenance", {})
    return doc


def write_scores(
    path: str | Path,
    model: str,
    scores: list[dict[str, Any]],
    provenance: dict[str, Any],
    items: Iterable[dict[str, Any]] | None = None,
) -> Path:
    """Write a score summary (and its per-item file when ``items`` is given), each atomically.

    The items file is written first and its hash recorded in the summary, so a summary never points
    at an items file from another run.
    """
    path = Path(path)
    prov = dict(provenance)
    if items is not None:
        ip = items_path(path)
        h = hashlib.sha256()

        def _w(fh: Any) -> None:
            for rec in items:
                line = json.dumps(rec, ensure_ascii=False, default=str) + "\n"
                h.update(line.encode("utf-8"))
                fh.write(line)

        atomic_write(ip, _w)
        prov["items_file"] = ip.name
        prov["items_sha256"] = h.hexdigest()
    doc = validate({"schema": SCHEMA, "model": model, "scores": scores, "provenance": prov}, str(path))
    atomic_write(path, lambda fh: fh.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"))
    return path


def read_scores(path: str | Path) -> Scores:
    """Read and validate a score summary (a :class:`Scores`: a dict with ``to_frame``/``to_json``)."""
    p = Path(path)
    if not p.is_file():
        raise DriftkitError(f"Score file {p} does not exist. Create it with 'driftkit bench MODEL --out {p}'.")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DriftkitError(
            f"Score file {p} is not valid JSON ({exc}); it may be truncated. Re-create it with 'driftkit bench'."
        ) from exc
    return Scores(validate(doc, f"score file {p}"))


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std, ddof=1) of per-item values."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mu = sum(values) / n
    if n < 2:
        return mu, 0.0
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return mu, math.sqrt(var / n)


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes (provenance hashes of item ids and prompt templates)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_items(summary_path: str | Path) -> list[dict[str, Any]]:
    """The per-item results beside a summary (empty list when the summary has none, e.g. lm-eval imports without
    samples)."""
    ip = items_path(summary_path)
    if not ip.is_file():
        return []
    from driftkit.parsing import read_jsonl

    return read_jsonl(ip, "Per-item file")


def primary_scores(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One record per benchmark: the one flagged ``primary`` (else the benchmark's first record)."""
    out: dict[str, dict[str, Any]] = {}
    for s in doc["scores"]:
        b = s["benchmark"]
        if b not in out or (s.get("primary") and not out[b].get("primary")):
            out[b] = s
    return out


# ----------------------------------------------------------------------------- comparability & TI
def _diff_dicts(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values (keys in either)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_dicts(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: {a!r} vs {b!r}"]


def comparability_problems(
    base: dict[str, Any], other: dict[str, Any], base_name: str = "base", other_name: str = "model"
) -> list[str]:
    """Why two score documents should not be compared (empty list when they can).

    Checked: the set of benchmarks (primary records), each benchmark's domain, primary metric and
    sample count, the run-wide settings (chat template, think mode, generation) and each
    benchmark's provenance (dataset, revision, source hub/fixture, items, prompt template, budget).
    """
    problems: list[str] = []
    pb, po = primary_scores(base), primary_scores(other)
    missing, extra = sorted(set(pb) - set(po)), sorted(set(po) - set(pb))
    if missing:
        problems.append(f"{other_name} lacks benchmark(s) {', '.join(missing)} that {base_name} has")
    if extra:
        problems.append(f"{other_name} has benchmark(s) {', '.join(extra)} that {base_name} lacks")
    bprov, oprov = base.get("provenance") or {}, other.get("provenance") or {}
    for b in sorted(set(pb) & set(po)):
        x, y = pb[b], po[b]
        for key in ("domain", "metric", "n"):
            if x.get(key) != y.get(key):
                problems.append(f"{b}: {key} {x.get(key)!r} in {base_name} vs {y.get(key)!r} in {other_name}")
        for d in _diff_dicts((bprov.get("benchmarks") or {}).get(b), (oprov.get("benchmarks") or {}).get(b)):
            problems.append(f"{b} settings differ: {d}")
    for d in _diff_dicts(bprov.get("settings"), oprov.get("settings")):
        problems.append(f"run settings differ: {d}")
    return problems


def transfer(
    base: str | Path | dict[str, Any],
    models: list[str | Path | dict[str, Any]],
    sigma: str | dict[str, float] = "pooled",
    force: bool = False,
    ddof: int = 0,
    warn: Any = None,
) -> TransferResult:
    """The transferability index of each model against ``base`` from score files or documents.

    Refuses (DriftkitError) when benchmarks or settings differ between base and a model, naming
    each difference, unless ``force``: then the common benchmarks are used and the differences are
    listed under ``forced`` in the result (and passed to ``warn`` if given). Returns a
    ``driftkit.transfer/1`` document as a :class:`~driftkit.metrics.transfer.TransferResult` (a dict
    with ``to_frame``/``to_json``).

    Long because it validates every input document (settings, benchmarks, sigma) before any arithmetic, each with its
    own message.
    """
    from driftkit.metrics.transfer import TransferResult, transferability

    def _load(x: Any) -> tuple[dict[str, Any], str | None]:
        if isinstance(x, dict):
            return validate(x, "score document"), None
        return read_scores(x), str(x)

    bdoc, bfile = _load(base)
    if not models:
        raise DriftkitError(f"Give at least one tuned model's score file besides {opt('base', None)}.")
    loaded = [_load(m) for m in models]
    names: list[str] = []
    for doc, f in loaded:
        n = doc["model"]
        if n in names or n == bdoc["model"] and f is not None:
            n = f"{n} ({Path(f).name})" if f else f"{n} #{len(names) + 1}"
        names.append(n)
    forced: list[str] = []
    for (doc, _f), n in zip(loaded, names):
        probs = comparability_problems(bdoc, doc, f"base {bdoc['model']}", n)
        if probs and not force:
            raise DriftkitError(
                f"The scores of {n} and the base {bdoc['model']} are not comparable: "
                + "; ".join(probs[:8])
                + ("; ..." if len(probs) > 8 else "")
                + f". Re-run 'driftkit bench' with the same benchmarks and settings for both, or pass {opt('force')} "
                "to compute on the common benchmarks anyway (the differences are recorded in the result)."
            )
        forced += [f"{n}: {p}" for p in probs]
    if forced and warn:
        for p in forced:
            warn(p)
    pb = primary_scores(bdoc)
    common = set(pb)
    for doc, _ in loaded:
        common &= set(primary_scores(doc))
    if not common:
        raise DriftkitError("The base and the models share no benchmark; there is nothing to compare.")
    domains = {b: pb[b]["domain"] for b in common}
    base_vals = {b: float(pb[b]["value"]) for b in common}
    model_vals = {n: {b: float(primary_scores(doc)[b]["value"]) for b in common} for (doc, _), n in zip(loaded, names)}
    res = transferability(base_vals, model_vals, domains, sigma=sigma, ddof=ddof)
    for (_doc, f), n in zip(loaded, names):
        res["models"][n]["scores"] = model_vals[n]
        res["models"][n]["file"] = f
    notes = ti_notes(res)
    return TransferResult(
        {
            "schema": "driftkit.transfer/1",
            "base": {"model": bdoc["model"], "file": bfile, "scores": base_vals},
            "benchmarks": dict(sorted(domains.items(), key=lambda kv: (DOMAINS.index(kv[1]), kv[0]))),
            **res,
            "forced": forced,
            "notes": notes,
        }
    )


def ti_notes(res: dict[str, Any]) -> list[str]:
    """Say why a TI is null (``models.<m>.ti_undefined_reason`` and a top-level note), never leave it bare.

    TI_g = 100 * DI_g / DI_math is undefined when DI_math is 0. The usual cause is that no math
    score moved: then every delta is 0, the (pooled) sigma is 0 and every normalised change is 0.
    """
    notes: list[str] = []
    for m, r in res["models"].items():
        if all(v is not None for v in r["ti"].values()) or r["di"].get("math") is None:
            continue
        math = {b: x for b, x in r["benchmarks"].items() if x["group"] == "math"}
        sig = r.get("sigma", {}).get("math")
        if math and all(x["delta"] == 0 for x in math.values()):
            why = (
                f"TI is undefined for {m}: no math score changed from the base ({', '.join(math)}: delta 0), "
                f"so DI_math = 0 and TI = 100 * DI_g / DI_math divides by zero"
            )
            if sig == 0:
                why += " (the math sigma, the spread of the score changes, is 0 too)"
        else:
            why = (
                f"TI is undefined for {m}: its math gains and losses cancel exactly (DI_math = 0), and "
                f"TI = 100 * DI_g / DI_math divides by zero"
            )
        r["ti_undefined_reason"] = why + "."
        notes.append(why + "; DI per group is still reported.")
    return notes
