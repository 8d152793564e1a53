"""PCA shift vs a direct scikit-learn computation written the way the paper's script does it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from driftkit.metrics.pca import SamplePooler, pca_shift, principal_angles


def _ragged(rng, lengths, d, offset):
    return [rng.normal(size=(n, d)) + offset for n in lengths]


def test_pca_shift_matches_direct_sklearn() -> None:
    rng = np.random.default_rng(0)
    lengths = [5, 9, 3, 12, 7, 4, 8, 6]
    n_layers, d = 3, 10
    # token-level activations per layer and sample; B = A + a layer-dependent drift
    acts_a = [_ragged(rng, lengths, d, offset=i) for i in range(n_layers)]
    acts_b = [
        [x + 0.3 * (i + 1) * np.linspace(-1, 1, d) + 0.1 * rng.normal(size=x.shape) for x in layer]
        for i, layer in enumerate(acts_a)
    ]
    # a mask that drops the first two tokens of every sample (e.g. --positions response)
    keep = [np.arange(n) >= 2 for n in lengths]

    # --- reference: the paper's recipe on mask-aware means -------------------------------------
    ref_pa, ref_pb = [], []
    for i in range(n_layers):
        fa = np.stack([x[k].mean(0) for x, k in zip(acts_a[i], keep)])
        fb = np.stack([x[k].mean(0) for x, k in zip(acts_b[i], keep)])
        pca = PCA(n_components=2).fit(fa)
        c = pca.components_
        c1, c2 = c * np.sign(c[np.arange(2), np.abs(c).argmax(1)])[:, None]  # largest entry positive
        pc1_o, pc2_o = fa.dot(c1).mean(), fa.dot(c2).mean()
        pc1_u, pc2_u = fb.dot(c1).mean(), fb.dot(c2).mean()
        ref_pa.append((0.0, pc2_o))
        ref_pb.append((pc1_u - pc1_o, pc2_u))
    ref_dist = np.linalg.norm(np.mean(ref_pb, 0) - np.mean(ref_pa, 0))

    # --- driftkit: streamed pooling over a flat token axis in odd-sized chunks -----------------
    sample_of_token = np.repeat(np.arange(len(lengths)), lengths)
    mask = np.concatenate(keep)
    pooled_a, pooled_b = [], []
    for i in range(n_layers):
        flat_a, flat_b = np.concatenate(acts_a[i]), np.concatenate(acts_b[i])
        pa, pb = SamplePooler(len(lengths), d), SamplePooler(len(lengths), d)
        for s in range(0, len(flat_a), 11):
            sel = np.arange(s, min(s + 11, len(flat_a)))
            sel = sel[mask[sel]]
            pa.update(sample_of_token[sel], torch.from_numpy(flat_a[sel]).float())
            pb.update(sample_of_token[sel], torch.from_numpy(flat_b[sel]).float())
        pooled_a.append(pa.means()[0])
        pooled_b.append(pb.means()[0])
    res = pca_shift(pooled_a, pooled_b)
    assert res.distance == pytest.approx(ref_dist, rel=1e-5)
    for got, (ra, rb) in zip(res.layers, zip(ref_pa, ref_pb)):
        assert got["pc1_shift"] == pytest.approx(rb[0], rel=1e-5, abs=1e-6)
        assert got["pc2_a"] == pytest.approx(ra[1], rel=1e-5, abs=1e-6)
        assert got["pc2_b"] == pytest.approx(rb[1], rel=1e-5, abs=1e-6)
    assert res.distance > 0.1


def test_pca_shift_zero_for_identical_models() -> None:
    rng = np.random.default_rng(1)
    f = [rng.normal(size=(6, 5)) for _ in range(2)]
    res = pca_shift(f, [x.copy() for x in f])
    assert res.distance == 0.0 and res.mean_layer_distance == 0.0


def _layers(seed: int, n_layers: int = 4, n: int = 9, d: int = 7) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    fa = [rng.normal(size=(n, d)) * np.linspace(3, 0.5, d) + i for i in range(n_layers)]
    fb = [x + 0.4 * rng.normal(size=x.shape) + 0.2 for x in fa]
    return fa, fb


def test_component_signs_do_not_depend_on_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """sklearn <= 1.4 and >= 1.5 flip components differently: flipped components give identical results."""
    import driftkit.metrics.pca as P

    fa, fb = _layers(2)
    ref = pca_shift(fa, fb)
    real = P._fit_components

    for flip in ([-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]):
        monkeypatch.setattr(P, "_fit_components", lambda x, k, flip=flip: real(x, k) * np.array(flip)[:, None])
        got = pca_shift(fa, fb)
        assert got.distance == ref.distance and got.mean_layer_distance == ref.mean_layer_distance
        assert got.layers == ref.layers
    # flipping the data's sign: same subspace, points mirrored, same distances
    neg = pca_shift([-x for x in fa], [-x for x in fb])
    assert neg.distance == pytest.approx(ref.distance, rel=1e-12)
    assert neg.mean_layer_distance == pytest.approx(ref.mean_layer_distance, rel=1e-12)


def test_mean_layer_distance_vs_numpy() -> None:
    fa, fb = _layers(3)
    res = pca_shift(fa, fb)
    d = []
    for a, b in zip(fa, fb):
        c = PCA(n_components=2).fit(a).components_
        pa, pb = (a @ c.T).mean(0), (b @ c.T).mean(0)
        d.append(np.hypot(pb[0] - pa[0], pb[1] - pa[1]))  # |B - A| per layer, any signs
    assert res.mean_layer_distance == pytest.approx(np.mean(d), rel=1e-10)
    assert res.mean_layer_distance >= res.distance - 1e-12  # triangle inequality over layers


def test_pooler_counts_and_empty_samples() -> None:
    p = SamplePooler(3, 2)
    p.update(np.array([0, 0, 2]), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    means, counts = p.means()
    assert counts.tolist() == [2, 0, 1]
    assert means[0].tolist() == [2.0, 3.0] and np.isnan(means[1]).all()


def test_principal_angles_vs_svd() -> None:
    rng = np.random.default_rng(2)
    fa = rng.normal(size=(40, 8)) * np.array([5, 4, 3, 2, 1, 1, 1, 1])
    rot = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    fb = fa @ rot
    k = 3
    ua = PCA(k).fit(fa).components_.T
    ub = PCA(k).fit(fb).components_.T
    cos = np.clip(np.linalg.svd(ua.T @ ub, compute_uv=False), -1, 1)
    expected = np.sort(np.degrees(np.arccos(cos)))
    np.testing.assert_allclose(principal_angles(fa, fb, k), expected, atol=1e-6)
    np.testing.assert_allclose(principal_angles(fa, fa.copy(), k), 0.0, atol=1e-5)


def test_arpack_axes_equal_the_full_svd() -> None:
    """Large inputs take ARPACK (a few axes of a wide matrix): the same axes as the full SVD, to
    float64 rounding, including an outlier feature and a rank-deficient input (which falls back)."""
    from sklearn.decomposition import PCA

    import driftkit.metrics.pca as P

    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 96)) * np.linspace(0.1, 3.0, 96)
    x[:, 7] += 40 * rng.standard_normal(200)
    low_rank = rng.standard_normal((200, 2)) @ rng.standard_normal((2, 96))
    for data in (x, low_rank):
        for k in (2, 4):
            got = P.fix_signs(P._fit_components(data, k))
            ref = P.fix_signs(PCA(n_components=k, svd_solver="full").fit(data).components_)
            top = 2 if data is low_rank else k  # beyond the rank the axes are arbitrary
            np.testing.assert_allclose(got[:top], ref[:top], atol=1e-10)


def _sklearn_components(x: np.ndarray, k: int, solver: str) -> np.ndarray:
    kw = {"random_state": 0} if solver == "arpack" else {}
    return PCA(n_components=k, svd_solver=solver, **kw).fit(x).components_


def _pca_inputs() -> dict[str, tuple[np.ndarray, int, str, int]]:
    """name -> (x, k, the sklearn solver driftkit's path mirrors, how many axes are defined)."""
    rng = np.random.default_rng(11)
    outlier = rng.standard_normal((150, 96)) * np.linspace(0.05, 1.0, 96) + 3.0
    outlier[:, 5] += 30 * rng.standard_normal(150)  # a massive-activation feature
    return {
        "arpack_outlier": (outlier, 2, "arpack", 2),
        "arpack_wide": (rng.standard_normal((40, 120)) * np.linspace(3, 0.1, 120), 4, "arpack", 4),
        "arpack_tall": (rng.standard_normal((300, 40)) * np.linspace(2, 0.5, 40), 4, "arpack", 4),
        "arpack_rank2": (rng.standard_normal((200, 2)) @ rng.standard_normal((2, 96)), 4, "arpack", 2),
        "full_small": (rng.standard_normal((20, 576)) * np.linspace(2, 0.1, 576), 4, "full", 4),
        "full_wide": (rng.standard_normal((10, 50)), 2, "full", 2),
        "full_rank2": (rng.standard_normal((12, 2)) @ rng.standard_normal((2, 30)), 3, "full", 2),
    }


@pytest.mark.parametrize("name", list(_pca_inputs()))
def test_components_equal_sklearn_pca(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """driftkit's axes, made without importing scikit-learn, equal scikit-learn's PCA (the solver the
    input size selects) to 1e-10 after fix_signs; on defined axes of rank-deficient input too."""
    import scipy.sparse.linalg

    import driftkit.metrics.pca as P

    x, k, solver, defined = _pca_inputs()[name]
    calls = []
    real_svds = scipy.sparse.linalg.svds
    monkeypatch.setattr(scipy.sparse.linalg, "svds", lambda *a, **kw: calls.append(1) or real_svds(*a, **kw))
    got = P.fix_signs(P._fit_components(x, k))
    assert bool(calls) == (solver == "arpack")  # the path the sizes select was taken
    ref = P.fix_signs(_sklearn_components(x, k, solver))
    assert got.shape == ref.shape == (k, x.shape[1])
    np.testing.assert_allclose(got[:defined], ref[:defined], rtol=0, atol=1e-10)
    if defined == k:  # same scipy calls, same arguments: not just close
        assert np.array_equal(got, ref)


def test_arpack_failure_falls_back_to_the_full_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.sparse.linalg
    from scipy.sparse.linalg import ArpackNoConvergence

    import driftkit.metrics.pca as P

    x = _pca_inputs()["arpack_outlier"][0]

    def fail(*a: object, **kw: object) -> None:
        raise ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))

    monkeypatch.setattr(scipy.sparse.linalg, "svds", fail)
    got = P.fix_signs(P._fit_components(x, 2))
    np.testing.assert_allclose(got, P.fix_signs(_sklearn_components(x, 2, "full")), rtol=0, atol=1e-10)


def test_one_blas_thread_limits_every_loaded_blas() -> None:
    """The fits' BLAS (numpy's and scipy's OpenBLAS) runs on one thread inside the limit, without
    scikit-learn having to be imported for threadpoolctl to find them."""
    from threadpoolctl import threadpool_info

    import driftkit.metrics.pca as P

    P._fit_components(np.random.default_rng(0).standard_normal((40, 50)), 2)  # scipy's modules loaded
    with P._one_blas_thread():
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert blas and all(lib["num_threads"] == 1 for lib in blas)


_NO_HEAVY_IMPORTS = """
import io, json, sys
from rich.console import Console
import driftkit
report = driftkit.compare([sys.argv[1], sys.argv[2]], analyses=["cka", "kl", "pca_shift", "token_rank"])
report.to_json()
report.show(Console(file=io.StringIO(), width=100))
heavy = ["sklearn", "pandas", "scipy.stats", "matplotlib"]
print(json.dumps({"loaded": [m for m in heavy if m in sys.modules], "pca": report.body["analyses"]["pca_shift"]["k"]}))
"""


def test_compare_imports_no_sklearn_pandas_or_scipy_stats(tiny_capture_pair: tuple) -> None:
    """`compare` with the default logits and layer analyses, its JSON and terminal report: no
    scikit-learn (~1.1 s of imports), pandas or scipy.stats, checked in a fresh interpreter."""
    import json
    import subprocess
    import sys

    a, b = tiny_capture_pair
    r = subprocess.run([sys.executable, "-c", _NO_HEAVY_IMPORTS, str(a), str(b)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [] and got["pca"] == 4
