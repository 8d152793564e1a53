"""The Benchmark plugin kind: a task that scores a checkpoint's generated answers.

Why a small base class and not a framework: each benchmark differs in how it builds a prompt and
scores one answer, but loading (real dataset online, bundled fixture offline), provenance, think
stripping and aggregation into ``driftkit.scores/1`` records are the same for all of them and must
be identical across models, or the transferability index would compare apples with pears. So the
base class owns those parts and a plugin only fills in ``build_prompt`` and ``score``.

This module is the contract only. The shared parts live beside it: loading and provenance in
:mod:`driftkit.registry.benchmark_data`, answer extraction (``strip_think``, ``last_boxed``,
``extract_choice``, ``extract_yes_no``, math equivalence) in :mod:`driftkit.answers`, the mean and
its standard error in :mod:`driftkit.scores`. Their former names here still import.

A plugin declares:

- ``name``, ``domain`` (``math`` | ``other`` | ``non``: the paper's three groups),
- ``dataset_id`` / ``dataset_config`` / ``split`` for :func:`datasets.load_dataset`,
- ``fixture``: a JSONL file of items in the dataset's own row format, used offline,
- ``max_new_tokens``: the generation budget (modest by default so CPU runs stay short),
- ``build_prompt(item) -> list[chat message]`` and ``score(item, answer_text) -> dict``.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from driftkit.answers import THINK_RULE, extract_choice, extract_yes_no, last_boxed, strip_think  # noqa: F401
from driftkit.errors import DriftkitError
from driftkit.registry.options import Configurable, Option
from driftkit.scores import mean_stderr, sha256_text  # noqa: F401  (former names, kept importable)

DOMAINS = ("math", "other", "non")

#: how the data of a benchmark is obtained: ``auto`` tries the hub and falls back to the fixture
#: (saying so in the provenance and on stderr); ``hub`` never falls back; ``fixtures`` never goes online.
DATA_SOURCES = ("auto", "hub", "fixtures")


@dataclass
class LoadedData:
    """Items of a benchmark and where they came from (goes into the score record's provenance)."""

    items: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)


class Benchmark(Configurable, ABC):
    """Base class of benchmark plugins. Subclass it, set the class attributes, implement
    :meth:`build_prompt` and :meth:`score`; override :meth:`aggregate` for metrics other than
    accuracy, :meth:`normalize` to turn a dataset row into the item the other methods read.

    Options: the base options below (what ``driftkit bench`` sets for every benchmark) plus any the
    plugin declares in ``options``; resolved values are in ``self.opts``. A plugin's own options go
    into :meth:`prompt_template_sha256`, so two runs with different option values never compare.
    """

    plugin_kind: ClassVar[str] = "benchmark"
    name: ClassVar[str] = ""
    domain: ClassVar[str] = "other"
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Any]] = {
        "seed": Option(0, "Seed of sampling and of any shuffling of answer options."),
        "samples_per_item": Option(1, "Answers generated per item (pass@k style metrics use several)."),
        "revision": Option(
            None, "Dataset revision (commit) to load from the hub (default: the current one).", type=str
        ),
        "max_new_tokens": Option(
            None, "Generation budget in tokens (default: the benchmark's own max_new_tokens).", type=int
        ),
    }
    dataset_id: ClassVar[str] = ""
    #: one config, or several (a benchmark made of subtasks, e.g. ACPBench): each row gets ``_config``
    dataset_config: ClassVar[str | tuple[str, ...] | None] = None
    split: ClassVar[str] = "test"
    #: path of the offline fixture (JSONL, one dataset row per line). A benchmark with no
    #: ``dataset_id`` ships its whole data set this way and reads it in every ``data`` mode.
    fixture: ClassVar[Path | None] = None
    max_new_tokens: ClassVar[int] = 256
    #: the metric the transferability index uses for this benchmark
    primary_metric: ClassVar[str] = "accuracy"
    #: whether the dataset needs a Hugging Face token (gated), to word the error when loading fails
    gated: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.opts["max_new_tokens"] is not None:
            self.max_new_tokens = int(self.opts["max_new_tokens"])  # type: ignore[misc]
        if self.domain not in DOMAINS:
            raise DriftkitError(
                f"Benchmark {self.name!r} declares domain {self.domain!r}; use one of {', '.join(DOMAINS)}."
            )
        self.seed = int(self.opts["seed"])
        self.samples_per_item = max(1, int(self.opts["samples_per_item"]))
        self.revision = self.opts["revision"]

    def plugin_options(self) -> dict[str, Any]:
        """The values of the options this plugin declares beyond the base ones (they shape its prompts)."""
        base = Benchmark.options
        return {k: v for k, v in self.opts.items() if k not in base}

    # ------------------------------------------------------------------ data
    def item_id(self, item: dict[str, Any], index: int) -> str:
        """A stable id of an item (for paired comparisons across models); override when the dataset has one."""
        for key in ("id", "unique_id", "task_id", "key", "Record ID"):
            if key in item and item[key] not in (None, ""):
                return f"{item.get('_config', '')}/{item[key]}".lstrip("/")
        return f"{item.get('_config', '')}/{index}".lstrip("/")

    def normalize(self, row: dict[str, Any]) -> dict[str, Any]:
        """Turn a raw dataset row into the item :meth:`build_prompt`/:meth:`score` read (default: as is)."""
        return row

    def load_fixture(self) -> list[dict[str, Any]]:
        """Rows of the offline fixture (a JSONL file of dataset rows)."""
        from driftkit.registry import benchmark_data

        return benchmark_data.fixture_rows(self)

    def load_hub(self) -> list[dict[str, Any]]:
        """Rows from :func:`datasets.load_dataset` (all configs of a multi-config benchmark)."""
        from driftkit.registry import benchmark_data

        return benchmark_data.hub_rows(self)

    def load(self, data: str = "auto", limit: int | None = None) -> LoadedData:
        """Load items from the hub or the fixture (``data`` in :data:`DATA_SOURCES`), keep the first ``limit``.

        Items of multi-config benchmarks are interleaved round-robin over configs before the limit,
        so ``--limit 20`` on 14 subtasks still covers every subtask. See
        :func:`driftkit.registry.benchmark_data.load_items`.
        """
        from driftkit.registry import benchmark_data

        return benchmark_data.load_items(self, data, limit)

    # ------------------------------------------------------------------ prompts and scoring
    @abstractmethod
    def build_prompt(self, item: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages (``[{"role": "user", "content": ...}]``) asking the model this item."""

    @abstractmethod
    def score(self, item: dict[str, Any], answer: str) -> dict[str, Any]:
        """Score one generated answer (think blocks already stripped). Must return at least
        ``{"correct": bool|float}`` for the default :meth:`aggregate`; may add extracted fields."""

    def prompt_template_sha256(self) -> str:
        """A hash of how prompts are built and scored: the plugin module's source (template strings,
        few-shot examples, option formatting, extraction) and its options.

        Why the source and not one rendered prompt: a rendered probe prompt misses changes in
        few-shot examples or answer extraction; two runs with equal hashes built prompts the same way.
        """
        import inspect

        try:  # the whole module: few-shot examples and templates often live beside the class
            mod = inspect.getmodule(type(self))
            src = inspect.getsource(mod) if mod is not None else inspect.getsource(type(self))
        except (OSError, TypeError):
            src = type(self).__qualname__
        return sha256_text(src + json.dumps(self.plugin_options(), sort_keys=True, default=str))

    def aggregate(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Turn per-item results (each ``{"id", "samples": [score dicts]}``) into score records.

        Default: accuracy = mean over items of the mean ``correct`` over samples, in percent,
        with the standard error of the mean over items.
        """
        per_item = [sum(float(s["correct"]) for s in r["samples"]) / len(r["samples"]) for r in results]
        mu, se = mean_stderr(per_item)
        return [self.record(self.primary_metric, 100 * mu, len(per_item), 100 * se, primary=True)]

    def record(self, metric: str, value: float, n: int, stderr: float | None, primary: bool = False) -> dict[str, Any]:
        """One score record (DESIGN.md section 5), values on a 0-100 scale."""
        rec: dict[str, Any] = {
            "benchmark": self.name,
            "domain": self.domain,
            "metric": metric,
            "value": float(value),
            "n": int(n),
            "stderr": None if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)) else float(stderr),
        }
        if primary:
            rec["primary"] = True
        return rec

    def settings(self) -> dict[str, Any]:
        """What, besides the data, decides this benchmark's scores (compared across models)."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "samples_per_item": self.samples_per_item,
            "seed": self.seed,
            "prompt_template_sha256": self.prompt_template_sha256(),
            "primary_metric": self.primary_metric,
        }
