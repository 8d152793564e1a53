"""Tiny random causal LMs built from a config, with a small byte-level BPE tokenizer, in seconds.

Why: tests must run offline and fast, on real transformers model classes (so nnsight, generate and
TRL see exactly what a user's checkpoint gives them) without any hub download. The tokenizer is
trained on a few kB of text shipped here and has a chat template, so chat mode is testable too.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. What is 2 + 3? The answer is 5.
Solve for x: 2x + 4 = 10, so x = 3. Therefore the final answer is \\boxed{3}.
Write a poem about the sea. The sea is wide and blue, the waves are calm and true.
If all cats are animals and Tom is a cat, then Tom is an animal. Yes or no?
def add(a, b):
    return a + b
Answer with a single letter: A, B, C or D. The capital of France is Paris.
0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = ( ) . , ? ! : ; ' " < > | _ { } [ ] \\ # @ $ % ^ & ~ `
Think step by step. First, we add the numbers. Then we multiply. <think> reasoning </think>
"""

ARCHES = (
    "llama",
    "qwen2",
    "mistral",
    "phi3",
    "phi",
    "gpt_neox",
    "olmo2",
    "gemma2",
    "gemma3_text",
    "cohere",
    "falcon",
    "gpt2",
    "granite",
    "granitemoe",
)

#: per-architecture config extras; the final transforms are set away from their defaults (1.0 / none)
#: so tests see them: Gemma softcaps, Cohere multiplies by ``logit_scale``, Granite divides by
#: ``logits_scaling`` (6, not a power of two, so its rebuild is not trivially exact)
_EXTRA: dict[str, dict] = {
    "gemma2": {"final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "head_dim": 16},
    "gemma3_text": {"final_logit_softcapping": 30.0, "head_dim": 16},
    "cohere": {"logit_scale": 0.25},
    "granite": {"logits_scaling": 6.0},
    "granitemoe": {"logits_scaling": 6.0, "num_local_experts": 4, "num_experts_per_tok": 2},
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
}


def build_tokenizer(out_dir: str | Path, vocab_size: int = 320):
    """Train a byte-level BPE on the fixture corpus and save it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    num_layers: int = 4,
    hidden_size: int = 64,
    seed: int = 0,
    vocab_size: int = 320,
    tie_word_embeddings: bool = False,
    max_positions: int = 4096,
    model_vocab_size: int | None = None,
) -> Path:
    """Write a random-weight ``arch`` causal LM (safetensors) plus the fixture tokenizer to ``out_dir``.

    ``max_positions``: the config's max_position_embeddings / n_positions (small values test length checks).
    ``model_vocab_size``: the model's vocabulary when it should be larger than the tokenizer's (metrics
    over a 30k-150k vocabulary; the extra entries are never produced as input ids)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, vocab_size)
    V = max(len(tok), model_vocab_size or 0)
    common = dict(
        vocab_size=V,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "gpt2":
        cfg = AutoConfig.for_model(
            "gpt2", n_layer=num_layers, n_embd=hidden_size, n_head=4, n_positions=max_positions, **common
        )
    else:
        extra = _EXTRA.get(arch, {})
        cfg = AutoConfig.for_model(
            arch,
            num_hidden_layers=num_layers,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
            **extra,
            **common,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    # Random init in these configs is small; scale up so distributions are not near-uniform and
    # metric tests see real differences between two seeds.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:  # phi: initialised to 0, which would hide a dropped bias
            head.bias.normal_(0.0, 1.0)
    model.save_pretrained(out, safe_serialization=True)
    (out / "driftkit_fixture.json").write_text(json.dumps({"arch": arch, "seed": seed, "layers": num_layers}))
    return out
