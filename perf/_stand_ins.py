"""What several perf scripts build the same way: the bundled prompts repeated under new ids (to grow
a capture) and a stand-in "tuned" checkpoint (the real model with its MLP matrices nudged).

Why one module: the figures of compare_scale.py, compare_jobs.py and gpu_check.py are only
comparable if they run on the same prompts and the same perturbation. It also holds how a script
times another source tree (:func:`use_source_tree`). Scripts import it as
``from _stand_ins import ...`` (``python perf/x.py`` puts perf/ on ``sys.path``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def write_bundled_prompts(path: Path, repeat: int, limit: int | None = None) -> int:
    """Every bundled prompt set, ``repeat`` times (ids made unique: ``<id>#<r>``), at most ``limit``
    rows; returns the number of rows written."""
    import importlib.resources as ir

    src = ir.files("driftkit.probes") / "prompts"
    rows = []
    for f in sorted(src.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".jsonl"):
            rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    out = [{**row, "id": f"{row.get('id', i)}#{r}"} for r in range(repeat) for i, row in enumerate(rows)]
    out = out[:limit] if limit else out
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return len(out)


def perturbed_checkpoint(base: str | Path, out: Path, scale: float = 0.02) -> Path:
    """``base`` with every 2-D MLP matrix nudged by ``scale`` x its spread (seeded), saved with the
    tokenizer files at ``out`` (reused when already there): a stand-in fine-tune, no training."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "mlp" in name and p.dim() == 2:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    m.save_pretrained(out)
    for f in Path(base).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) or f.name == "chat_template.jinja":
            shutil.copy(f, out / f.name)
    return out


def stand_in_captures(workdir: Path, repeat: int) -> tuple[str, str]:
    """Captures of the default model and its perturbed copy (all layers, residual + final) on the
    bundled prompts x ``repeat``, in ``workdir``; files already there are reused between runs."""
    from driftkit.capturing import CaptureConfig, capture
    from driftkit.models import resolve_model_path

    workdir.mkdir(parents=True, exist_ok=True)
    base = resolve_model_path("smollm2-135m")
    tuned = perturbed_checkpoint(base, workdir / "smollm2-perturbed")
    prompts = workdir / f"prompts_x{repeat}.jsonl"
    write_bundled_prompts(prompts, repeat)
    paths = []
    for name, model in (("base", base), ("tuned", str(tuned))):
        out = workdir / f"{name}_x{repeat}.h5"
        if not out.exists():
            t = time.perf_counter()
            capture(CaptureConfig(model=model, prompts=str(prompts), out=out, layers="all", overwrite=True))
            print(f"  captured {out.name} in {time.perf_counter() - t:.1f} s ({out.stat().st_size / 1e6:.0f} MB)")
        paths.append(str(out))
    return paths[0], paths[1]


def rss_mb() -> float:
    """Resident memory of this process now (VmRSS), in MiB: what the interpreter and the libraries
    already imported hold, read before a measured step so that its peak can be told apart from them
    (they differ between builds and versions of torch and numpy)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM). Not ``ru_maxrss``: on Linux that survives exec and
    so includes the RSS of the parent at fork time (the benchmark's parent may hold a model)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def use_source_tree(src: str) -> None:
    """Import driftkit from the checkout ``src`` (before anything imports it), bundled plugins,
    probes and CLI included, for before/after timings of two codes.

    Why more than ``sys.path``: the editable install maps ``driftkit.plugins`` (and ``.probes``,
    ``.cli``) to top-level folders of the installed checkout through an import hook, so a tree put
    first on ``sys.path`` gave its own ``driftkit`` but the installed checkout's plugins. The hook is
    removed and those folders of ``src`` are found through ``driftkit.__path__`` instead."""
    src = os.path.abspath(src)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, src)
    import driftkit

    if not driftkit.__file__.startswith(src + os.sep):
        raise SystemExit(f"driftkit was already imported from {driftkit.__file__}, not from {src}")
    driftkit.__path__.append(src)


def sync(dev: Any) -> None:
    """Wait for a GPU's queued work (timings of asynchronous CUDA calls); nothing on a CPU."""
    import torch

    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


def plain_forward(loaded: Any, tokens: list[list[int]], max_batch_tokens: int) -> float:
    """Seconds for a plain forward over the capture's own batches (no hooks, nothing kept), after one
    warm-up batch: the baseline a capture is measured against on any device."""
    import torch

    from driftkit.capturing.batching import padded_batch, token_budget_batches

    model, dev = loaded.model, next(loaded.model.parameters()).device
    pad = loaded.tokenizer.pad_token_id or 0
    lengths = [len(t) for t in tokens]
    batches = [
        tuple(x.to(dev) for x in padded_batch(tokens, idx, pad))
        for idx in token_budget_batches(lengths, list(range(len(tokens))), max_batch_tokens)
    ]
    with torch.no_grad():
        model(input_ids=batches[0][0], attention_mask=batches[0][1])  # warm-up (kernels, allocator)
        sync(dev)
        t = time.perf_counter()
        for ids, attn in batches:
            model(input_ids=ids, attention_mask=attn)
        sync(dev)
    return time.perf_counter() - t
