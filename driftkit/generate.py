"""Generation back-ends: a checkpoint answers prompts, token ids in, new token ids out.

Why token ids and not strings: a capture must score exactly the tokens the model produced (decoding
and re-encoding can merge or split tokens), and benchmarks need the same ids to be reproducible.
The HF back-end works everywhere; vLLM is an optional extra for GPUs (``pip install driftkit[vllm]``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from driftkit.errors import DriftkitError
from driftkit.models import LoadedModel


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides a generation, recorded in provenance so results are reproducible."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


class Generator(ABC):
    """Turns prompts (token ids) into continuations (new token ids only, prompt order kept)."""

    name: str = "generator"

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: Callable[[float, int], None] | None = None,
    ) -> list[list[int]]:
        """Return, for each prompt, the generated token ids (stopping at EOS, EOS included).

        ``progress(n, tokens)`` is called with the samples' worth of work just done and the new tokens
        generated meanwhile. ``n`` may be fractional (the HF back-end advances a batch of R rows by
        R / max_new_tokens per decoding step); over a call the ``n`` add up to ``len(prompts)`` and the
        ``tokens`` to the generated tokens returned."""


class _StepProgress:
    """A ``generate`` streamer that turns decoding steps into sample and token progress.

    Why: a batch of 32 prompts at 256 new tokens can decode for minutes; reporting only finished
    batches left progress at 0 all that time. ``generate`` calls ``put`` once with the prompt, then
    once per decoding step with each row's new token, so each step advances the batch by
    rows / max_new_tokens samples and by one token per row that had not yet ended at EOS.
    """

    def __init__(self, rows: int, max_new_tokens: int, eos: list[int], progress: Callable[[float, int], None]) -> None:
        self.step = rows / max(1, max_new_tokens)
        self.reported = 0.0
        self.rows = rows
        self.progress = progress
        self.eos = torch.as_tensor(eos, dtype=torch.long)
        self.active = torch.ones(rows, dtype=torch.bool)
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        tokens = int(self.active.sum())
        self.active &= ~torch.isin(torch.as_tensor(value).view(-1)[: self.rows], self.eos)
        step = self.step if self.reported + self.step <= self.rows else 0.0
        self.reported += step
        self.progress(step, tokens)

    def end(self) -> None:
        """The rest of the batch at once (rows that stopped early at EOS)."""
        if self.rows - self.reported > 0:
            self.progress(self.rows - self.reported, 0)
        self.reported = float(self.rows)


class HFGenerator(Generator):
    """Batched ``model.generate`` with left padding, batches of similar length to waste little compute."""

    name = "hf"

    def __init__(self, loaded: LoadedModel, batch_size: int = 8) -> None:
        self.loaded = loaded
        self.batch_size = max(1, int(batch_size))

    def _eos_ids(self) -> list[int]:
        tok = self.loaded.tokenizer
        ids: set[int] = set()
        gc = getattr(self.loaded.model, "generation_config", None)
        cfg_eos = getattr(gc, "eos_token_id", None)
        if isinstance(cfg_eos, int):
            ids.add(cfg_eos)
        elif cfg_eos:
            ids.update(int(i) for i in cfg_eos)
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        return sorted(ids)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: Callable[[float, int], None] | None = None,
    ) -> list[list[int]]:
        model, tok = self.loaded.model, self.loaded.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = self._eos_ids()
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        device = next(model.parameters()).device
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            L = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), L), pad_id, dtype=torch.long)
            attn = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                p = torch.as_tensor(list(prompts[i]), dtype=torch.long)
                input_ids[r, L - len(p) :] = p
                attn[r, L - len(p) :] = 1
            kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos)
            if temperature and temperature > 0:
                torch.manual_seed(seed + b)
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            streamer = _StepProgress(len(idx), max_new_tokens, eos, progress) if progress else None
            gen = model.generate(
                input_ids=input_ids.to(device), attention_mask=attn.to(device), streamer=streamer, **kwargs
            )
            new = gen[:, L:].cpu()
            for r, i in enumerate(idx):
                ids = new[r].tolist()
                # cut at the first EOS (kept) and drop the padding generate adds after it
                cut = len(ids)
                for j, t in enumerate(ids):
                    if t in eos:
                        cut = j + 1
                        break
                out[i] = ids[:cut]
            if streamer is not None:
                streamer.end()
        return out


class VLLMGenerator(Generator):
    """vLLM back-end (GPU, tensor parallel). Import-guarded: vLLM is an optional extra."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise DriftkitError(
                "The vLLM back-end needs vLLM, which is not installed. Install it on a GPU machine with "
                "'pip install driftkit[vllm]', or use the default --backend hf."
            ) from exc
        self.llm = LLM(
            model=model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: Callable[[float, int], None] | None = None,
    ) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = [list(o.outputs[0].token_ids) for o in outs]
        if progress:
            progress(len(prompts), sum(len(r) for r in result))
        return result
