"""Does ``driftkit compare``'s memory grow with the number of layers? (prints; no assertions)

    python perf/compare_layers_memory.py                            # 90 layers, d = 576
    python perf/compare_layers_memory.py --baseline-src /tmp/old    # the same for another source tree

Two random-weight Llama models of ``--layers`` layers at SmolLM2-135M's width (d = 576, the tiny
fixture tokenizer, so a small vocabulary: the logits pass is negligible and the layers pass is what
is measured) are captured once on the bundled general-mix prompts x ``--repeat-prompts`` (x5: about
18,000 tokens, 5 chunks of 4,096 tokens per layer), all layers. Each comparison
(``--analyses``, default ``cka,pca_shift``) runs in a fresh process that samples its resident memory
after every layer: the figures are the resident memory after the first layer, half way and after
the last, the growth per layer over the second half (the first chunks fill the pass's buffers), and
the process's peak. A pass whose memory does not depend on the layer count grows by ~0 MB per layer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(a: str, b: str, analyses: str) -> None:
    import time

    from _stand_ins import peak_rss_mb

    import driftkit

    per_layer: list[float] = []

    def progress(description: str, done: float, total: float | None = None) -> None:
        if "layers" in description:
            per_layer.append(_rss_mb())

    t = time.perf_counter()
    driftkit.compare([a, b], analyses=analyses.split(","), progress=progress)
    wall = time.perf_counter() - t
    print(json.dumps({"wall": wall, "per_layer": per_layer, "peak": peak_rss_mb()}))


def _captures(workdir: Path, layers: int, repeat: int) -> tuple[Path, Path]:
    """Two captures of random models (seeds 0 and 1) of ``layers`` layers, made once."""
    from _stand_ins import write_bundled_prompts

    from driftkit.capturing import CaptureConfig, capture
    from driftkit.tiny import build_tiny_model

    prompts = workdir / f"prompts_x{repeat}.jsonl"
    write_bundled_prompts(prompts, repeat)
    out = []
    for seed in (0, 1):
        path = workdir / f"deep{layers}_s{seed}_x{repeat}.h5"
        if not path.exists():
            model = build_tiny_model(workdir / f"deep{layers}_s{seed}", num_layers=layers, hidden_size=576, seed=seed)
            capture(CaptureConfig(model=str(model), prompts=str(prompts), out=path))
        out.append(path)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=90)
    ap.add_argument("--repeat-prompts", type=int, default=5)
    ap.add_argument("--analyses", default="cka,pca_shift")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("DRIFTKIT_BENCH_DIR", "/tmp/driftkit_bench")))
    ap.add_argument("--baseline-src", help="also measure this source tree (package layout), in its own process")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.src:
        from _stand_ins import use_source_tree

        use_source_tree(args.src)
    if args.child:
        _child(*args.child)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    a, b = _captures(args.workdir, args.layers, args.repeat_prompts)
    print(f"== compare {args.analyses} of two {args.layers}-layer, d = 576 captures ({a.name}, {b.name}) ==")
    for label, src in [("this", None)] + ([("baseline", args.baseline_src)] if args.baseline_src else []):
        cmd = [sys.executable, __file__, "--child", str(a), str(b), args.analyses, *(["--src", src] if src else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rss = r["per_layer"]
        half = len(rss) // 2  # the second half: past the first chunks, which fill the pass's buffers
        growth = (rss[-1] - rss[half]) / max(1, len(rss) - 1 - half)
        print(
            f"  [{label}] {len(rss)} layer sites: resident {rss[0]:.0f} MB after the first, {rss[half]:.0f} MB "
            f"half way, {rss[-1]:.0f} MB after the last ({growth:+.1f} MB per layer over the second half); "
            f"peak {r['peak']:.0f} MB; compare {r['wall']:.1f} s"
        )


if __name__ == "__main__":
    main()
