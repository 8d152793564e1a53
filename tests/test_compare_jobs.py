"""``compare --jobs N``: the layers pass over N processes gives exactly the JSON of ``--jobs 1``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from json_canon import canon

import driftkit
from driftkit import Analysis
from driftkit.comparing.layer_jobs import supports_jobs
from driftkit.errors import DriftkitError


class LayerMeans(Analysis):
    """A layer analysis without the --jobs hooks: it must run in the main process, with a note."""

    name = "layer_means"
    consumes = frozenset({"layers"})

    def start(self, pair: Any) -> None:
        self.rows: list[list[Any]] = []

    def start_layer(self, pair: Any, layer: Any, site: str) -> None:
        self.total = 0.0

    def on_layer(self, chunk: Any) -> None:
        self.total += float((chunk.xb - chunk.xa).double().sum())

    def finish_layer(self, pair: Any, layer: Any, site: str) -> None:
        self.rows.append([layer, self.total])

    def finish(self, pair: Any) -> dict[str, Any]:
        return {"rows": self.rows}


@pytest.mark.parametrize(
    "kw",
    [
        {"positions": "all", "chunk_tokens": 16},
        {
            "positions": "all",
            "max_tokens": 40,
            "seed": 1,
            "options": {"cka": {"unit": "sample"}, "pca_shift": {"k": 2}},
        },
    ],
)
def test_jobs_equal_one_process(tiny_capture_pair, kw: dict) -> None:
    """CKA + PCA shift + KL with --jobs 2 equal --jobs 1 exactly (every number, every key, same order)."""
    a, b = tiny_capture_pair
    names = ["kl", "cka", "pca_shift"]
    one = driftkit.compare([a, b], analyses=names, **kw).to_dict()
    two = driftkit.compare([a, b], analyses=names, jobs=2, **kw).to_dict()
    assert json.dumps(canon(two)) == json.dumps(canon(one))
    assert len(one["analyses"]["cka"]["layers"]) > 1, "the test must exercise several layers"


def test_analysis_without_hooks_runs_in_main_process(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair
    assert supports_jobs(LayerMeans()) is not None
    assert supports_jobs(driftkit.registry.load("analysis", "cka")()) is None
    one = driftkit.compare([a, b], analyses=["cka"], extra_analyses=[LayerMeans], positions="all").to_dict()
    two = driftkit.compare([a, b], analyses=["cka"], extra_analyses=[LayerMeans], positions="all", jobs=3).to_dict()
    pair1, pair2 = one, two
    assert pair2["analyses"] == pair1["analyses"]
    assert any("layer_means ran its layers in the main process" in n for n in pair2["notes"])
    assert not any("main process" in n for n in pair1["notes"])


def test_jobs_must_be_positive(tiny_capture_pair) -> None:
    a, b = tiny_capture_pair
    with pytest.raises(DriftkitError, match="jobs"):
        driftkit.compare([a, b], analyses=["cka"], jobs=0)


def test_workers_use_the_main_process_thread_count() -> None:
    """BLAS results depend on the thread count (last bits of CKA at d = 576): workers must match."""
    import torch

    from driftkit.comparing.layer_jobs import worker_threads

    assert worker_threads() == torch.get_num_threads()


def test_cli_jobs_flag(tiny_capture_pair) -> None:
    """``driftkit compare --jobs 2 --json -`` prints the report of ``--jobs 1``; ``--jobs 0`` is refused."""
    from typer.testing import CliRunner

    from driftkit.cli.main import app

    a, b = tiny_capture_pair
    runner = CliRunner()
    base = ["compare", str(a), str(b), "--analyses", "cka,pca_shift", "--json", "-"]
    one = runner.invoke(app, base)
    two = runner.invoke(app, [*base, "--jobs", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    assert json.dumps(canon(json.loads(two.stdout))) == json.dumps(canon(json.loads(one.stdout)))
    bad = runner.invoke(app, [*base, "--jobs", "0"])
    assert bad.exit_code == 1 and "--jobs 0" in bad.output


def test_jobs_on_pooled_and_sampled_captures(tiny_model, tiny_tuned, tiny_prompts, tmp_path) -> None:
    """--store pooled / sample:K captures: the layers pass over workers still equals one process."""
    from driftkit.capturing import CaptureConfig, capture

    for store, names, opts in (
        ("pooled", ["cka", "pca_shift"], {"cka": {"unit": "sample"}}),
        ("sample:3", ["cka", "pca_shift"], {}),
    ):
        paths = [
            capture(
                CaptureConfig(model=str(m), prompts=str(tiny_prompts), out=tmp_path / f"{i}{store[:4]}.h5", store=store)
            )
            for i, m in enumerate((tiny_model, tiny_tuned))
        ]
        one = driftkit.compare(paths, analyses=names, options=opts, positions="all").to_dict()
        two = driftkit.compare(paths, analyses=names, options=opts, positions="all", jobs=2).to_dict()
        assert json.dumps(canon(two)) == json.dumps(canon(one)), store
        assert len(one["analyses"]["cka"]["layers"]) > 1
