"""Precision of ``driftkit compare`` at small drift, against a float64 reference (prints figures).

    python perf/precision.py                     # three drift sizes, V = 32,000
    python perf/precision.py --vocab 151936      # a Qwen-sized vocabulary

Why this script exists (issue 16): an RL-tuned model drifts little (the demo's RL model: KL 0.009
nats), so the instrument must be exact where the numbers are smallest. For each drift size it builds
a tiny random llama-style model over a large vocabulary and a "tuned" copy whose weights are moved by
``eps * noise``, captures both with ``driftkit capture`` (default settings) and compares them with
``driftkit.compare`` (KL analysis). The reference is independent of driftkit: each model's own HF
forward logits (float32, one unpadded forward per sample) turned into log-probabilities and
divergences in float64. It also captures the base model twice and reports what the identical pair
gives (the contract: exactly 0).

Printed: per drift size, the reference mean KL(P_B||P_A), and the relative error of driftkit's
``kl_forward``, ``kl_reverse``, ``js`` and ``sampled_logratio`` (means over the same positions).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_pair(root: Path, vocab: int, eps: float, seed: int = 0) -> tuple[Path, Path]:
    """A tiny base model over ``vocab`` entries and a copy with every weight matrix moved by eps."""
    from transformers import AutoModelForCausalLM

    from driftkit.tiny import build_tiny_model

    base, tuned = root / "base", root / f"tuned_{eps:g}"
    if not (base / "model.safetensors").exists():
        build_tiny_model(base, "llama", num_layers=2, seed=seed, max_positions=512, model_vocab_size=vocab)
    build_tiny_model(tuned, "llama", num_layers=2, seed=seed, max_positions=512, model_vocab_size=vocab)
    model = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(eps * p.std() * torch.randn(p.shape, generator=g))
    model.save_pretrained(tuned, safe_serialization=True)
    return base, tuned


def reference(base: Path, tuned: Path, capture_path: Path) -> dict[str, float]:
    """Float64 divergences from the two models' own forward logits on the capture's samples."""
    from transformers import AutoModelForCausalLM

    from driftkit.store.reader import CaptureReader

    ma = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    mb = AutoModelForCausalLM.from_pretrained(tuned, dtype=torch.float32).eval()
    sums = {"kl_forward": 0.0, "kl_reverse": 0.0, "js": 0.0, "sampled_logratio": 0.0}
    n = 0
    with CaptureReader(capture_path) as r, torch.no_grad():
        for i in range(r.n_samples):
            ids = torch.as_tensor(r.sample_tokens(i), dtype=torch.long)[None]
            la = ma(input_ids=ids).logits[0, :-1].double()
            lb = mb(input_ids=ids).logits[0, :-1].double()
            pa, pb = la.log_softmax(-1), lb.log_softmax(-1)
            m = torch.logaddexp(pa, pb) - math.log(2.0)
            sums["kl_forward"] += float((pb.exp() * (pb - pa)).sum())
            sums["kl_reverse"] += float((pa.exp() * (pa - pb)).sum())
            sums["js"] += float(0.5 * (pa.exp() * (pa - m)).sum() + 0.5 * (pb.exp() * (pb - m)).sum())
            y = ids[0, 1:]
            sums["sampled_logratio"] += float((pb.gather(1, y[:, None]) - pa.gather(1, y[:, None])).sum())
            n += la.shape[0]
    return {k: v / n for k, v in sums.items()}


def driftkit_kl(a: Path, b: Path) -> dict[str, float]:
    from driftkit.comparing.runner import compare

    rep = compare([a, b], analyses=["kl"], positions="all")
    return dict(json.loads(rep.to_json())["analyses"]["kl"]["summary"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--eps", default="0.1,0.03,0.01", help="relative weight noise of the tuned copies")
    ap.add_argument("--prompts", default="bundled:general-mix")
    ap.add_argument("--limit", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)

    from driftkit.capturing import CaptureConfig, capture

    keys = ("kl_forward", "kl_reverse", "js", "sampled_logratio")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for eps in [float(e) for e in args.eps.split(",")]:
            base, tuned = build_pair(root, args.vocab, eps)
            ca, cb = root / "base.h5", root / f"tuned_{eps:g}.h5"
            if not ca.exists():
                capture(CaptureConfig(model=str(base), prompts=args.prompts, limit=args.limit, out=ca))
            capture(CaptureConfig(model=str(tuned), prompts=args.prompts, limit=args.limit, out=cb))
            ref = reference(base, tuned, ca)
            got = driftkit_kl(ca, cb)
            rows.append((eps, ref, got))
        same = root / "base_again.h5"
        capture(CaptureConfig(model=str(root / "base"), prompts=args.prompts, limit=args.limit, out=same))
        ident = driftkit_kl(root / "base.h5", same)

    print(f"vocabulary {args.vocab:,}; {args.limit} prompts of {args.prompts}; positions: all")
    print(f"{'eps':>6} {'ref KL(B||A)':>13} {'ref log-ratio':>14} " + " ".join(f"{'rel err ' + k:>24}" for k in keys))
    for eps, ref, got in rows:
        errs = [abs(got[k] - ref[k]) / abs(ref[k]) if ref[k] else float("nan") for k in keys]
        print(
            f"{eps:>6g} {ref['kl_forward']:>13.4e} {ref['sampled_logratio']:>14.4e} "
            + " ".join(f"{e:>24.2e}" for e in errs)
        )
    print("identical captures: " + ", ".join(f"{k}={ident[k]!r}" for k in keys))


if __name__ == "__main__":
    main()
