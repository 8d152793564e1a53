"""The transferability index (TI) of Huan et al. 2025, section 2.1, exactly as DESIGN.md section 4.

For each benchmark b in group g in {math, other, non}:

    dR_b  = R_b(model) - R_b(base)
    d_b   = dR_b / sigma_g
    s_b   = sign(d_b) * |d_b| ** 0.5
    w_b   = (100 - R_b(base)) / sum_{b' in g} (100 - R_b'(base))
    DI_g  = sum_{b in g} w_b * s_b
    TI_g  = 100 * DI_g / DI_math        for g in {other, non}

sigma_g, the spread that makes gains on different groups commensurable, is the standard deviation
(population, ddof=0, like ``numpy.std``) of dR over group g's benchmarks:

- ``pooled`` (default): over every (model, benchmark) pair of the group, all models given at once;
  this is what reproduces the paper's published tables, and makes TI of one model depend on which
  other models are analysed together (report the set);
- ``per-model``: over the group's benchmarks of that model only (the formula as literally written);
- explicit: ``{"math": 16.1, "other": 18.4, "non": 20.5}`` (e.g. the paper's values, to place a new
  model on the paper's scale).

Why the square root: it damps a single benchmark with a huge swing; why the (100 - R_base) weights:
a gain counts more where the base had more room to improve.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from driftkit.errors import DriftkitError, opt
from driftkit.parsing import parse_kv

GROUPS = ("math", "other", "non")
SIGMA_MODES = ("pooled", "per-model")


def parse_sigma(spec: str | Mapping[str, float]) -> str | dict[str, float]:
    """``"pooled"`` | ``"per-model"`` | ``"math=16.1,other=18.4,non=20.5"`` (or a dict) -> mode or dict."""
    if isinstance(spec, Mapping):
        vals = {str(k): float(v) for k, v in spec.items()}
    else:
        s = spec.strip()
        if s in SIGMA_MODES:
            return s
        if s == "per_model":
            return "per-model"
        if "=" not in s:
            raise DriftkitError(
                f"Cannot read {opt('sigma', spec)}: use 'pooled', 'per-model', or explicit values like "
                f"'math=16.1,other=18.4,non=20.5'."
            )
        vals = parse_kv(
            s, what=opt("sigma", None), example="math=16.1,other=18.4,non=20.5", convert=float, expect="a number"
        )
    bad = [k for k in vals if k not in GROUPS]
    if bad:
        raise DriftkitError(
            f"{opt('sigma', None)} names unknown group(s) {', '.join(bad)}; the groups are {', '.join(GROUPS)}."
        )
    nonpos = [k for k, v in vals.items() if not (v > 0 and math.isfinite(v))]
    if nonpos:
        raise DriftkitError(f"{opt('sigma', None)} for {', '.join(nonpos)} must be a positive number.")
    return vals


#: columns of :meth:`TransferResult.to_frame`
TRANSFER_COLUMNS = ("model", "scope", "item", "metric", "value")


class TransferResult(dict):
    """A ``driftkit.transfer/1`` document (what :func:`driftkit.scores.transfer` returns) with views.

    A dict subclass so ``res["models"]["rl"]["ti"]["other"]`` and ``json.dumps(res)`` keep working.
    """

    def to_frame(self) -> Any:
        """Tidy table, columns :data:`TRANSFER_COLUMNS`. Rows with ``scope="group"`` hold each model's
        ``di``, ``ti`` and ``sigma`` per group (``item`` = math/other/non; TI of math is not defined
        and omitted); rows with ``scope="benchmark"`` hold ``score`` (the base model too), ``delta``,
        ``z``, ``s`` and ``w`` per benchmark (DESIGN.md section 4 names)."""
        import pandas as pd

        rows: list[tuple[Any, ...]] = []
        base = self.get("base", {})
        for b, v in (base.get("scores") or {}).items():
            rows.append((base.get("model"), "benchmark", b, "score", v))
        for m, r in self["models"].items():
            for g in GROUPS:
                if g in r.get("di", {}):
                    rows.append((m, "group", g, "di", r["di"][g]))
                if g in r.get("ti", {}):
                    rows.append((m, "group", g, "ti", r["ti"][g]))
                if g in (r.get("sigma") or {}):
                    rows.append((m, "group", g, "sigma", r["sigma"][g]))
            for b, v in (r.get("scores") or {}).items():
                rows.append((m, "benchmark", b, "score", v))
            for b, x in r.get("benchmarks", {}).items():
                rows += [(m, "benchmark", b, k, x[k]) for k in ("delta", "z", "s", "w") if k in x]
        return pd.DataFrame(rows, columns=list(TRANSFER_COLUMNS))

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The document as JSON text; written atomically to ``path`` when given."""
        from driftkit.atomic import atomic_write

        text = json.dumps(dict(self), indent=indent) + "\n"
        if path is not None:
            atomic_write(path, text)
        return text


def _std(values: list[float], ddof: int) -> float:
    if len(values) <= ddof:
        return float("nan")
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=ddof))


def transferability(
    base: Mapping[str, float],
    models: Mapping[str, Mapping[str, float]],
    domains: Mapping[str, str],
    sigma: str | Mapping[str, float] = "pooled",
    ddof: int = 0,
) -> dict[str, Any]:
    """Compute DI and TI per model.

    ``base``: benchmark -> base score (0-100); ``models``: model -> benchmark -> score, over the same
    benchmarks as ``base``; ``domains``: benchmark -> group. Returns a dict with ``sigma_mode``,
    ``sigma`` (per group, or per model for ``per-model``) and ``models.<m> = {ti, di, sigma,
    benchmarks.<b> = {delta, z, s, w}}``. TI is None when the model's math DI is 0 (undefined) and a
    group's DI/TI is None when the group has no benchmark.

    Long because it follows the paper's formula step by step (deltas, sigma per group, signed square roots, weights,
    DI, TI), each step named as in the paper so it can be checked against it.
    """
    mode = parse_sigma(sigma) if isinstance(sigma, str) else parse_sigma(dict(sigma))
    if not models:
        raise DriftkitError(
            "No tuned model given: the transferability index compares at least one model with the base."
        )
    bench = sorted(base)
    unknown = [b for b in bench if domains.get(b) not in GROUPS]
    if unknown:
        raise DriftkitError(f"Benchmark(s) {', '.join(unknown)} have no group among {', '.join(GROUPS)}.")
    for m, sc in models.items():
        if set(sc) != set(base):
            raise DriftkitError(
                f"Model {m} has scores for {', '.join(sorted(sc))} but the base has {', '.join(bench)}; "
                f"TI needs the same benchmarks for both."
            )
    if "math" not in {domains[b] for b in bench}:
        raise DriftkitError(
            "No math benchmark among the scores: TI divides by the math group's DI, so at least one math benchmark is "
            "needed."
        )
    by_group = {g: [b for b in bench if domains[b] == g] for g in GROUPS}
    deltas = {m: {b: float(sc[b]) - float(base[b]) for b in bench} for m, sc in models.items()}

    # sigma per (model, group)
    sig: dict[str, dict[str, float]] = {}
    if isinstance(mode, dict):
        missing = [g for g in GROUPS if by_group[g] and g not in mode]
        if missing:
            raise DriftkitError(
                f"{opt('sigma', None)} gives no value for group(s) {', '.join(missing)}, which have benchmarks; add "
                f"e.g. '{missing[0]}=18.0'."
            )
        sig = {m: {g: mode[g] for g in GROUPS if by_group[g]} for m in models}
    elif mode == "pooled":
        pooled = {g: _std([deltas[m][b] for m in models for b in by_group[g]], ddof) for g in GROUPS if by_group[g]}
        sig = {m: dict(pooled) for m in models}
    else:
        sig = {m: {g: _std([deltas[m][b] for b in by_group[g]], ddof) for g in GROUPS if by_group[g]} for m in models}

    out_models: dict[str, Any] = {}
    for m in models:
        di: dict[str, float | None] = {}
        per_b: dict[str, Any] = {}
        for g in GROUPS:
            bs = by_group[g]
            if not bs:
                di[g] = None
                continue
            head = np.array([100.0 - float(base[b]) for b in bs], dtype=np.float64)
            if head.sum() <= 0:
                raise DriftkitError(
                    f"The base scores 100 on every {g} benchmark, so the (100 - R_base) weights are undefined."
                )
            w = head / head.sum()
            d = np.array([deltas[m][b] for b in bs], dtype=np.float64)
            sg = sig[m][g]
            if not math.isfinite(sg) or sg == 0.0:
                if np.all(d == 0):
                    z = np.zeros_like(d)  # no change anywhere: every term is 0 whatever sigma is
                else:
                    raise DriftkitError(
                        f"sigma for group {g} is {sg} (model {m}): the standard deviation of score changes over "
                        f"{len(bs)} benchmark(s){' and ' + str(len(models)) + ' model(s)' if mode == 'pooled' else ''} "
                        "is "
                        f"zero or undefined, so the changes cannot be normalised. Add benchmarks or models, or give "
                        f"sigma explicitly, e.g. {opt('sigma', 'math=16.1,other=18.4,non=20.5')}."
                    )
            else:
                z = d / sg
            s = np.sign(z) * np.sqrt(np.abs(z))
            di[g] = float(np.sum(w * s))
            for k, b in enumerate(bs):
                per_b[b] = {"group": g, "delta": float(d[k]), "z": float(z[k]), "s": float(s[k]), "w": float(w[k])}
        dm = di["math"]
        # "+ 0.0" turns the -0.0 of no change over a negative math DI into 0.0 (nothing transferred, either way)
        ti = {g: (None if di[g] is None or not dm else 100.0 * di[g] / dm + 0.0) for g in ("other", "non")}  # type: ignore[operator]
        out_models[m] = {"ti": ti, "di": di, "sigma": sig[m], "benchmarks": per_b}
    if isinstance(mode, dict):
        sigma_out: Any = dict(mode)
        mode_name = "explicit"
    elif mode == "pooled":
        sigma_out = next(iter(sig.values()))
        mode_name = "pooled"
    else:
        sigma_out = sig
        mode_name = "per-model"
    return {"sigma_mode": mode_name, "sigma_ddof": ddof, "sigma": sigma_out, "models": out_models}
