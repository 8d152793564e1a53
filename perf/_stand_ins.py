"""What several perf scripts build the same way: the bundled prompts repeated under new ids (to grow
a capture) and a stand-in "tuned" checkpoint (the real model with its MLP matrices nudged).

Why one module: the figures of compare_scale.py, compare_jobs.py and gpu_check.py are only
comparable if they run on the same prompts and the same perturbation. Scripts import it as
``from _stand_ins import ...`` (``python perf/x.py`` puts perf/ on ``sys.path``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


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
