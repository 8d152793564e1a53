"""Where a warm capture's time goes: with the writer thread and with the writes inline, then cProfile.

    python perf/capture_profile.py                                  # the bundled model on the CPU, x1
    python perf/capture_profile.py --model DIR --device cuda --repeat 8

Runs one warm-up capture (8 prompts), then the capture of the bundled prompts x ``--repeat`` three
times: with the background writer, with every batch written inline on the main thread (the writes'
own cost shows as ``queue_wait``), with the writer again; prints each one's wall time and the
engine's stage times, the plain forward over the same batches, and the top functions of a fourth
capture under cProfile by own and by cumulative time (``writer.close`` there is the time the loop
waited for the last writes to land). Written to find what a GPU capture of a small model waits on
(docs/capture.md, Measured on a GPU). No assertions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _stand_ins import plain_forward, sync, write_bundled_prompts

import driftkit.capturing.engine as engine_module
from driftkit.capturing import CaptureConfig, CaptureEngine
from driftkit.models import load_model, resolve_model_path
from driftkit.store.reader import CaptureReader


class _InlineWriter:
    """Stands in for BackgroundWriter: each batch is written on the main thread when it is handed over."""

    def __init__(self, writer: Any, depth: int = 2) -> None:
        self.writer = writer

    def put_packed(self, samples: Any, arrays: Any) -> None:
        self.writer.write_packed(list(samples), arrays)

    def run(self, fn: Any) -> None:
        fn()

    def close(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="driftkit_capture_profile_"))
    write_bundled_prompts(work / "prompts.jsonl", args.repeat, args.limit)
    model = resolve_model_path(args.model)
    loaded = load_model(model, dtype="bfloat16", device=args.device)
    cfg = CaptureConfig(
        model=model,
        prompts=str(work / "prompts.jsonl"),
        out=work / "capture.h5",
        layers="all",
        dtype="bfloat16",
        device=args.device,
        max_batch_tokens=16384,
        overwrite=True,
    )

    def run(label: str, inline: bool = False, prof: cProfile.Profile | None = None) -> None:
        background = engine_module.BackgroundWriter
        if inline:
            engine_module.BackgroundWriter = _InlineWriter  # type: ignore[misc,assignment]
        try:
            eng = CaptureEngine(cfg, loaded)
            sync(args.device)
            t = time.perf_counter()
            if prof is not None:
                prof.enable()
            eng.run()
            sync(args.device)
            if prof is not None:
                prof.disable()
            dt = time.perf_counter() - t
        finally:
            engine_module.BackgroundWriter = background  # type: ignore[misc]
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in eng.timing.items())
        print(f"{label:30s} {dt:6.2f} s ({stages})", flush=True)

    CaptureEngine(replace(cfg, out=work / "warm.h5", limit=8), loaded).run()
    run("capture (writer thread)")
    run("capture (writes inline)", inline=True)
    run("capture (writer thread)")
    with CaptureReader(cfg.out) as r:
        tokens = [r.sample_tokens(i).tolist() for i in range(r.n_samples)]
    print(f"plain forward {plain_forward(loaded, tokens, 16384):.2f} s over {sum(map(len, tokens)):,} tokens")
    prof = cProfile.Profile()
    run("capture under cProfile", prof=prof)
    for key in ("tottime", "cumtime"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(22)
        print("\n".join(line[:150] for line in out.getvalue().splitlines() if line.strip()))


if __name__ == "__main__":
    main()
