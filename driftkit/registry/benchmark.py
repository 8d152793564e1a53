"""The Benchmark plugin kind: a task that scores a checkpoint's generated answers.

Why a small base class and not a framework: each benchmark differs in how it builds a prompt and
scores one answer, but loading (real dataset online, bundled fixture offline), provenance, think
stripping and aggregation into ``driftkit.scores/1`` records are the same for all of them and must
be identical across models, or the transferability index would compare apples with pears. So the
base class owns those parts and a plugin only fills in ``build_prompt`` and ``score``.

A plugin declares:

- ``name``, ``domain`` (``math`` | ``other`` | ``non``: the paper's three groups),
- ``dataset_id`` / ``dataset_config`` / ``split`` for :func:`datasets.load_dataset`,
- ``fixture``: a JSONL file of items in the dataset's own row format, used offline,
- ``max_new_tokens``: the generation budget (modest by default so CPU runs stay short),
- ``build_prompt(item) -> list[chat message]`` and ``score(item, answer_text) -> dict``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence
from urllib.parse import urlparse

from driftkit.errors import DriftkitError
from driftkit.registry.options import Configurable, Option

DOMAINS = ("math", "other", "non")

#: how the data of a benchmark is obtained: ``auto`` tries the hub and falls back to the fixture
#: (saying so in the provenance and on stderr); ``hub`` never falls back; ``fixtures`` never goes online.
DATA_SOURCES = ("auto", "hub", "fixtures")

THINK_RULE = (
    "remove every <think>...</think> block; text before a lone </think> is reasoning and dropped; "
    "an unclosed <think> means the answer was never given (empty answer)"
)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def strip_think(text: str) -> str:
    """Return only the answer part of a reasoning model's output (rule: :data:`THINK_RULE`).

    Why the unclosed case is empty: a reasoning trace cut by ``max_new_tokens`` often contains
    candidate answers ("maybe it is 5"); scoring those would reward unfinished reasoning.
    """
    out = _THINK_BLOCK.sub("", text)
    low = out.lower()
    if "</think>" in low:  # template put <think> in the prompt: everything before the close is reasoning
        out = out[low.rfind("</think>") + len("</think>") :]
        low = out.lower()
    if "<think>" in low:
        out = out[: low.find("<think>")]
    return out.strip()


# --------------------------------------------------------------------------------------- extraction
_BOXED = "\\boxed"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed X`` in ``text``, else None."""
    i = text.rfind(_BOXED)
    if i < 0:
        i = text.rfind("\\fbox")
        if i < 0:
            return None
    j = text.find("{", i)
    if j < 0 or text[i:j].strip() not in ("\\boxed", "\\fbox"):
        m = re.match(r"\\boxed\s+([^\s$]+)", text[i:])
        return m.group(1) if m else None
    depth = 0
    for k in range(j, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1 : k]
    return None


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The chosen option letter in a free-form answer, or None when none can be found.

    Order (most to least explicit): the last ``\\boxed{X}``; the last "answer is (X)" /
    "answer: X" / "Answer X"; the last standalone capital letter among ``letters``. Taking the
    *last* match of each kind is what makes "Is it (A)? No... the answer is (C)" score as C.
    """
    cls = f"[{letters}]"
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.search(rf"\b({cls})\b", re.sub(r"\\text\{(.*?)\}", r"\1", boxed))
        if m:
            return m.group(1)
    # "answer" case-insensitive, the letter itself case-sensitive ("the answer is a bit..." is no A)
    pats = [rf"answer\**\s*(?:is|:)?\s*\**\s*(?:option\s*)?[\(\[]?\$?\s*((?-i:{cls}))\s*\**[\)\]]?(?![A-Za-z0-9])"]
    found: list[tuple[int, str]] = []
    for p in pats:
        for m in re.finditer(p, text, re.IGNORECASE):
            if m.group(1).upper() in letters:
                found.append((m.start(), m.group(1).upper()))
    if found:
        return max(found)[1]
    standalone = re.findall(rf"(?<![A-Za-z0-9_'])\(?({cls})\)?(?![A-Za-z0-9_'])", text)
    return standalone[-1] if standalone else None


def extract_yes_no(text: str) -> str | None:
    """``"yes"``/``"no"`` from a free-form answer: the last "answer is yes/no", else the last
    standalone yes/no word; None when neither appears."""
    m = list(re.finditer(r"answer\**\s*(?:is|:)\s*\**\s*\"?(yes|no)\b", text, re.IGNORECASE))
    if m:
        return m[-1].group(1).lower()
    boxed = last_boxed(text)
    if boxed is not None:
        b = re.search(r"\b(yes|no)\b", boxed, re.IGNORECASE)
        if b:
            return b.group(1).lower()
    words = re.findall(r"\b(yes|no)\b", text, re.IGNORECASE)
    return words[-1].lower() if words else None


# ---------------------------------------------------------------------------------------- scoring
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
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the dataset hub answers a TCP connection quickly.

    Why: without network, ``datasets.load_dataset`` retries for ~30 s per dataset before failing;
    in ``auto`` mode we check once and go straight to the fixtures when the hub is unreachable.
    """
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


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
        "revision": Option(None, "Dataset revision (commit) to load from the hub (default: the current one).", type=str),
        "max_new_tokens": Option(None, "Generation budget in tokens (default: the benchmark's own max_new_tokens).",
                                 type=int),
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
            raise DriftkitError(f"Benchmark {self.name!r} declares domain {self.domain!r}; use one of {', '.join(DOMAINS)}.")
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

    def _configs(self) -> list[str | None]:
        c = self.dataset_config
        return list(c) if isinstance(c, (tuple, list)) else [c]

    def load_fixture(self) -> list[dict[str, Any]]:
        if self.fixture is None or not Path(self.fixture).is_file():
            raise DriftkitError(f"Benchmark {self.name!r} has no offline fixture file ({self.fixture}); use --data hub with network access.")
        rows: list[dict[str, Any]] = []
        with open(self.fixture, encoding="utf-8") as fh:
            for ln, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DriftkitError(f"Fixture {self.fixture} line {ln} is not valid JSON ({exc}). Fix the line.") from exc
        return rows

    def load_hub(self) -> list[dict[str, Any]]:
        """Rows from :func:`datasets.load_dataset` (all configs of a multi-config benchmark)."""
        import datasets

        rows: list[dict[str, Any]] = []
        for cfg in self._configs():
            try:
                ds = datasets.load_dataset(self.dataset_id, cfg, split=self.split, revision=self.revision)
            except Exception as exc:  # hub errors come in many types (ConnectionError, GatedRepoError, ...)
                text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                gated_hint = ""
                if self.gated or "gated" in text.lower() or "401" in text or "403" in text:
                    gated_hint = (
                        f" {self.dataset_id} is a gated dataset: accept its terms on the Hugging Face hub page, then "
                        f"log in with 'huggingface-cli login' or set HF_TOKEN."
                    )
                raise DriftkitError(
                    f"Could not load dataset {self.dataset_id}{'/' + cfg if cfg else ''} (split {self.split}) for benchmark "
                    f"{self.name!r}: {text}.{gated_hint} To run offline on the small bundled fixture instead, pass "
                    f"--data fixtures (scores on fixtures are not comparable with scores on the real dataset)."
                ) from exc
            for row in ds:
                r = dict(row)
                if len(self._configs()) > 1:
                    r["_config"] = cfg
                rows.append(r)
        return rows

    def load(self, data: str = "auto", limit: int | None = None) -> LoadedData:
        """Load items from the hub or the fixture (``data`` in :data:`DATA_SOURCES`), keep the first ``limit``.

        Items of multi-config benchmarks are interleaved round-robin over configs before the limit,
        so ``--limit 20`` on 14 subtasks still covers every subtask.
        """
        if data not in DATA_SOURCES:
            raise DriftkitError(f"Unknown data source {data!r}; use one of {', '.join(DATA_SOURCES)}.")
        prov: dict[str, Any] = {
            "dataset": self.dataset_id,
            "config": list(self._configs()) if len(self._configs()) > 1 else self._configs()[0],
            "split": self.split,
        }
        fallback = None
        if not self.dataset_id:
            # Bundled data set (no hub copy exists): the file is the benchmark itself, not a stand-in,
            # so it is used in every mode and its scores carry no "not comparable" note.
            rows, source = self.load_fixture(), "bundled"
        elif data == "fixtures":
            rows, source = self.load_fixture(), "fixture"
        elif data == "hub" or hub_reachable():
            rows, source = self.load_hub(), "hub"
        else:
            rows, source = self.load_fixture(), "fixture"
            fallback = "the dataset hub was unreachable (or HF_HUB_OFFLINE is set), so the bundled fixture was used"
        prov["source"] = source
        if source in ("fixture", "bundled"):
            raw = Path(self.fixture).read_bytes()  # type: ignore[arg-type]
            prov["fixture"] = Path(self.fixture).name  # type: ignore[arg-type]
            prov["fixture_sha256"] = hashlib.sha256(raw).hexdigest()
            prov["revision"] = None
        else:
            prov["revision"] = self._hub_revision()
        if fallback:
            prov["fallback"] = fallback
        items = [self.normalize(r) for r in rows]
        if len(self._configs()) > 1:
            # round-robin over subtasks, so any limit keeps every subtask (near-)equally represented
            groups: dict[Any, list[dict[str, Any]]] = {}
            for it in items:
                groups.setdefault(it.get("_config"), []).append(it)
            lists = list(groups.values())
            items = [g[k] for k in range(max(map(len, lists), default=0)) for g in lists if k < len(g)]
        if limit is not None and limit > 0:
            items = items[:limit]
        if not items:
            raise DriftkitError(f"Benchmark {self.name!r} loaded no items from {source}; check --limit and the dataset.")
        for i, it in enumerate(items):
            it.setdefault("_id", self.item_id(it, i))
        prov["limit"] = limit
        prov["n_items"] = len(items)
        prov["item_ids_sha256"] = sha256_text("\n".join(str(it["_id"]) for it in items))
        return LoadedData(items, prov)

    def _hub_revision(self) -> str | None:
        """The dataset commit that was loaded: the user's ``revision`` or the hub's current sha (best effort)."""
        if self.revision:
            return self.revision
        try:
            from huggingface_hub import HfApi

            return HfApi().dataset_info(self.dataset_id).sha
        except Exception:
            return None

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


def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
