"""Speed and honest scores of the bundled benchmarks on a model (default: smollm2-135m) on this machine.

Prints, for each benchmark of the suite: items, generated tokens, seconds, items/s, tokens/s and
the primary score; then the whole suite's wall time (model load included). Offline by default
(the bundled fixtures). Usage:

    python perf/bench_speed.py [--model smollm2-135m] [--limit 20] [--batch-size 32] [--threads N] [--data fixtures]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--suite", default="default")
    ap.add_argument("--benchmarks", default=None, help="comma list (overrides --suite)")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", default=None, help="64, or math500=128,ifeval=96")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--data", default="fixtures")
    ap.add_argument("--out", default=None, help="keep the score file here (default: a temp dir)")
    args = ap.parse_args()

    import torch

    from driftkit.bench import parse_budget, run_suite
    from driftkit.scores import read_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="driftkit-bench-")) / "scores.json"
    load = os.getloadavg()[0]
    t0 = time.perf_counter()

    def progress(bench: str, done: int, total: int) -> None:
        print(f"  {bench}: {done}/{total} generated  [{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)

    run_suite(
        args.model,
        suite=args.suite,
        benchmarks=args.benchmarks,
        limit=args.limit,
        out=out,
        data=args.data,
        batch_size=args.batch_size,
        max_new_tokens=parse_budget(args.max_new_tokens),
        progress=progress,
        log=lambda m: print("note:", m, file=sys.stderr),
    )
    wall = time.perf_counter() - t0
    doc = read_scores(out)
    timing = doc["provenance"]["timing"]
    prim = {s["benchmark"]: s for s in doc["scores"] if s.get("primary")}
    print(
        f"model {args.model}, limit {args.limit}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
        f"data {args.data}, load average at start {load:.1f}"
    )
    print(
        f"{'benchmark':<11} {'domain':<6} {'items':>5} {'max_new':>7} {'new_tok':>7} {'sec':>7} {'items/s':>8} "
        f"{'tok/s':>7}  score"
    )
    for b, t in timing.items():
        s = prim[b]
        mnt = doc["provenance"]["benchmarks"][b]["max_new_tokens"]
        print(
            f"{b:<11} {s['domain']:<6} {t['items']:>5} {mnt:>7} {t['new_tokens']:>7} {t['seconds']:>7.1f} "
            f"{t['items_per_s']:>8.3f} "
            f"{t['new_tokens'] / t['seconds']:>7.1f}  {s['metric']} = {s['value']:.1f} ± {s['stderr'] or 0:.1f}"
        )
    print(f"suite wall time (incl. model load): {wall:.1f} s; score file {out}")
    print(json.dumps({"wall_s": round(wall, 1), "timing": timing, "scores": {b: s["value"] for b, s in prim.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
