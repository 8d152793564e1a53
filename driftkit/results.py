"""Study results (``driftkit.study/1``, what ``driftkit run`` writes to ``report/study.json``) in Python.

Why here and not in the pipeline: the pipeline writes the file; this module only reads it and offers
the same two views as every other driftkit result (``to_frame()``, ``to_json()``), so a notebook can
load a finished study without re-running or importing any of the pipeline's machinery.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError

#: columns of :meth:`StudyResult.to_frame`
STUDY_COLUMNS = ("model", "section", "scope", "item", "metric", "value")


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class StudyResult(dict):
    """A finished study (the parsed ``study.json``; a dict) with ``to_frame()`` and ``to_json()``.

    ``findings`` are the report's sentences; ``transfer`` the ``driftkit.transfer/1`` document.
    """

    @property
    def findings(self) -> list[str]:
        return list(self.get("findings", []))

    def _rows(self) -> Iterator[tuple[Any, ...]]:
        for m, benches in (self.get("scores") or {}).items():
            for b, r in benches.items():
                yield m, "scores", "benchmark", b, r.get("metric") or "value", r.get("value")
        if self.get("transfer"):
            from driftkit.metrics.transfer import TransferResult

            for m, scope, item, metric, value in TransferResult(self["transfer"]).to_frame().itertuples(index=False):
                if metric != "score":  # scores already come from the "scores" section
                    yield m, "transfer", scope, item, metric, value
        for m, e in (self.get("representations") or {}).items():
            for x in e.get("cka_layers", []):
                for k in ("linear_cka", "debiased_cka"):
                    if _num(x.get(k)):
                        yield m, "cka", "layer", x["layer"], k, x[k]
            for d, v in (e.get("pca_distance") or {}).items():
                yield m, "pca_shift", "domain", d, "distance", v
            for x in e.get("principal_angles", []):
                if _num(x.get("mean_angle_deg")):
                    yield m, "pca_shift", "layer", x["layer"], "mean_angle_deg", x["mean_angle_deg"]
        for m, e in (self.get("distributions") or {}).items():
            for section, key in (("kl", "kl"), ("token_rank", "rank")):
                for k, v in (e.get(key) or {}).items():
                    if _num(v):
                        yield m, section, "summary", "all", k, v
                for d, vals in (e.get(f"{key}_per_domain") or {}).items():
                    for k, v in vals.items():
                        if _num(v):
                            yield m, section, "domain", d, k, v
        for m, points in (self.get("drift") or {}).items():
            for p in points:
                for k, v in p.items():
                    if k != "step" and _num(v):
                        yield m, "drift", "step", p["step"], k, v
                for b, v in (p.get("score") or {}).items() if isinstance(p.get("score"), dict) else ():
                    if _num(v):
                        yield m, "drift", "step", p["step"], f"score.{b}", v

    def to_frame(self) -> Any:
        """Tidy table of every number in the study, columns :data:`STUDY_COLUMNS`.

        ``section`` is ``scores``, ``transfer``, ``cka``, ``pca_shift``, ``kl``, ``token_rank`` or
        ``drift``; ``scope`` says what ``item`` is (``benchmark``, ``group``, ``layer``, ``domain``,
        ``summary``, ``step``). Pivot it, e.g. ``df[df.section == "kl"].pivot_table(...)``.
        """
        import pandas as pd

        return pd.DataFrame(list(self._rows()), columns=list(STUDY_COLUMNS))

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The study as JSON text; written atomically to ``path`` when given."""
        from driftkit.atomic import atomic_write

        text = json.dumps(dict(self), indent=indent, default=str) + "\n"
        if path is not None:
            atomic_write(path, text)
        return text


def load_study(path: str | Path) -> StudyResult:
    """Load a study from its ``study.json``, its ``report/`` folder or the run's output folder."""
    p = Path(path)
    for cand in (p, p / "study.json", p / "report" / "study.json"):
        if cand.is_file():
            try:
                return StudyResult(json.loads(cand.read_text(encoding="utf-8")))
            except json.JSONDecodeError as exc:
                raise DriftkitError(
                    f"{cand} is not valid JSON ({exc}); rerun the study's report step "
                    f"('driftkit run EXPERIMENT.toml --resume')."
                ) from exc
    raise DriftkitError(
        f"No study.json at {p} (nor {p}/report/study.json). Run the study first with "
        f"'driftkit run EXPERIMENT.toml' and give its output folder."
    )
