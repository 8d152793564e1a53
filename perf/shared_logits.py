"""Cost of ``token_view`` next to ``kl`` + ``token_rank`` (issue: per-position quantities shared per block).

    python perf/shared_logits.py A.h5 B.h5 [--src DIR] [--repeats 3]

In one process, at 1 torch thread, after one untimed warm-up comparison (the first one in a process
pays ~1.5 s of one-off set-up), compares ``kl,token_rank`` and ``kl,token_rank,token_view``
interleaved ``--repeats`` times (every position: ``positions="all"``) and prints the best process CPU
time and wall time of each, and the ratio. ``--src`` runs another source tree laid out as the
installed package (e.g. main's code) instead of this one; run both, one after the other, to compare.
Prints one JSON line last (the figures), so a driver can collect them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _stand_ins import use_source_tree

SETS = {"kl+token_rank": ["kl", "token_rank"], "kl+token_rank+token_view": ["kl", "token_rank", "token_view"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--src", help="source tree to import driftkit from (package layout)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.src:
        use_source_tree(args.src)
    import torch

    torch.set_num_threads(1)
    import driftkit

    best: dict[str, dict[str, float]] = {k: {"cpu_s": float("inf"), "wall_s": float("inf")} for k in SETS}
    driftkit.compare([args.a, args.b], analyses=SETS["kl+token_rank+token_view"], positions="all")  # warm-up
    for _ in range(args.repeats):
        for label, names in SETS.items():  # interleaved: both sets see the same machine load
            c0, w0 = time.process_time(), time.perf_counter()
            driftkit.compare([args.a, args.b], analyses=names, positions="all")
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            best[label] = {"cpu_s": min(best[label]["cpu_s"], cpu), "wall_s": min(best[label]["wall_s"], wall)}
            print(f"  {label}: CPU {cpu:.2f} s, wall {wall:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    base, full = best["kl+token_rank"], best["kl+token_rank+token_view"]
    src = args.src or "this tree"
    print(
        f"[{src}] best of {args.repeats}: kl+token_rank CPU {base['cpu_s']:.2f} s / wall {base['wall_s']:.2f} s; "
        f"+token_view CPU {full['cpu_s']:.2f} s / wall {full['wall_s']:.2f} s; token_view adds "
        f"{100 * (full['cpu_s'] / base['cpu_s'] - 1):.0f}% CPU, {100 * (full['wall_s'] / base['wall_s'] - 1):.0f}% wall"
    )
    print(json.dumps({"src": src, **best, "driftkit": driftkit.__file__}))


if __name__ == "__main__":
    main()
