"""Bytes per token and per study for a 135M, a 7B and a 14B shape in each ``--store`` mode (docs/scale.md).

Each shape is a config-only folder (config.json + the tiny fixture tokenizer, no weights) sized with
``driftkit capture --dry-run --json``; the per-token, per-sample and once-per-file figures it prints
are scaled to the paper's study: 1,000 prompts x 4,000 tokens x 5 captures. Layer sites in float16,
final/hidden at bfloat16 (``--dtype bfloat16``, the GPU capture), all layers + embedding + final.

    python perf/scale_table.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # name: (model_type, layers, hidden, heads, kv heads, intermediate, vocabulary)
    "135M (SmolLM2-135M)": ("llama", 30, 576, 9, 3, 1536, 49152),
    "7B (Qwen2.5-7B)": ("qwen2", 28, 3584, 28, 4, 18944, 152064),
    "14B (Qwen3-14B)": ("qwen3", 40, 5120, 40, 8, 17408, 151936),
}
MODES = {  # row label: extra capture arguments
    "tokens": ["--store", "tokens"],
    "pooled": ["--store", "pooled"],
    "sample:64": ["--store", "sample:64"],
    "sample:64, residual only": ["--store", "sample:64", "--probe", "residual"],
}
PROMPTS, TOKENS, CAPTURES = 1000, 4000, 5


def config_folder(root: Path, name: str, shape: tuple) -> Path:
    from transformers import AutoConfig

    from driftkit.tiny import build_tokenizer

    arch, layers, d, heads, kv, inter, vocab = shape
    out = root / name.split()[0]
    out.mkdir()
    build_tokenizer(out)
    cfg = AutoConfig.for_model(
        arch,
        num_hidden_layers=layers,
        hidden_size=d,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    cfg.save_pretrained(out)
    return out


def main() -> None:
    from driftkit.capturing.sizing import human
    from driftkit.cli.main import app

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "p.jsonl"
        prompts.write_text(json.dumps({"id": "a", "text": "The sea is wide and blue."}) + "\n")
        for name, shape in SHAPES.items():
            folder = config_folder(Path(tmp), name, shape)
            for mode, extra in MODES.items():
                args = ["capture", str(folder), "--prompts", str(prompts), *extra, "--dtype", "bfloat16"]
                r = CliRunner().invoke(app, [*args, "--dry-run", "--json", "-"])
                if r.exit_code != 0:
                    raise SystemExit(r.output)
                est = json.loads(r.stdout.strip().splitlines()[-1])
                per_sample = est["bytes_per_sample"]  # sample:K: K rows (every sample here has >= K tokens)
                capture = PROMPTS * TOKENS * est["bytes_per_token"] + PROMPTS * per_sample + est["static_bytes"]
                rows.append((name, mode, est["bytes_per_token"], per_sample, capture, CAPTURES * capture))
    print(f"| shape | --store | bytes/token | bytes/sample | one capture | study ({CAPTURES} captures) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, mode, bpt, bps, cap, study in rows:
        print(f"| {name} | {mode} | {bpt:,} ({human(bpt)}) | {bps:,} | {human(cap)} | {human(study)} |")


if __name__ == "__main__":
    main()
