"""Scale figures for ``driftkit compare`` (prints them; no assertions).

    python perf/compare_scale.py                 # everything
    python perf/compare_scale.py --only cka      # streaming CKA vs gram-space reference, RSS
    python perf/compare_scale.py --only kl       # exact KL over V=49,152 vs a bare matmul
    python perf/compare_scale.py --only compare  # compare of two captures of the default model

Figures (issue 3):
  * debiased linear CKA, d = 576: streaming kernel vs the gram-space formula at N = 20,000 (equal to
    1e-6; speed ratio), and the streaming kernel's peak RSS at N = 200,000 vs N = 20,000 (each
    measured in a fresh subprocess, data generated chunk by chunk as a capture file would stream it);
  * exact KL/JS per 1,000 positions over V = 49,152 vs one bare ``hidden @ unembed.T`` (ratio <= 3);
  * ``driftkit.compare`` of two captures of SmolLM2-135M on the bundled prompt sets (general-mix, x1
    and x5 = 8,986 tokens), all layers, each in a fresh subprocess: time per analysis, total, the
    ratio to the unavoidable work (both models' logits once + CKA's cross-products, timed in the same
    process; target <= 1.3), and peak RSS (target <= 1 GB at V = 49,152 at both sizes). The
    cross-products are timed as the plain ``x^T x, y^T y, x^T y`` the issue named, and again with the
    two Gram matrices by their upper triangles (``products.gram``), and a third time as CKA takes
    them now (``cka.difference_products``: float32 products of X and the drift D = Y - X where the
    drift is small, which every chunk of these stand-in captures is). The last ratio is the
    strictest, since CKA's own products cost less than the issue's baseline. The same ratio
    is also printed in process CPU time (all threads), which a loaded shared machine disturbs far less
    than wall time.
    ``--baseline-src DIR`` times another source tree too, interleaved (before/after a change).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _stand_ins import peak_rss_mb, rss_mb, stand_in_captures, use_source_tree

D = 576
CHUNK = 4096
ROOT = Path(__file__).resolve().parents[1]
#: the analyses issue 13 timed (compare's defaults have grown since: --analyses default runs those)
ISSUE_ANALYSES = "cka,kl,pca_shift,token_rank"


# ---------------------------------------------------------------------------------------------
# data: a residual-stream-like pair of representations, generated chunk by chunk
def _chunks(n: int, d: int = D, seed: int = 0):
    """Yield float32 (x, y) chunks. x has a few "massive activation" dimensions (offsets ~1e3 x the
    spread), y = tuned version of x (a rotation of part of the space plus noise)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    drift = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g) / d**0.5
    offset = torch.zeros(d)
    offset[[3, 77, 400]] = torch.tensor([1500.0, -3000.0, 800.0])
    for s in range(0, n, CHUNK):
        m = min(CHUNK, n - s)
        z = torch.randn(m, d, generator=g) @ mix
        x = z + offset
        y = z @ drift + 0.5 * torch.randn(m, d, generator=g) + offset * 1.1
        yield x.float(), y.float()


def _stream_cka(n: int) -> dict:
    from driftkit.metrics.cka import StreamingCKA

    t = time.perf_counter()
    acc = StreamingCKA(D, D)
    for x, y in _chunks(n):
        acc.update(x, y)
    r = acc.result()
    return {"linear_cka": r.linear_cka, "debiased_cka": r.debiased_cka, "seconds": time.perf_counter() - t}


def _gram_cka(n: int) -> dict:
    """Gram-space reference in float64 (Kornblith et al. biased; Song et al. unbiased HSIC)."""
    xs, ys = zip(*_chunks(n))
    x = torch.cat(xs).double()
    y = torch.cat(ys).double()
    del xs, ys
    t = time.perf_counter()
    x -= x.mean(0)  # centering features == H K H for the linear kernel; the U-statistic is shift-invariant
    y -= y.mean(0)

    k = x @ x.T
    gl = y @ y.T
    kf, lf = k.view(-1), gl.view(-1)
    hkl, hkk, hll = torch.dot(kf, lf), torch.dot(kf, kf), torch.dot(lf, lf)
    biased = float(hkl / torch.sqrt(hkk * hll))
    k.fill_diagonal_(0)
    gl.fill_diagonal_(0)
    ks, ls = k.sum(0), gl.sum(0)  # symmetric: column sums == row sums

    def hsic_u(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
        return (
            torch.dot(a.view(-1), b.view(-1))
            + sa.sum() * sb.sum() / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * torch.dot(sa, sb)
        ) / (n * (n - 3))

    debiased = float(hsic_u(k, gl, ks, ls) / torch.sqrt(hsic_u(k, k, ks, ks) * hsic_u(gl, gl, ls, ls)))
    return {"linear_cka": biased, "debiased_cka": debiased, "seconds": time.perf_counter() - t}


def _child(kind: str, n: int) -> None:
    out = {"stream": _stream_cka, "gram": _gram_cka}[kind](n)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def _run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_cka(n_small: int, n_large: int) -> None:
    print(f"== CKA, d = {D}, float32 inputs with massive-activation dims (offsets up to 3000) ==")
    s_small = _run_child("stream", str(n_small))
    g_small = _run_child("gram", str(n_small))
    s_large = _run_child("stream", str(n_large))
    for key in ("linear_cka", "debiased_cka"):
        print(
            f"  N={n_small:>7,}  {key:13s} streaming {s_small[key]:.12f}   gram {g_small[key]:.12f}   "
            f"|diff| {abs(s_small[key] - g_small[key]):.2e}"
        )
    print(
        f"  N={n_small:>7,}  time: streaming {s_small['seconds']:.2f} s, gram-space {g_small['seconds']:.2f} s "
        f"-> streaming is {g_small['seconds'] / s_small['seconds']:.1f}x faster"
    )
    print(
        f"  N={n_small:>7,}  peak RSS: streaming {s_small['peak_rss_mb']:.0f} MB, "
        f"gram-space {g_small['peak_rss_mb']:.0f} MB"
    )
    print(
        f"  N={n_large:>7,}  streaming {s_large['seconds']:.2f} s, peak RSS {s_large['peak_rss_mb']:.0f} MB "
        f"({s_large['peak_rss_mb'] / s_small['peak_rss_mb']:.2f}x the N={n_small:,} run); "
        f"debiased CKA {s_large['debiased_cka']:.6f}"
    )


# ---------------------------------------------------------------------------------------------
def bench_kl(vocab: int = 49152, positions: int = 1000, repeats: int = 5) -> None:
    from driftkit.metrics.kl import KLWorkspace, kl_from_hidden
    from driftkit.store.reader import Unembedding

    print(
        f"== exact KL/JS/log-ratio, V = {vocab:,}, d = {D}, {positions:,} positions, "
        f"{torch.get_num_threads()} threads =="
    )
    g = torch.Generator().manual_seed(0)
    wa = torch.randn(vocab, D, generator=g) / 8
    wb = wa + 0.02 * torch.randn(vocab, D, generator=g)
    ha = torch.randn(positions, D, generator=g)
    hb = ha + 0.1 * torch.randn(positions, D, generator=g)
    ids = torch.randint(0, vocab, (positions,), generator=g)
    ua, ub = Unembedding(wa, None, None, None), Unembedding(wb, None, None, None)
    ws = KLWorkspace(512, vocab)

    # Interleave the two measurements so both see the same machine load (this box is shared).
    kl_from_hidden(ha, hb, ua, ub, next_ids=ids, workspace=ws)
    _ = ha @ wa.T
    t_mms, t_kls = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        _ = ha @ wa.T
        t_mms.append(time.perf_counter() - t)
        t = time.perf_counter()
        kl_from_hidden(ha, hb, ua, ub, next_ids=ids, workspace=ws)
        t_kls.append(time.perf_counter() - t)
    t_mm, t_kl = float(np.median(t_mms)), float(np.median(t_kls))
    print(f"  bare hidden @ unembed.T: {t_mm * 1000:.0f} ms / 1,000 positions (median of {repeats})")
    print(f"  KL kernel (both models' logits + KL, reverse KL, JS, log-ratio): {t_kl * 1000:.0f} ms / 1,000 positions")
    print(f"  ratio: {t_kl / t_mm:.2f}  (two matmuls alone are 2.00)")


# ---------------------------------------------------------------------------------------------
def _unavoidable(a: str, b: str, chunk_tokens: int, rows: int = 512) -> dict:
    """The work no comparison can skip, timed on the same files in the same process: both models'
    logits once (``hidden @ unembed.T`` for A and B over every scored position, in blocks of
    ``rows``) plus CKA's cross-products (``x^T x``, ``y^T y``, ``x^T y`` in float64 over every
    layer's chunks). Reading the files and converting dtypes is not counted."""
    from driftkit.comparing.pair import CapturePair, CompareOptions
    from driftkit.store.reader import CaptureReader

    with CaptureReader(a) as ra, CaptureReader(b) as rb:
        pair = CapturePair(ra, rb, CompareOptions(chunk_tokens=chunk_tokens))
        wa, wb = ra.unembedding().weight, rb.unembedding().weight
        buf = torch.empty(rows, wa.shape[0])
        t_logits = c_logits = 0.0
        for _, ha, hb in pair.iter_pair("final/hidden", pair.mask("predictive")):
            for s in range(0, len(ha), rows):
                e = min(len(ha), s + rows)
                t, c = time.perf_counter(), time.process_time()
                torch.mm(ha[s:e], wa.T, out=buf[: e - s])
                torch.mm(hb[s:e], wb.T, out=buf[: e - s])
                t_logits += time.perf_counter() - t
                c_logits += time.process_time() - c
        del buf, wa, wb
        t_cka = c_cka = t_sym = t_own = 0.0
        try:  # the symmetric products CKA itself uses (absent from trees before them)
            from driftkit.metrics.products import gram
        except ImportError:
            gram = None
        try:  # and its float32 difference products at small drift (likewise)
            from driftkit.metrics.cka import difference_products
        except ImportError:
            difference_products = None
        states = pair.mask("states")
        for _, path in pair.layer_sites():
            for _, xa, xb in pair.iter_pair(path, states):
                x, y = xa.double(), xb.double()
                t, c = time.perf_counter(), time.process_time()
                _ = x.T @ x, y.T @ y, x.T @ y
                t_cka += time.perf_counter() - t
                c_cka += time.process_time() - c
                if gram is not None:
                    t = time.perf_counter()
                    _ = gram(x), gram(y), x.T @ y
                    t_sym += time.perf_counter() - t
                if difference_products is not None:  # on centred rows, as CKA calls it (not timed)
                    x, y = x - x.mean(0), y - y.mean(0)
                    a, b, same = (x * x).sum(1), (y * y).sum(1), torch.equal(x, y)
                    t = time.perf_counter()
                    if same:  # identical rows: CKA takes one Gram matrix
                        _ = gram(x)
                    elif difference_products(x, y, a.sum(), b.sum(), a @ a) is None:
                        _ = gram(x), gram(y), x.T @ y
                    t_own += time.perf_counter() - t
    return {
        "logits_s": t_logits,
        "cka_products_s": t_cka,
        "total_s": t_logits + t_cka,
        "logits_cpu_s": c_logits,
        "cka_products_cpu_s": c_cka,
        "total_cpu_s": c_logits + c_cka,
        # the same work with the Gram matrices' upper triangles only (products.gram), or 0
        "cka_products_sym_s": t_sym,
        "total_sym_s": t_logits + t_sym if gram is not None else 0.0,
        # the products as CKA takes them now (float32 difference products at small drift), or 0
        "cka_products_own_s": t_own,
        "total_own_s": t_logits + t_own if difference_products is not None else 0.0,
    }


def _compare_child(a: str, b: str, chunk_tokens: str) -> None:
    import driftkit

    before = rss_mb()  # Python, torch and driftkit, before the comparison imports its analyses
    t, c = time.perf_counter(), time.process_time()
    names = os.environ.get("DRIFTKIT_BENCH_ANALYSES", ISSUE_ANALYSES)
    analyses = None if names == "default" else names.split(",")
    rep = driftkit.compare([a, b], chunk_tokens=int(chunk_tokens), analyses=analyses)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    body = rep.to_dict()
    print(
        json.dumps(
            {
                "seconds": wall,
                "cpu_s": cpu,
                "peak_rss_mb": peak_rss_mb(),
                "rss_before_mb": before,
                "per_analysis_s": body["seconds"],
                "n_tokens": body["n_tokens"],
                "n_samples": body["n_samples"],
                "analyses": sorted(body["analyses"]),
                "load": os.getloadavg()[0],
                "driftkit": str(Path(driftkit.__file__).parent),
            }
        )
    )


def _py(args: list[str], src: str | None = None) -> dict:
    """Run this script's ``args`` in a fresh process, on the source tree ``src`` when given
    (``--baseline-src``; :func:`_stand_ins.use_source_tree`), else on this checkout."""
    cmd = [sys.executable, __file__, *args, *(["--src", src] if src else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_compare(
    workdir: Path,
    sizes: tuple[int, ...] = (1, 5),
    chunk_tokens: int = 1024,
    baseline_src: str | None = None,
    repeats: int = 1,
) -> None:
    """Capture the default model and a perturbed copy on the bundled prompts (general-mix) at each
    size (files are reused between runs), then compare each pair in a fresh subprocess: time per
    analysis, total, the ratio to the unavoidable work measured in that same process, peak RSS.
    With ``baseline_src`` (a source tree laid out as the installed package, e.g. main's code), the
    same comparisons also run on that code, interleaved with this one's (the machine is shared)."""
    names = os.environ.get("DRIFTKIT_BENCH_ANALYSES", ISSUE_ANALYSES)
    print(
        f"== driftkit.compare of two SmolLM2-135M captures (all layers, analyses {names}, chunks of "
        f"{chunk_tokens:,} tokens, {torch.get_num_threads()} threads) =="
    )
    pairs = {rep_count: list(stand_in_captures(workdir, rep_count)) for rep_count in sizes}
    codes = [("this", None)] + ([("baseline", baseline_src)] if baseline_src else [])
    ratios: dict[tuple[str, int], list[tuple[float, float]]] = {}  # (code, size) -> [(wall, CPU ratio)]
    for _ in range(repeats):
        for rep_count, paths in pairs.items():
            for label, src in codes:  # interleaved: both codes see the same machine load
                # each comparison in a fresh process, so its peak RSS is its own; the unavoidable work
                # is timed just before and just after it (the machine's load drifts) and averaged
                f1 = _py(["--floor-child", *paths, str(chunk_tokens)], src)
                r = _py(["--compare-child", *paths, str(chunk_tokens)], src)
                f2 = _py(["--floor-child", *paths, str(chunk_tokens)], src)
                r["unavoidable"] = {k: (f1[k] + f2[k]) / 2 for k in f1}
                u = r["unavoidable"]
                per = ", ".join(f"{k} {v:.1f} s" for k, v in r["per_analysis_s"].items())
                print(
                    f"  [{label}] x{rep_count}: {r['n_samples']} samples, {r['n_tokens']:,} tokens: "
                    f"compare {r['seconds']:.1f} s ({per}); unavoidable {u['total_s']:.1f} s "
                    f"(logits {u['logits_s']:.1f} s + CKA products {u['cka_products_s']:.1f} s) -> ratio "
                    f"{r['seconds'] / u['total_s']:.2f}; CPU time {r['cpu_s']:.1f} s vs {u['total_cpu_s']:.1f} s "
                    f"(logits {u['logits_cpu_s']:.1f} + CKA {u['cka_products_cpu_s']:.1f}) -> CPU ratio "
                    f"{r['cpu_s'] / u['total_cpu_s']:.2f}; peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"({r['rss_before_mb']:.0f} MB before the comparison: Python, torch, driftkit); "
                    f"load {r['load']:.1f}",
                    flush=True,
                )
                ratios.setdefault((label, rep_count), []).append(
                    (r["seconds"] / u["total_s"], r["cpu_s"] / u["total_cpu_s"])
                )
                if u.get("total_sym_s"):
                    print(
                        f"      with CKA's Gram products by their upper triangles ({u['cka_products_sym_s']:.1f} s): "
                        f"unavoidable {u['total_sym_s']:.1f} s -> ratio {r['seconds'] / u['total_sym_s']:.2f}",
                        flush=True,
                    )
                if u.get("total_own_s"):
                    print(
                        f"      with CKA's products taken as CKA takes them (float32 difference products at "
                        f"small drift, {u['cka_products_own_s']:.1f} s): unavoidable {u['total_own_s']:.1f} s -> "
                        f"ratio {r['seconds'] / u['total_own_s']:.2f} (the strictest figure)",
                        flush=True,
                    )
    if repeats > 1:  # one figure per code and size: the machine is shared, single rounds swing ~10%
        for (label, rep_count), rs in ratios.items():
            walls, cpus = sorted(w for w, _ in rs), sorted(c for _, c in rs)
            print(
                f"  [{label}] x{rep_count} over {len(rs)} rounds: ratio to the unavoidable work median "
                f"{float(np.median(walls)):.2f} (range {walls[0]:.2f}-{walls[-1]:.2f}, target <= 1.3); CPU ratio "
                f"median {float(np.median(cpus)):.2f} (range {cpus[0]:.2f}-{cpus[-1]:.2f})",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["cka", "kl", "compare"], action="append")
    ap.add_argument("--n-small", type=int, default=20_000)
    ap.add_argument("--n-large", type=int, default=200_000)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("DRIFTKIT_BENCH_DIR", "/tmp/driftkit_bench")))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument(
        "--compare-chunk-tokens",
        type=int,
        default=4096,
        help="chunk size of the compare runs (default: compare's own; the x5 capture exceeds it, "
        "so memory could only grow if something scaled with the tokens)",
    )
    ap.add_argument("--compare-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--floor-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument(
        "--sizes", default="1,5", help="prompt-set repeats of the two compared capture sizes (5: 6,430 tokens)"
    )
    ap.add_argument(
        "--analyses",
        default=ISSUE_ANALYSES,
        help=f"the compared analyses, comma-separated, or 'default' for compare's defaults (default: {ISSUE_ANALYSES})",
    )
    ap.add_argument("--repeats", type=int, default=1, help="how many times to run each comparison")
    ap.add_argument("--baseline-src", help="also time this source tree (package layout, e.g. main's code), interleaved")
    args = ap.parse_args()
    if args.src:  # a child process timing another source tree (--baseline-src)
        use_source_tree(args.src)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    if args.compare_child:
        _compare_child(*args.compare_child)
        return
    if args.floor_child:
        a, b, chunk = args.floor_child
        print(json.dumps(_unavoidable(a, b, int(chunk))))
        return
    only = set(args.only or ["cka", "kl", "compare"])
    if "cka" in only:
        bench_cka(args.n_small, args.n_large)
    if "kl" in only:
        bench_kl()
    if "compare" in only:
        os.environ["DRIFTKIT_BENCH_ANALYSES"] = args.analyses
        bench_compare(
            args.workdir,
            tuple(int(x) for x in args.sizes.split(",")),
            args.compare_chunk_tokens,
            args.baseline_src,
            args.repeats,
        )


if __name__ == "__main__":
    main()
