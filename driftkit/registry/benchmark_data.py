"""Loading a benchmark's items: the hub, the offline fixture, the fallback between them, provenance.

Why apart from the contract (:mod:`driftkit.registry.benchmark`): a plugin author reads the base
class to learn what to write; how items are fetched, interleaved over subtasks, limited and
hashed into the provenance is the same for every benchmark and changes for other reasons.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from driftkit.errors import DriftkitError, opt
from driftkit.parsing import read_jsonl
from driftkit.registry.benchmark import DATA_SOURCES, LoadedData
from driftkit.scores import sha256_text

if TYPE_CHECKING:
    from driftkit.registry.benchmark import Benchmark


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the dataset hub answers a TCP connection quickly.

    Why: without network, ``datasets.load_dataset`` retries for ~30 s per dataset before failing;
    in ``auto`` mode we check once and go straight to the fixtures when the hub is unreachable.
    """
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "") not in (
        "",
        "0",
    ):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def configs(bench: Benchmark) -> list[str | None]:
    """The dataset configs of a benchmark (one ``None`` for a single-config dataset)."""
    c = bench.dataset_config
    return list(c) if isinstance(c, (tuple, list)) else [c]


def fixture_rows(bench: Benchmark) -> list[dict[str, Any]]:
    """Rows of the benchmark's offline fixture file."""
    if bench.fixture is None or not Path(bench.fixture).is_file():
        raise DriftkitError(
            f"Benchmark {bench.name!r} has no offline fixture file ({bench.fixture}); use {opt('data', 'hub')} with "
            "network "
            "access."
        )
    return read_jsonl(bench.fixture, "Fixture")


def hub_rows(bench: Benchmark) -> list[dict[str, Any]]:
    """Rows from :func:`datasets.load_dataset` (all configs of a multi-config benchmark)."""
    import datasets

    rows: list[dict[str, Any]] = []
    for cfg in configs(bench):
        try:
            ds = datasets.load_dataset(bench.dataset_id, cfg, split=bench.split, revision=bench.revision)
        except Exception as exc:  # hub errors come in many types (ConnectionError, GatedRepoError, ...)
            text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            gated_hint = ""
            if bench.gated or "gated" in text.lower() or "401" in text or "403" in text:
                gated_hint = (
                    f" {bench.dataset_id} is a gated dataset: accept its terms on the Hugging Face hub page, then "
                    f"log in with 'huggingface-cli login' or set HF_TOKEN."
                )
            raise DriftkitError(
                f"Could not load dataset {bench.dataset_id}{'/' + cfg if cfg else ''} (split {bench.split}) for "
                "benchmark "
                f"{bench.name!r}: {text}.{gated_hint} To run offline on the small bundled fixture instead, pass "
                f"{opt('data', 'fixtures')} (scores on fixtures are not comparable with scores on the real dataset)."
            ) from exc
        for row in ds:
            r = dict(row)
            if len(configs(bench)) > 1:
                r["_config"] = cfg
            rows.append(r)
    return rows


def load_items(bench: Benchmark, data: str = "auto", limit: int | None = None) -> LoadedData:
    """Load items from the hub or the fixture (``data`` in :data:`DATA_SOURCES`), keep the first ``limit``.

    Items of multi-config benchmarks are interleaved round-robin over configs before the limit,
    so ``--limit 20`` on 14 subtasks still covers every subtask.
    """
    if data not in DATA_SOURCES:
        raise DriftkitError(f"Unknown data source {data!r}; use one of {', '.join(DATA_SOURCES)}.")
    prov: dict[str, Any] = {
        "dataset": bench.dataset_id,
        "config": list(configs(bench)) if len(configs(bench)) > 1 else configs(bench)[0],
        "split": bench.split,
    }
    fallback = None
    if not bench.dataset_id:
        # Bundled data set (no hub copy exists): the file is the benchmark itself, not a stand-in,
        # so it is used in every mode and its scores carry no "not comparable" note.
        rows, source = bench.load_fixture(), "bundled"
    elif data == "fixtures":
        rows, source = bench.load_fixture(), "fixture"
    elif data == "hub" or hub_reachable():
        rows, source = bench.load_hub(), "hub"
    else:
        rows, source = bench.load_fixture(), "fixture"
        fallback = "the dataset hub was unreachable (or HF_HUB_OFFLINE is set), so the bundled fixture was used"
    prov["source"] = source
    if source in ("fixture", "bundled"):
        raw = Path(bench.fixture).read_bytes()  # type: ignore[arg-type]
        prov["fixture"] = Path(bench.fixture).name  # type: ignore[arg-type]
        prov["fixture_sha256"] = hashlib.sha256(raw).hexdigest()
        prov["revision"] = None
    else:
        prov["revision"] = hub_revision(bench)
    if fallback:
        prov["fallback"] = fallback
    items = [bench.normalize(r) for r in rows]
    if len(configs(bench)) > 1:
        # round-robin over subtasks, so any limit keeps every subtask (near-)equally represented
        groups: dict[Any, list[dict[str, Any]]] = {}
        for it in items:
            groups.setdefault(it.get("_config"), []).append(it)
        lists = list(groups.values())
        items = [g[k] for k in range(max(map(len, lists), default=0)) for g in lists if k < len(g)]
    if limit is not None and limit > 0:
        items = items[:limit]
    if not items:
        raise DriftkitError(
            f"Benchmark {bench.name!r} loaded no items from {source}; check {opt('limit', None)} and the dataset."
        )
    for i, it in enumerate(items):
        it.setdefault("_id", bench.item_id(it, i))
    prov["limit"] = limit
    prov["n_items"] = len(items)
    prov["item_ids_sha256"] = sha256_text("\n".join(str(it["_id"]) for it in items))
    return LoadedData(items, prov)


def hub_revision(bench: Benchmark) -> str | None:
    """The dataset commit that was loaded: the user's ``revision`` or the hub's current sha (best effort)."""
    if bench.revision:
        return bench.revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(bench.dataset_id).sha
    except Exception:
        return None
