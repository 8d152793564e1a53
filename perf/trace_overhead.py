"""Per-batch cost of driftkit's nnsight trace (every layer saved) against a plain forward of the same batch.

    python perf/trace_overhead.py                          # the bundled SmolLM2-135M on the CPU
    python perf/trace_overhead.py --device cuda --model DIR --dtype bfloat16

On a GPU a 135M model's forward over a small batch takes milliseconds, so what a capture adds per
batch (the trace's Python work, one saved value per site, the hand-off to the host) decides its speed
there, while on a CPU it vanishes beside the forward. Prints, per batch shape: the plain forward, the
trace that saves nothing, the trace that saves every site of a default capture, each synchronised and
averaged over ``--repeats`` after a warm-up, and the ten functions with the most own time inside the
saving trace (cProfile). No assertions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from _stand_ins import sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shapes", default="64x32,16x256", help="batch rows x tokens, comma-separated")
    args = ap.parse_args()

    import nnsight
    from nnsight import TransformersModel

    from driftkit.capturing import CaptureConfig
    from driftkit.capturing.engine import CaptureEngine
    from driftkit.models import load_model, resolve_model_path

    path = resolve_model_path(args.model)
    loaded = load_model(path, dtype=args.dtype, device=args.device)
    dev = next(loaded.model.parameters()).device
    cfg = CaptureConfig(model=path, prompts="bundled:math", out="unused.h5", layers="all", device=args.device)
    engine = CaptureEngine(cfg, loaded)
    ordered = engine.ordered_sites(torch.tensor([[1, 2, 3, 4]]))
    nn_model = TransformersModel(loaded.model, tokenizer=loaded.tokenizer)
    vocab = int(loaded.model.config.vocab_size)
    versions = f"torch {torch.__version__}, nnsight {nnsight.__version__}"
    print(f"{path} on {dev} ({args.dtype}), {len(ordered)} sites, {versions}")

    def timed(fn, ids: torch.Tensor, attn: torch.Tensor) -> float:
        fn(ids, attn)  # warm-up
        sync(dev)
        t = time.perf_counter()
        for _ in range(args.repeats):
            fn(ids, attn)
        sync(dev)
        return (time.perf_counter() - t) / args.repeats

    def plain(ids: torch.Tensor, attn: torch.Tensor) -> None:
        with torch.no_grad():
            loaded.model(input_ids=ids, attention_mask=attn)

    def trace_nothing(ids: torch.Tensor, attn: torch.Tensor) -> None:
        with torch.no_grad(), nn_model.trace({"input_ids": ids, "attention_mask": attn}):
            pass

    def trace_all(ids: torch.Tensor, attn: torch.Tensor) -> None:
        engine._forward(nn_model, ordered, ids, attn)

    for shape in args.shapes.split(","):
        rows, cols = (int(x) for x in shape.split("x"))
        ids = torch.randint(0, vocab, (rows, cols), device=dev)
        attn = torch.ones_like(ids)
        tp, tn, ta = (timed(f, ids, attn) for f in (plain, trace_nothing, trace_all))
        print(
            f"{rows} x {cols}: plain forward {tp * 1e3:8.1f} ms | trace saving nothing {tn * 1e3:8.1f} ms | "
            f"trace saving {len(ordered)} sites {ta * 1e3:8.1f} ms ({ta / tp:.2f}x plain)"
        )
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.repeats):
        trace_all(ids, attn)
    sync(dev)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(10)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-1800:])


if __name__ == "__main__":
    main()
