"""Which engine generates a capture's responses (``driftkit capture --generate --backend NAME``).

Why a separate step with a choice of engine: generation is the slow part of a capture with long
responses (one forward per new token), and vLLM (paged attention, continuous batching, tensor
parallel) is many times faster than ``model.generate`` on a GPU. The capture itself never changes:
whatever generated the tokens, the capture scores prompt + response teacher-forced in one nnsight
forward per batch, exactly as ``--tokens-from`` does, so the stored activations are those of the
capture's model on exactly the tokens the generator produced.

A back-end is a factory ``(loaded_model, options) -> Generator`` (see
:class:`driftkit.generate.Generator`: prompt token ids in, new token ids out, EOS kept). ``hf``
(default) and ``vllm`` are built in; :func:`register_backend` adds others (tests use it for a fake).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from driftkit.errors import DriftkitError
from driftkit.generate import Generator, HFGenerator
from driftkit.models import LoadedModel

Factory = Callable[[LoadedModel, dict[str, Any]], Generator]

VLLM_INSTALL = "pip install 'driftkit[vllm]'"

#: share of GPU memory vLLM may take: the capture's own copy of the model is already loaded on the
#: GPU when generation starts, so vLLM's default (0.9) would not fit next to it
VLLM_GPU_MEMORY = 0.45


def _hf(loaded: LoadedModel, opts: dict[str, Any]) -> Generator:
    return HFGenerator(loaded, batch_size=int(opts.get("batch_size", 32)))


VLLM_MISSING = (
    "--backend vllm generates the responses with vLLM, which is not installed in this environment. "
    f"Install it on a machine with a CUDA GPU with: {VLLM_INSTALL} (vLLM needs a GPU and a matching "
    "torch), or leave out --backend to generate with the default hf back-end (slower, runs anywhere). "
    "Either way the capture scores the generated tokens the same way."
)


def check_available(name: str) -> None:
    """Refuse a back-end whose package is missing before the capture loads its model (a 14B load takes
    minutes; finding out afterwards wastes them). Only looks the package up, never imports it."""
    if name != "vllm":
        return
    try:
        missing = importlib.util.find_spec("vllm") is None
    except ValueError:  # a module placed in sys.modules by hand (the tests' fake vLLM) has no spec
        missing = False
    if missing:
        raise DriftkitError(VLLM_MISSING)


def _vllm(loaded: LoadedModel, opts: dict[str, Any]) -> Generator:
    try:
        import vllm  # noqa: F401 - only to fail early, with the install command
    except ImportError as exc:
        raise DriftkitError(VLLM_MISSING) from exc
    from driftkit.generate import VLLMGenerator

    dtype = str(loaded.dtype).replace("torch.", "")
    return VLLMGenerator(
        loaded.path,
        tensor_parallel_size=int(opts.get("tensor_parallel_size", 1)),
        dtype=dtype,
        trust_remote_code=bool(opts.get("trust_remote_code", False)),
        gpu_memory_utilization=float(opts.get("gpu_memory_utilization", VLLM_GPU_MEMORY)),
        seed=int(opts.get("seed", 0)),
    )


BACKENDS: dict[str, Factory] = {"hf": _hf, "vllm": _vllm}


def register_backend(name: str, factory: Factory) -> None:
    """Add (or replace) a generation back-end by name."""
    BACKENDS[name] = factory


def make_backend(name: str, loaded: LoadedModel, **opts: Any) -> Generator:
    """The generator of back-end ``name`` for ``loaded`` (a DriftkitError names the known ones)."""
    if name not in BACKENDS:
        raise DriftkitError(
            f"Unknown generation back-end {name!r}; use {' or '.join(sorted(BACKENDS))} (--backend hf is the default)."
        )
    return BACKENDS[name](loaded, opts)


def release(gen: Generator) -> None:
    """Free what a generator holds before the capture's forward passes (vLLM keeps its weights and
    KV cache on the GPU until the engine object is gone)."""
    llm = getattr(gen, "llm", None)
    if llm is None:
        return
    del gen.llm  # type: ignore[attr-defined]
    del llm
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory is best effort
        pass
