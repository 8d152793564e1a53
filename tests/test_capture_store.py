"""Storage budgets (``--store tokens|pooled|sample:K``) and the size estimate (``--dry-run``).

Independent references: pooled vectors against means taken here over a ``tokens`` capture's rows,
sampled rows against that capture's rows at the stored positions, and the analyses of a pooled or
sampled pair against the same analyses of the per-token pair.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from driftkit.capturing import CaptureConfig, capture
from driftkit.capturing.pooling import POOLED_ROWS, parse_store, sample_positions
from driftkit.cli.main import app
from driftkit.errors import DriftkitError
from driftkit.store.reader import CaptureReader

TEXTS = [
    "What is 2 + 3?",
    "Solve for x: 2x + 4 = 10.",
    "If all cats are animals and Tom is a cat, then Tom is an animal.",
    "def add(a, b):",
    "Write a poem about the sea.",
    "The sea is wide and blue, and the sky above it is grey.",
]


@pytest.fixture(scope="module")
def store_prompts(tmp_path_factory) -> Path:
    """Four samples per domain (the PCA shift needs three), half of them with a given response."""
    rows = []
    for j, dom in enumerate(("math", "other", "non")):
        for i in range(4):
            row = {"id": f"{dom}{i}", "domain": dom, "text": TEXTS[(i + 2 * j) % len(TEXTS)] + " " * i}
            if i % 2:
                row["response"] = TEXTS[(i + j + 3) % len(TEXTS)]
            rows.append(row)
    p = tmp_path_factory.mktemp("store_prompts") / "p.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.fixture(scope="module")
def store_captures(tmp_path_factory, tiny_model: Path, tiny_tuned: Path, store_prompts: Path):
    """(tokens, pooled, sample:4) captures of base and tuned on the same prompts."""
    d = tmp_path_factory.mktemp("store")
    out: dict[str, tuple[Path, Path]] = {}
    for mode, tag in (("tokens", "tokens"), ("pooled", "pooled"), ("sample:4", "sampled")):
        pair = []
        for name, model in (("base", tiny_model), ("tuned", tiny_tuned)):
            cfg = CaptureConfig(
                model=str(model),
                prompts=str(store_prompts),
                out=d / f"{name}_{tag}.h5",
                max_batch_tokens=64,
                store=mode,
            )
            pair.append(capture(cfg))
        out[tag] = (pair[0], pair[1])
    return out


def test_parse_store() -> None:
    assert parse_store("tokens").label == "tokens" and parse_store(None).kind == "tokens"
    assert parse_store("sample:64").k == 64 and parse_store("sample:64").label == "sample:64"
    for bad in ("sample:0", "sample:x", "pool", "sampled:3"):
        with pytest.raises(DriftkitError, match="store"):
            parse_store(bad)


def test_sample_positions_depend_on_token_ids_only() -> None:
    ids = np.arange(100) % 17
    a, b = sample_positions(ids, 8), sample_positions(ids.copy(), 8)
    assert np.array_equal(a, b) and len(np.unique(a)) == 8 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, sample_positions(np.r_[ids[:-1], 99], 8))  # other tokens, other rows
    assert np.array_equal(sample_positions(ids[:5], 8), np.arange(5))  # short sample: every row


def test_pooled_layout_equals_means_of_token_rows(store_captures) -> None:
    full, pooled = store_captures["tokens"][0], store_captures["pooled"][0]
    with CaptureReader(full) as f, CaptureReader(pooled) as p:
        assert p.store == "pooled" and p.layer_rows == "pooled" and f.store == "tokens"
        assert p.sites() == f.sites()
        assert "sites" not in p.h5  # no per-token layer rows at all
        ds = p.h5["pooled/residual.2"]
        assert ds.shape == (f.n_samples, 3, f.shape("sites/residual.2")[1])
        assert json.loads(ds.attrs["rows"]) == list(POOLED_ROWS)
        x = f.read("sites/residual.2", dtype=__import__("torch").float64).numpy()
        got = ds[()]
        for i in range(f.n_samples):
            a, b, n = f.offsets[i], f.offsets[i + 1], f.prompt_len[i]
            np.testing.assert_allclose(got[i, 0], x[a : a + n].mean(0), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got[i, 2], x[a + n - 1], rtol=0, atol=0)
            if b - a > n:
                np.testing.assert_allclose(got[i, 1], x[a + n : b].mean(0), rtol=1e-6, atol=1e-6)
            else:
                assert np.isnan(got[i, 1]).all()
            allm, cnt = p.pooled_means("residual.2", "all")
            np.testing.assert_allclose(allm[i], x[a:b].mean(0), rtol=1e-6, atol=1e-6)
            assert cnt[i] == b - a
        # final/* stays per token, bit for bit
        assert np.array_equal(f.h5["final/hidden"][()], p.h5["final/hidden"][()])
        assert p.complete and "pooled/residual.2" in p.to_dict()["arrays"]


def test_sampled_rows_are_token_rows_at_shared_positions(store_captures) -> None:
    full = store_captures["tokens"][0]
    base, tuned = store_captures["sampled"]
    with CaptureReader(full) as f, CaptureReader(base) as s, CaptureReader(tuned) as t:
        assert s.store == "sample:4" and s.complete
        pos = s.sampled_positions()
        assert np.array_equal(pos, t.sampled_positions())  # same tokens, same rows
        want = np.concatenate([sample_positions(s.sample_tokens(i), 4) + s.offsets[i] for i in range(s.n_samples)])
        assert np.array_equal(pos, want)
        assert s.shape("sites/residual.1")[0] == len(pos) == sum(min(4, n) for n in np.diff(s.offsets))
        np.testing.assert_array_equal(s.h5["sites/residual.1"][()], f.h5["sites/residual.1"][()][pos])
        assert "positions" not in s.sites()


def _compare(paths, **kw):
    import driftkit

    return driftkit.compare(list(paths), **kw).to_dict()


def test_pooled_compare_equals_tokens(store_captures) -> None:
    # PCA shift: the paper's statistic needs only per-sample means, so it is the same number
    for positions in ("prompt", "response"):  # response: 2 samples per domain, so only the angles
        f = _compare(store_captures["tokens"], analyses=["pca_shift"], positions=positions)["analyses"]["pca_shift"]
        p = _compare(store_captures["pooled"], analyses=["pca_shift"], positions=positions)["analyses"]["pca_shift"]
        assert len(f["per_domain"]) == (3 if positions == "prompt" else 0)
        for d, v in f["per_domain"].items():
            assert p["per_domain"][d]["distance"] == pytest.approx(v["distance"], rel=1e-6, abs=1e-9)
        for la, lb in zip(f["layers"], p["layers"]):
            assert lb["mean_angle_deg"] == pytest.approx(la["mean_angle_deg"], rel=1e-5, abs=1e-6)
    full = _compare(store_captures["tokens"], analyses=None, positions="all")
    pooled = _compare(store_captures["pooled"], analyses=None, positions="all")
    fa, pa = full["analyses"], pooled["analyses"]
    assert len(fa["pca_shift"]["per_domain"]) == 3  # every domain has its 3+ samples: nothing vacuous
    for d, v in fa["pca_shift"]["per_domain"].items():
        assert v["distance"] > 0
        assert pa["pca_shift"]["per_domain"][d]["distance"] == pytest.approx(v["distance"], rel=1e-6, abs=1e-9)
        for pf, pp in zip(v["points"], pa["pca_shift"]["per_domain"][d]["points"]):
            assert pp["pc1_shift"] == pytest.approx(pf["pc1_shift"], rel=1e-5, abs=1e-7)
    for la, lb in zip(fa["pca_shift"]["layers"], pa["pca_shift"]["layers"]):
        assert lb["mean_angle_deg"] == pytest.approx(la["mean_angle_deg"], rel=1e-5, abs=1e-6)
    assert pa["pca_shift"]["rows"] == "pooled" and fa["pca_shift"]["rows"] == "tokens"
    # KL and ranks read final/*: exactly equal
    assert pa["kl"]["summary"] == fa["kl"]["summary"]
    assert pa["token_rank"]["summary"] == fa["token_rank"]["summary"]
    # token CKA cannot run on pooled states: skipped, with the reason in the JSON and the notes
    assert "cka" not in pa and "pooled" in pooled["skipped"]["cka"]
    assert any(n.startswith("cka skipped") for n in pooled["notes"])
    # sample-unit CKA runs on the pooled means, equal to the per-token capture's
    sample_unit = {"cka": {"unit": "sample"}}
    fs = _compare(store_captures["tokens"], analyses=["cka"], options=sample_unit, positions="all")
    ps = _compare(store_captures["pooled"], analyses=["cka"], options=sample_unit, positions="all")
    for la, lb in zip(fs["analyses"]["cka"]["layers"], ps["analyses"]["cka"]["layers"]):
        assert lb["linear_cka"] == pytest.approx(la["linear_cka"], rel=1e-6, abs=1e-9)
    with pytest.raises(DriftkitError, match="needs layer sites stored as"):
        _compare(store_captures["pooled"], analyses=["cka"])


def test_sampled_cka_runs_and_is_marked(store_captures) -> None:
    full = _compare(store_captures["tokens"], analyses=["cka", "kl"])
    res = _compare(store_captures["sampled"], analyses=["cka", "kl"])
    cka = res["analyses"]["cka"]
    assert cka["rows"] == "sampled:4" and full["analyses"]["cka"]["rows"] == "tokens"
    assert cka["n"] < full["analyses"]["cka"]["n"] and len(cka["layers"]) == len(full["analyses"]["cka"]["layers"])
    assert res["analyses"]["kl"]["summary"] == full["analyses"]["kl"]["summary"]
    # a sampled file pairs with a per-token one on the sampled positions: the same numbers
    base_tok, tuned_s = store_captures["tokens"][0], store_captures["sampled"][1]
    mixed = _compare([base_tok, tuned_s], analyses=["cka"])["analyses"]["cka"]
    for la, lb in zip(cka["layers"], mixed["layers"]):
        assert lb["linear_cka"] == pytest.approx(la["linear_cka"], rel=1e-6)


def test_pooled_with_tokens_is_refused(store_captures) -> None:
    a, b = store_captures["pooled"][0], store_captures["tokens"][1]
    rep = _compare([a, b], analyses=None)
    assert "kl" in rep["analyses"] and "pca_shift" not in rep["analyses"]
    assert "cannot be paired" in rep["skipped"]["pca_shift"]
    with pytest.raises(DriftkitError, match="pooled layer cannot be paired with per-token rows"):
        _compare([a, b], analyses=["pca_shift"])


# -- --dry-run -----------------------------------------------------------------------------------------
def _config_only(src: Path, dst: Path) -> Path:
    """A folder with config.json and the tokenizer only (no weights), like a hub repo before download."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    return dst


def _dry(*args: object) -> dict:
    r = CliRunner().invoke(app, ["capture", *map(str, args), "--dry-run", "--json", "-"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_dry_run_from_config_only(tiny_model: Path, tiny_prompts: Path, tmp_path: Path, tiny_capture_pair) -> None:
    folder = _config_only(tiny_model, tmp_path / "cfg")
    est = _dry(folder, "--prompts", tiny_prompts)
    with CaptureReader(tiny_capture_pair[0]) as r:
        assert est["tokens"] == r.n_tokens and est["samples"] == r.n_samples
        d, L = r.shape("final/hidden")[1], len(r.residual_layers())
        stored = {p: int(np.prod(r.shape(p)[1:])) * r.h5[p].dtype.itemsize for p in r.datasets()}
    assert est["per_site"] == {"tokens/ids": 4, **stored}
    assert est["bytes_per_token"] == 4 + (L + 1) * d * 2 + d * 4 + 4 + 4 + 20 * 8
    assert est["static_bytes"] == est["vocab_size"] * d * 4
    assert est["total_bytes"] == est["tokens"] * est["bytes_per_token"] + est["static_bytes"]
    pooled = _dry(folder, "--prompts", tiny_prompts, "--store", "pooled", "--layers", "0,2")
    assert pooled["per_site_per_sample"] == {
        p: 3 * d * 4 for p in ("pooled/embed", "pooled/residual.0", "pooled/residual.2")
    }
    assert pooled["bytes_per_token"] == 4 + d * 4 + 4 + 4 + 20 * 8
    assert pooled["total_bytes"] == (
        pooled["tokens"] * pooled["bytes_per_token"]
        + pooled["samples"] * pooled["bytes_per_sample"]
        + est["static_bytes"]
    )
    sampled = _dry(folder, "--prompts", tiny_prompts, "--store", "sample:4", "--layers", "0")
    assert sampled["bytes_per_sample"] == 4 * (2 * d * 2 + 8)
    gen = _dry(folder, "--prompts", tiny_prompts, "--generate", "--max-new-tokens", "10")
    assert gen["tokens"] == est["tokens"] + 10 * 5  # five prompts without a given response
    r = CliRunner().invoke(app, ["capture", str(folder), "--prompts", str(tiny_prompts), "--dry-run"])
    assert r.exit_code == 0 and "B/token" in r.output
    assert "--store tokens, layer sites in float16\n" in r.output  # one heading line (a table title wrapped)


def test_capture_that_cannot_fit_is_refused_before_compute(tiny_model, tiny_prompts, tmp_path, monkeypatch) -> None:
    import driftkit.generate

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))

    def no_generation(*a, **k):
        raise AssertionError("generated before the space check")

    monkeypatch.setattr(driftkit.generate.HFGenerator, "generate", no_generation)
    for extra in ({}, {"generate": True, "max_new_tokens": 8}):
        out = tmp_path / "x.h5"
        with pytest.raises(DriftkitError, match=r"needs about .* MB .* is free") as e:
            capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=out, **extra))
        assert not out.exists() and "\n" not in str(e.value)
    assert "--max-new-tokens" in str(e.value)


def test_space_check_counts_the_unembedding(tiny_model, tiny_prompts, tmp_path, monkeypatch) -> None:
    """A small capture's per-token arrays fit where its unembedding (written once) does not: the check
    counted only the former, so the capture started and failed mid-write with a disk-full error and a
    partial file (113 MB of unembedding vs ~1 MB for a few prompts on SmolLM2-135M)."""
    est = _dry(_config_only(tiny_model, tmp_path / "cfg"), "--prompts", tiny_prompts)
    assert est["static_bytes"] > est["total_bytes"] // 4  # the unembedding is a real share of this capture
    real = shutil.disk_usage
    free = est["total_bytes"] - est["static_bytes"] // 2  # room for everything but half the unembedding
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))
    out = tmp_path / "x.h5"
    with pytest.raises(DriftkitError, match=r"needs about .* MB of it written once, the unembedding\) but only"):
        capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=out))
    assert not out.exists()
    shared = tmp_path / "u.h5"  # --shared-unembed puts it in another file: the capture itself fits
    capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=out, shared_unembed=shared))
    assert out.exists()


def test_resume_keeps_store(tiny_model, tiny_prompts, tmp_path) -> None:
    out = tmp_path / "p.h5"
    capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=out, store="pooled"))
    with h5py.File(out, "r") as f:
        assert f.attrs["store"] == "pooled"
    with pytest.raises(DriftkitError, match="store"):
        capture(CaptureConfig(model=str(tiny_model), prompts=str(tiny_prompts), out=out, store="tokens", resume=True))


def test_cli_shows_skips_and_inspects_pooled(store_captures, tmp_path) -> None:
    a, b = store_captures["pooled"]
    r = CliRunner().invoke(app, ["compare", str(a), str(b), "--positions", "all"])
    assert r.exit_code == 0, r.output
    assert "cka skipped" in r.output and "pooled" in r.output
    out = tmp_path / "rep.json"
    r = CliRunner().invoke(app, ["compare", str(a), str(b), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "cka" in json.loads(out.read_text())["skipped"]
    r = CliRunner().invoke(app, ["inspect", str(a), "--json", "-"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["store"] == "pooled" and "pooled/residual.0" in [x["path"] for x in info["arrays"]]


@pytest.mark.parametrize("mode", ["pooled", "sample:3"])
def test_resume_rewrites_only_missing_samples(store_prompts, tiny_model, tmp_path, mode) -> None:
    out = tmp_path / "r.h5"
    cfg = dict(model=str(tiny_model), prompts=str(store_prompts), out=out, store=mode, max_batch_tokens=64)
    capture(CaptureConfig(**cfg))
    site = "pooled/residual.1" if mode == "pooled" else "sites/residual.1"
    with h5py.File(out, "r+") as f:  # as if the run died before samples 2 and 5 landed
        want = f[site][()]
        if mode == "pooled":
            redone = np.isin(np.arange(len(want)), [2, 5])
        else:
            owner = np.searchsorted(f["samples/offsets"][()], f["sites/positions"][()], side="right") - 1
            redone = np.isin(owner, [2, 5])
        holed = want.copy()
        holed[redone] = 0
        f[site][...] = holed
        done = f["samples/done"][()]
        done[[2, 5]] = False
        f["samples/done"][...] = done
        written = f["samples/sites_written"][()]
        written[[2, 5]] = False
        f["samples/sites_written"][...] = written
        f.attrs["complete"] = False
    capture(CaptureConfig(**cfg, resume=True))
    with CaptureReader(out) as r:
        assert r.complete
        got = r.h5[site][()]
    assert redone.sum() >= 2
    np.testing.assert_array_equal(got, want)  # the holes were refilled with the same values
