"""Bundled analysis plugins on real tiny captures vs independent computations from the raw arrays."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import driftkit
from tests.test_metrics_cka import _gram_biased, _gram_debiased


def _load(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {
            k: f[k][()]
            for k in ("samples/offsets", "samples/prompt_len", "tokens/ids", "final/hidden", "final/unembed")
        }
        out["domains"] = [d.decode() if isinstance(d, bytes) else str(d) for d in f["samples/domain"][()]]
        out["sites"] = {n: f["sites"][n][()].astype(np.float64) for n in f["sites"]}
    return out


@pytest.fixture(scope="module")
def pair(tiny_capture_pair):
    a, b = tiny_capture_pair
    return a, b, _load(a), _load(b)


def _predictive_positions(d: dict, positions: str) -> list[tuple[int, int]]:
    """(token index, sample) pairs whose next token exists and lies in the selected part, by hand."""
    out = []
    off, plen = d["samples/offsets"], d["samples/prompt_len"]
    for s in range(len(off) - 1):
        for t in range(off[s], off[s + 1] - 1):
            nxt_rel = t + 1 - off[s]
            if (
                positions == "all"
                or (positions == "response" and nxt_rel >= plen[s])
                or (positions == "prompt" and nxt_rel < plen[s])
            ):
                out.append((t, s))
    return out


@pytest.mark.parametrize("positions", ["all", "response"])
def test_kl_plugin_vs_full_softmax(pair, positions: str) -> None:
    a, b, da, db = pair
    rep = driftkit.compare([a, b], analyses=["kl"], positions=positions)
    res = rep.to_dict()["analyses"]["kl"]
    pos = _predictive_positions(da, positions)
    assert res["summary"]["n_positions"] == len(pos)
    t = np.array([p[0] for p in pos])
    la = torch.from_numpy(da["final/hidden"][t].astype(np.float64) @ da["final/unembed"].astype(np.float64).T)
    lb = torch.from_numpy(db["final/hidden"][t].astype(np.float64) @ db["final/unembed"].astype(np.float64).T)
    lpa, lpb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
    kl_f = (lpb.exp() * (lpb - lpa)).sum(-1).numpy()
    kl_r = (lpa.exp() * (lpa - lpb)).sum(-1).numpy()
    y = torch.from_numpy(da["tokens/ids"][t + 1].astype(np.int64))
    lr = (lpb.gather(1, y[:, None]) - lpa.gather(1, y[:, None]))[:, 0].numpy()
    assert res["summary"]["kl_forward"] == pytest.approx(kl_f.mean(), rel=1e-4)
    assert res["summary"]["kl_reverse"] == pytest.approx(kl_r.mean(), rel=1e-4)
    # the paper's sampled estimator averages over response tokens (the fixture has one response)
    resp = {p[0] for p in _predictive_positions(da, "response")}
    in_resp = np.array([ti in resp for ti in t])
    assert in_resp.any() and res["logratio_positions"] == "response"
    assert res["summary"]["sampled_logratio"] == pytest.approx(lr[in_resp].mean(), rel=1e-4, abs=1e-5)
    doms = np.array([da["domains"][p[1]] for p in pos])
    for d, r in res["per_domain"].items():
        assert r["n_positions"] == int((doms == d).sum())
        if r["n_positions"] == 0:  # e.g. a domain without responses under --positions response
            assert r["kl_forward"] is None
        else:
            assert r["kl_forward"] == pytest.approx(kl_f[doms == d].mean(), rel=1e-4)


def test_token_rank_plugin_vs_argsort(pair) -> None:
    a, b, da, db = pair
    res = driftkit.compare([a, b], analyses=["token_rank"], positions="all").to_dict()["analyses"]["token_rank"]
    pos = _predictive_positions(da, "all")
    t = np.array([p[0] for p in pos])
    la = torch.from_numpy(da["final/hidden"][t] @ da["final/unembed"].T)
    lb = torch.from_numpy(db["final/hidden"][t] @ db["final/unembed"].T)
    order_a = torch.argsort(la, 1, descending=True)
    order_b = torch.argsort(lb, 1, descending=True)
    top_b = order_b[:, 0]
    rank_top = (order_a == top_b[:, None]).nonzero()[:, 1] + 1
    y = torch.from_numpy(da["tokens/ids"][t + 1].astype(np.int64))
    ra = (order_a == y[:, None]).nonzero()[:, 1] + 1
    rb = (order_b == y[:, None]).nonzero()[:, 1] + 1
    s = res["summary"]
    assert s["unshifted"] == pytest.approx(float((rank_top == 1).float().mean()))
    assert s["marginal"] == pytest.approx(float(((rank_top >= 2) & (rank_top <= 3)).float().mean()))
    assert s["shifted"] == pytest.approx(float((rank_top > 3).float().mean()))
    assert s["rank_shift"] == pytest.approx(float((ra - rb).double().mean()))
    assert s["rank_shift_top"] == pytest.approx(float((rank_top - 1).double().mean()))
    doms = np.array(da["domains"])[np.array([p[1] for p in pos])]
    for dom, r in res["per_domain"].items():
        sel = torch.from_numpy(doms == dom)
        assert r["rank_shift_top"] == pytest.approx(float((rank_top[sel] - 1).double().mean()))
    counts = torch.bincount(top_b[rank_top > 3], minlength=la.shape[1])
    assert sum(x["count"] for x in res["top_shifted_tokens"]) <= int(counts.sum())
    top = res["top_shifted_tokens"][0]
    assert top["count"] == int(counts.max()) and isinstance(top["token"], str)


def test_cka_plugin_vs_gram(pair) -> None:
    a, b, da, db = pair
    res = driftkit.compare([a, b], analyses=["cka"], chunk_tokens=16, positions="all").to_dict()["analyses"]["cka"]
    sites = [e["site"] for e in res["layers"]]
    assert sites[0] == "embed" and sites[1:] == [f"residual.{i}" for i in range(4)]
    for e in res["layers"]:
        x, y = da["sites"][e["site"]], db["sites"][e["site"]]
        assert e["linear_cka"] == pytest.approx(_gram_biased(x, y), abs=1e-6)
        assert e["debiased_cka"] == pytest.approx(_gram_debiased(x, y), abs=1e-6)


def test_cka_layers_positions_and_sample_unit(pair) -> None:
    a, b, da, db = pair
    rep = driftkit.compare(
        [a, b], analyses=["cka"], layers="1,3", positions="prompt", options={"cka": {"unit": "sample"}}
    )
    res = rep.to_dict()["analyses"]["cka"]
    assert [e["layer"] for e in res["layers"]] == [1, 3]
    off, plen = da["samples/offsets"], da["samples/prompt_len"]
    for e in res["layers"]:

        def pool(d, e=e):
            return np.stack([d["sites"][e["site"]][off[s] : off[s] + plen[s]].mean(0) for s in range(len(off) - 1)])

        assert e["debiased_cka"] == pytest.approx(_gram_debiased(pool(da), pool(db)), abs=1e-6)
    assert res["n"] == len(off) - 1


@pytest.fixture(scope="module")
def pair3(tmp_path_factory, tiny_model: Path, tiny_tuned: Path):
    """Captures of prompts with 3 samples in 'math' and 'other' and 2 in 'non' (which PCA shift skips),
    plus a second capture of the base model (identical to the first)."""
    import json

    from driftkit.capturing import CaptureConfig, capture

    d = tmp_path_factory.mktemp("pca3")
    texts = {
        "math": ["What is 2 + 3?", "Solve 2x + 4 = 10 for x.", "Compute 7 * 6 and add one."],
        "other": ["All cats are animals. Is Tom an animal?", "def add(a, b):", "Name a blue thing."],
        "non": ["Write a poem about the sea.", "The sea is wide and blue."],
    }
    rows = [{"id": f"{dom[0]}{i}", "domain": dom, "text": t} for dom, ts in texts.items() for i, t in enumerate(ts)]
    prompts = d / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def cap(m: Path, name: str) -> Path:
        return capture(CaptureConfig(model=str(m), prompts=str(prompts), out=d / name, max_batch_tokens=64))

    a, b, a2 = cap(tiny_model, "a.h5"), cap(tiny_tuned, "b.h5"), cap(tiny_model, "a2.h5")
    return a, b, a2, _load(a), _load(b)


def test_pca_shift_plugin_vs_sklearn(pair3) -> None:
    a, b, _, da, db = pair3
    res = driftkit.compare([a, b], analyses=["pca_shift"]).to_dict()["analyses"]["pca_shift"]
    assert set(res["per_domain"]) == {"math", "other"}
    assert "non" in res["skipped_domains"] and "at least 3" in res["skipped_domains"]["non"]
    off = da["samples/offsets"]
    doms = np.array(da["domains"])
    names = ["embed"] + [f"residual.{i}" for i in range(4)]
    for dom, r in res["per_domain"].items():
        idx = np.flatnonzero(doms == dom)
        pa, pb = [], []
        for n in names:
            fa = np.stack([da["sites"][n][off[s] : off[s + 1]].mean(0) for s in idx])
            fb = np.stack([db["sites"][n][off[s] : off[s + 1]].mean(0) for s in idx])
            c = PCA(n_components=2).fit(fa).components_
            c = c * np.sign(c[np.arange(2), np.abs(c).argmax(1)])[:, None]  # driftkit's sign rule
            ma, mb = fa.dot(c[0]).mean(), fb.dot(c[0]).mean()
            pa.append((0.0, fa.dot(c[1]).mean()))
            pb.append((mb - ma, fb.dot(c[1]).mean()))
        expected = np.linalg.norm(np.mean(pb, 0) - np.mean(pa, 0))
        assert r["distance"] == pytest.approx(expected, rel=1e-5)
        per_layer = np.linalg.norm(np.array(pb) - np.array(pa), axis=1)  # sign-invariant per layer
        assert r["mean_layer_distance"] == pytest.approx(per_layer.mean(), rel=1e-5)
        assert len(r["points"]) == len(names)
    assert len(res["layers"]) == len(names)
    assert all(0 <= x <= 90.0 + 1e-9 for layer in res["layers"] for x in layer["principal_angles_deg"])


def test_max_tokens_subsample_is_seeded(pair) -> None:
    a, b, _, _ = pair
    r1 = driftkit.compare([a, b], analyses=["kl"], max_tokens=40, seed=3, positions="all").to_dict()["analyses"]["kl"][
        "summary"
    ]
    r2 = driftkit.compare([a, b], analyses=["kl"], max_tokens=40, seed=3, positions="all").to_dict()["analyses"]["kl"][
        "summary"
    ]
    r3 = driftkit.compare([a, b], analyses=["kl"], max_tokens=40, seed=4, positions="all").to_dict()["analyses"]["kl"][
        "summary"
    ]
    assert r1["n_positions"] == 40 and r1 == r2 and r3["kl_forward"] != r1["kl_forward"]


def test_identical_captures_show_no_drift(pair) -> None:
    a, _, _, _ = pair
    body = driftkit.compare([a, a]).to_dict()
    an = body["analyses"]
    assert all(e["linear_cka"] == pytest.approx(1.0, abs=1e-9) for e in an["cka"]["layers"])
    assert an["kl"]["summary"]["kl_forward"] == pytest.approx(0.0, abs=1e-6)
    assert an["token_rank"]["summary"]["unshifted"] == pytest.approx(1.0)
    assert all(v["distance"] == pytest.approx(0.0, abs=1e-9) for v in an["pca_shift"]["per_domain"].values())


def test_cka_cross_layer_matrix(pair) -> None:
    a, b, da, db = pair
    rep = driftkit.compare(
        [a, b], analyses=["cka"], layers="0,2", positions="all", options={"cka": {"cross_layer": "true"}}
    )
    res = rep.to_dict()["analyses"]["cka"]
    cross = res["cross_layer"]
    assert cross["layers"] == [0, 2]
    for i, li in enumerate(cross["layers"]):
        for j, lj in enumerate(cross["layers"]):
            x, y = da["sites"][f"residual.{li}"], db["sites"][f"residual.{lj}"]
            assert cross["debiased_cka"][i][j] == pytest.approx(_gram_debiased(x, y), abs=1e-6)
    # the diagonal is the per-layer result
    assert [cross["debiased_cka"][k][k] for k in range(2)] == pytest.approx(
        [e["debiased_cka"] for e in res["layers"]], abs=1e-12
    )
    assert "Cross-layer debiased CKA" in rep.to_html()


def test_identical_captures_exact_end_to_end(pair3) -> None:
    """The same tiny model captured twice (two files): KL, JS, log-ratio, rank shift and PCA shift are
    exactly 0 and CKA exactly 1 (==, not approx)."""
    a, _, a2, _, _ = pair3
    rep = driftkit.compare([a, a2], analyses=["kl", "token_rank", "pca_shift", "cka"], chunk_tokens=16)
    an = rep.to_dict()["analyses"]
    for part in [an["kl"]["summary"], *an["kl"]["per_domain"].values()]:
        assert part["kl_forward"] == 0.0 and part["kl_reverse"] == 0.0 and part["js"] == 0.0
        assert part["sampled_logratio"] == 0.0
    tr = an["token_rank"]["summary"]
    assert tr["unshifted"] == 1.0 and tr["rank_shift"] == 0.0 and tr["rank_shift_top"] == 0.0
    assert an["pca_shift"]["per_domain"]
    for v in an["pca_shift"]["per_domain"].values():
        assert v["distance"] == 0.0 and v["mean_layer_distance"] == 0.0
    assert an["cka"]["layers"]
    for e in an["cka"]["layers"]:
        assert e["linear_cka"] == 1.0 and e["debiased_cka"] == 1.0


def test_nan_logits_name_sample_and_position(pair3, tmp_path: Path) -> None:
    import shutil

    from driftkit.errors import DriftkitError

    a, b, _, da, _ = pair3
    bad = tmp_path / "bad.h5"
    shutil.copy(b, bad)
    off = da["samples/offsets"]
    t = int(off[4]) + 2  # third token of the fifth sample
    with h5py.File(bad, "r+") as f:
        row = f["final/hidden"][t]
        row[3] = np.nan
        f["final/hidden"][t] = row
    with pytest.raises(DriftkitError, match=r"sample o1 position 2\b.*NaN"):
        driftkit.compare([a, bad], analyses=["kl"])


def test_token_strings_match_transformers_decode(pair) -> None:
    """The report's token strings come from the tokenizers library (no transformers import); they
    must equal what the model's own transformers tokenizer decodes, for every id."""
    from transformers import AutoTokenizer

    from driftkit.comparing.pair import CapturePair, CompareOptions
    from driftkit.store.reader import CaptureReader

    a, b, _, _ = pair
    with CaptureReader(a) as ra, CaptureReader(b) as rb:
        cp = CapturePair(ra, rb, CompareOptions())
        hf = AutoTokenizer.from_pretrained(ra.attrs["model_path"])
        ids = list(range(len(hf)))
        assert type(cp._tokenizer).__name__ == "_RustTokenizer"
        expected = [hf.decode([i]) if "\ufffd" not in hf.decode([i]) else hf.convert_ids_to_tokens(i) for i in ids]
        assert cp.token_strings(ids) == expected
