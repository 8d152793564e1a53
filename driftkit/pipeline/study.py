"""The study report: the paper's core picture for one run, as numbers, figures and sentences.

Three steps, each a module with one job: :mod:`driftkit.pipeline.gather` collects the run's outputs
and what every analysis contributes, :mod:`driftkit.report.study_findings` writes the sentences
(every one from measured values of this run), :mod:`driftkit.report.study_figures` draws, and
:mod:`driftkit.report.study_render` renders HTML and terminal views. None names an analysis.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftkit.atomic import atomic_write
from driftkit.registry.analysis import Figure

if TYPE_CHECKING:  # pragma: no cover
    from driftkit.pipeline.runner import Ctx


@dataclass
class Study:
    data: dict[str, Any]
    findings: list[str]
    figures: list[Figure] = field(default_factory=list)
    #: raw HTML fragments from the analyses' ``html_sections`` (interactive views)
    sections: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> None:
        from driftkit.report.study_render import render_html

        atomic_write(folder / "study.json", json.dumps({**self.data, "findings": self.findings}, indent=2, default=str))
        atomic_write(folder / "study.html", render_html(self))

    def show(self, console: Any) -> None:
        from driftkit.report.study_render import render_terminal

        render_terminal(self, console)


def build_study(ctx: Ctx) -> Study:
    from driftkit.pipeline.gather import gather
    from driftkit.report.study_figures import figures
    from driftkit.report.study_findings import findings

    data, ran = gather(ctx)
    sections = [html for r in ran for html in r.analysis.html_sections(r.results)]
    return Study(data, findings(data, ran) + skipped_findings(data), figures(data, ran), sections)


def skipped_findings(data: dict[str, Any]) -> list[str]:
    """One sentence per analysis the compare steps skipped, with compare's reason and the models.

    Why a finding and not only the JSON: a study of pooled captures shows no CKA figure and no CKA
    drift measure; the reader must learn that it was not run (and how to get it), not guess that it is
    missing by mistake. The reason names the CLI flag; the experiment file's key is given next to it.
    """
    out = []
    for section, per_model in (data.get("skipped") or {}).items():
        by: dict[tuple[str, str], list[str]] = {}
        for model, skipped in per_model.items():
            for name, why in skipped.items():
                by.setdefault((name, why), []).append(model)
        for (name, why), models in by.items():
            who = "every tuned model" if set(models) == set(data.get("models", [])[1:]) else ", ".join(models)
            fix = re.sub(r"--store (\S+?)\)", r'--store \1; in the experiment file [capture] store = "\1")', why)
            out.append(f"{name} was not run on the {section} ({who}): {fix}.")
    return out
