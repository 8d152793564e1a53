"""``driftkit compare --jobs N`` vs ``--jobs 1`` on two captures of the bundled SmolLM2-135M (prints; no asserts
beyond the identical-JSON check).

    python perf/compare_jobs.py                       # jobs 1 and 2, layer analyses (cka, pca_shift)
    python perf/compare_jobs.py --jobs 1 2 4 --repeat 3 --analyses cka,pca_shift,kl,token_rank

Captures (made once under --workdir): the bundled prompt sets x ``--repeat-prompts``, all 30 layers +
final, of the bundled model and of a stand-in "tuned" copy (MLP weights nudged by 2 % of their spread).
Each comparison runs in a fresh process (``driftkit compare`` as a user runs it, imports included);
the script prints its wall time and the time inside ``compare`` itself, and checks that every
``--jobs`` gives the same JSON as ``--jobs 1`` (timings aside), exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _stand_ins import stand_in_captures

ROOT = Path(__file__).resolve().parents[1]


def _child(a: str, b: str, analyses: str, jobs: int, out: str) -> None:
    import driftkit

    t = time.perf_counter()
    report = driftkit.compare([a, b], analyses=analyses.split(","), jobs=jobs)
    inner = time.perf_counter() - t
    report.to_json(out)
    print(json.dumps({"compare_s": inner}))


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2, help="runs per --jobs value (interleaved; the best is shown)")
    ap.add_argument("--repeat-prompts", type=int, default=1, help="the bundled prompts x N (1 = about 1,800 tokens)")
    ap.add_argument("--analyses", default="cka,pca_shift")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("DRIFTKIT_BENCH_DIR", "/tmp/driftkit_bench")))
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        a, b, analyses, jobs, out = args.child
        _child(a, b, analyses, int(jobs), out)
        return
    import torch

    a, b = stand_in_captures(args.workdir, args.repeat_prompts)
    print(
        f"compare {a.name} vs {b.name}, analyses {args.analyses}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs"
    )
    best: dict[int, tuple[float, float]] = {}
    results: dict[int, Any] = {}
    for _ in range(args.repeat):
        for jobs in args.jobs:
            out = args.workdir / f"report_jobs{jobs}.json"
            t = time.perf_counter()
            cmd = [sys.executable, __file__, "--child", str(a), str(b), args.analyses, str(jobs), str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            wall = time.perf_counter() - t
            inner = json.loads(res.stdout.strip().splitlines()[-1])["compare_s"]
            if jobs not in best or wall < best[jobs][0]:
                best[jobs] = (wall, inner)
            results[jobs] = _strip(json.loads(out.read_text()))
            print(f"  --jobs {jobs}: {wall:.1f} s wall (process), {inner:.1f} s in compare")
    ref = results[args.jobs[0]]
    for jobs in args.jobs:
        same = json.dumps(results[jobs], sort_keys=True) == json.dumps(ref, sort_keys=True)
        wall, inner = best[jobs]
        print(
            f"--jobs {jobs}: best {wall:.1f} s wall, {inner:.1f} s in compare "
            f"(x{best[args.jobs[0]][1] / inner:.2f} vs --jobs {args.jobs[0]}); JSON identical: {same}"
        )


if __name__ == "__main__":
    main()
