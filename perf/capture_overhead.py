"""Capture overhead on the default model: prints the figures of the capture issue.

1. wall-time ratio: capture (all residual layers + final, written to HDF5) vs a plain HF forward over
   the same length-sorted batches of the same prompts (best of --repeats, interleaved so both see
   the same machine load);
2. peak RSS of a capture of N prompts vs 10 N prompts (separate processes);
3. file size per token, all layers, float16, without and with compression.

Usage: python perf/capture_overhead.py [--model smollm2-135m] [--repeats 3] [--n 45]
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

RSS_CHILD = r"""
import json, resource, sys
from driftkit.capture import CaptureConfig, capture
cfg = CaptureConfig(model=sys.argv[1], prompts=sys.argv[2], out=sys.argv[3], overwrite=True, max_batch_tokens=int(sys.argv[4]))
capture(cfg)
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def prompts_file(d: Path, n: int) -> Path:
    from driftkit.prompts import load_prompts

    base = load_prompts("bundled:general-mix")
    p = d / f"prompts-{n}.jsonl"
    with p.open("w") as f:
        for i in range(n):
            q = base[i % len(base)]
            f.write(json.dumps({"id": f"{q.id}-{i}", "domain": q.domain, "text": q.text}) + "\n")
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=45, help="prompts for the RSS baseline (10x for the big run)")
    ap.add_argument("--max-batch-tokens", type=int, default=4096)
    ap.add_argument("--rss-batch-tokens", type=int, default=512,
                    help="token budget for the RSS runs: small enough that the N-prompt run already fills several batches, "
                         "so the comparison measures accumulation, not batch size")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 gives steadier ratios on a shared machine")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from driftkit.capture import CaptureConfig, CaptureEngine
    from driftkit.capture.batching import token_budget_batches
    from driftkit.capture.engine import build_samples
    from driftkit.models import load_model

    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}")
    lm = load_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="dk-bench-"))
    cfg = CaptureConfig(model=args.model, prompts="bundled:general-mix", out=tmp / "c.h5", overwrite=True, max_batch_tokens=args.max_batch_tokens)
    samples = build_samples(cfg, lm)
    lengths = [len(t) for t in samples.tokens]
    batches = token_budget_batches(lengths, range(len(lengths)), args.max_batch_tokens)
    n_tokens = sum(lengths)
    pad = lm.tokenizer.pad_token_id or 0

    def plain() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                S = max(lengths[i] for i in b)
                ids = torch.full((len(b), S), pad, dtype=torch.long)
                att = torch.zeros((len(b), S), dtype=torch.long)
                for r, i in enumerate(b):
                    ids[r, : lengths[i]] = torch.tensor(samples.tokens[i])
                    att[r, : lengths[i]] = 1
                lm.model(input_ids=ids, attention_mask=att)
        return time.perf_counter() - t0

    def captured(compression: str | None = None) -> tuple[float, Path, dict]:
        out = tmp / f"c-{compression or 'none'}.h5"
        c = CaptureConfig(model=args.model, prompts="bundled:general-mix", out=out, overwrite=True,
                          max_batch_tokens=args.max_batch_tokens, compression=compression)
        eng = CaptureEngine(c, loaded=lm)
        t0 = time.perf_counter()
        eng.run()
        return time.perf_counter() - t0, out, eng.timing

    plain()  # warm-up
    tp, tc = [], []
    timing = {}
    for _ in range(args.repeats):
        tp.append(plain())
        t, path, timing = captured()
        tc.append(t)
    bp, bc = min(tp), min(tc)
    print(f"\n[1] {len(lengths)} prompts, {n_tokens} tokens, {len(batches)} batches, all {lm.num_layers} layers + embed + final")
    print(f"    plain HF forward : best {bp:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in tp)})")
    print(f"    capture to HDF5  : best {bc:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in tc)})")
    print(f"    capture stages (last run): {', '.join(f'{k} {v:.2f}s' for k, v in timing.items())}")
    print(f"    RATIO capture / plain = {bc / bp:.3f}   (target <= 1.15)")

    size_none = path.stat().st_size
    _, p_lzf, _ = captured("lzf")
    _, p_gz, _ = captured("gzip")
    print(f"\n[3] file size per token ({n_tokens} tokens, float16, {lm.num_layers} layers + embed + final):")
    import h5py

    for name, p in (("none", path), ("lzf", p_lzf), ("gzip", p_gz)):
        with h5py.File(p, "r") as f:
            static = sum(f[k].id.get_storage_size() for k in ("final/unembed", "final/unembed_bias") if k in f)
        per_tok = (p.stat().st_size - static) / n_tokens
        print(f"    compression={name:5s}: {per_tok / 1024:.1f} KiB/token of per-token arrays "
              f"(+ {static / 1e6:.0f} MB unembedding once per file; file {p.stat().st_size / 1e6:.1f} MB)")

    child = tmp / "rss.py"
    child.write_text(RSS_CHILD)
    rss = {}
    for n in (args.n, 10 * args.n):
        pf = prompts_file(tmp, n)
        out = subprocess.run([sys.executable, str(child), args.model, str(pf), str(tmp / f"rss-{n}.h5"), str(args.rss_batch_tokens)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:])
            raise SystemExit(1)
        rss[n] = json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"]
        (tmp / f"rss-{n}.h5").unlink()
    a, b = rss[args.n], rss[10 * args.n]
    print(f"\n[2] peak RSS (--max-batch-tokens {args.rss_batch_tokens}): {args.n} prompts {a:.0f} MB, {10 * args.n} prompts {b:.0f} MB -> growth {100 * (b / a - 1):+.1f}%  (target < 10%)")
    for p in tmp.glob("*.h5"):
        p.unlink()


if __name__ == "__main__":
    main()
