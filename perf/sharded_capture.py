"""2-process vs 1-process capture wall time, with the identical-array check (issue 14, section 3).

Runs, as fresh processes so both pay imports and model loading, over the bundled general-mix prompts
(repeated --repeat times under new ids):

- ``driftkit capture MODEL``: one process (torch's default threads: every core);
- ``driftkit capture MODEL --nproc N``: N ranks, each with cores // N torch threads;

then prints both wall times, their ratio, and for every dataset of the two files whether the arrays
are identical (``np.array_equal``), else the largest absolute difference. Bitwise identity holds when
both runs put the same samples in each batch and use the same thread count (the CI test,
tests/test_capture_distributed.py, does exactly that); with default batching each rank batches its own
share, so rows may differ by float rounding, as two one-process captures with different
``--max-batch-tokens`` do. ``--max-batch-tokens 1`` (one sample per batch) and ``--one-threads K``
show the exact case.

Usage: python perf/sharded_capture.py [--model smollm2-135m] [--nproc 2] [--repeat 3]
       [--max-batch-tokens 4096] [--one-threads K]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:

        def walk(g: h5py.Group) -> None:
            for k in g:
                obj = g[k]
                if isinstance(obj, h5py.Group):
                    walk(obj)
                else:
                    out[obj.name] = obj[()]

        walk(f)
    return out


def _run(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "driftkit.cli", "capture", *args], check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="the general-mix prompts this many times (new ids)")
    ap.add_argument("--max-batch-tokens", type=int, default=4096)
    ap.add_argument("--one-threads", type=int, default=0, help="torch threads of the one-process run (0: default)")
    a = ap.parse_args()

    from driftkit.prompts import load_prompts

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        prompts = d / "prompts.jsonl"
        rows = [
            {**p.as_dict(), "id": f"{p.id}-r{r}"} for r in range(a.repeat) for p in load_prompts("bundled:general-mix")
        ]
        prompts.write_text("".join(json.dumps(x) + "\n" for x in rows))
        common = [a.model, "--prompts", str(prompts), "--max-batch-tokens", str(a.max_batch_tokens)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env1 = {**env, **({"OMP_NUM_THREADS": str(a.one_threads)} if a.one_threads else {})}
        t1 = _run([*common, "--out", str(d / "one.h5")], env1)
        tn = _run([*common, "--out", str(d / "sharded.h5"), "--nproc", str(a.nproc)], env)
        one, sharded = _datasets(d / "one.h5"), _datasets(d / "sharded.h5")
        with h5py.File(d / "one.h5") as f:
            tokens = int(f["samples/offsets"][-1])
        print(f"\n{len(rows)} prompts, {tokens} tokens, {cores} cores, --max-batch-tokens {a.max_batch_tokens}")
        print(f"1 process ({a.one_threads or 'default'} threads): {t1:.1f} s")
        print(f"{a.nproc} processes ({max(1, cores // a.nproc)} thread(s) each): {tn:.1f} s")
        print(f"ratio {a.nproc}-process / 1-process: {tn / t1:.3f}")
        assert sorted(one) == sorted(sharded), (sorted(one), sorted(sharded))
        same = 0
        for name in sorted(one):
            x, y = one[name], sharded[name]
            if x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                same += 1
                continue
            diff = np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64))) if x.shape == y.shape else "shape"
            print(f"  differs: {name} {x.shape} {x.dtype}: max |diff| {diff}")
        print(f"identical arrays: {same}/{len(one)}")


if __name__ == "__main__":
    main()
