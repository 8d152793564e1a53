"""Running benchmark suites on a checkpoint: prompts -> generation -> scoring -> score records.

Why here and not in each plugin: every benchmark must see the model the same way (chat template,
thinking mode, greedy decoding, the same think stripping), so the loop that tokenizes prompts,
generates through :mod:`driftkit.generate` and decodes answers is shared; plugins only build
prompts and score answers. The result is a ``driftkit.scores/1`` file (see :mod:`driftkit.scores`)
plus its per-item file.

Python API for pipelines::

    from driftkit.bench import run_suite
    path = run_suite("smollm2-135m", suite="default", limit=20, out="scores/base.json", data="fixtures")
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftkit.answers import THINK_RULE, strip_think
from driftkit.errors import DriftkitError, opt
from driftkit.parsing import parse_kv
from driftkit.registry.benchmark import Benchmark, LoadedData
from driftkit.registry.suites import resolve_suite


@dataclass
class BenchSettings:
    """How a suite is run. Fields under ``settings``/``benchmarks`` in the provenance must match
    between models for their scores to be comparable; runtime fields (backend, batch size, device)
    are recorded but not compared."""

    limit: int | None = None
    data: str = "auto"  # auto | hub | fixtures
    backend: str = "hf"  # hf | vllm
    batch_size: int = 32  # decoding is memory-bound: 32 rows cost ~1.4x 8 rows per step on CPU
    max_new_tokens: int | dict[str, int] | None = (
        None  # None: the suite's / each benchmark's default; dict: per benchmark
    )
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    samples_per_item: int = 1
    chat_template: bool = True
    think: bool | None = None  # None: the template's default; True/False: enable_thinking
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None
    dataset_revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_benchmarks(names: Sequence[str] | str | None, suite: str | None = "default") -> dict[str, int | None]:
    """Benchmark names (-> the suite's budget, or None) from a comma list or a suite name, order kept.

    Suites are data (:mod:`driftkit.registry.suites`): this module names no benchmark."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names:
        return {n: None for n in dict.fromkeys(names)}
    return resolve_suite(suite or "default")


def parse_budget(spec: str | int | None) -> int | dict[str, int] | None:
    """``--max-new-tokens``: ``64`` for every benchmark, or ``math500=128,ifeval=96`` per benchmark."""
    if spec is None or isinstance(spec, int):
        return spec
    spec = spec.strip()
    if "=" in spec:
        return parse_kv(
            spec, what="--max-new-tokens", example="math500=128,ifeval=96", convert=int, expect="a whole number"
        )
    try:
        return int(spec)
    except ValueError:
        raise DriftkitError(
            f"Cannot read {opt('max_new_tokens', spec)}: give a number (64) or name=number pairs "
            "(math500=128,ifeval=96)."
        ) from None


def load_benchmarks(names: Sequence[str] | dict[str, int | None], settings: BenchSettings) -> list[Benchmark]:
    """Instantiate benchmark plugins; the budget is the user's (global or per benchmark), else the
    suite's, else the plugin's default."""
    from driftkit.registry import load

    suite_budget = dict(names) if isinstance(names, dict) else {n: None for n in names}
    user = settings.max_new_tokens
    if isinstance(user, dict):
        unknown = [k for k in user if k not in suite_budget]
        if unknown:
            raise DriftkitError(
                f"{opt('max_new_tokens', None)} names {', '.join(unknown)}, which are not among the benchmarks run "
                f"({', '.join(suite_budget)})."
            )
    out = []
    for n, sb in suite_budget.items():
        budget = user.get(n, sb) if isinstance(user, dict) else (user if user is not None else sb)
        if budget is not None and budget < 1:
            raise DriftkitError(f"max_new_tokens for {n} must be at least 1 (got {budget}).")
        cls = load("benchmark", n)
        out.append(
            cls(
                seed=settings.seed,
                samples_per_item=settings.samples_per_item,
                revision=settings.dataset_revision,
                max_new_tokens=budget,
            )
        )
    return out


# ------------------------------------------------------------------------------------- prompting
def _plain_prompt(messages: list[dict[str, str]]) -> str:
    """Prompt text for a model without a chat template: turns joined by blank lines."""
    return "\n\n".join(m["content"].strip() for m in messages) + "\n\n"


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], chat_template: bool, think: bool | None) -> str:
    """The prompt text a model sees: its chat template with a generation prompt (thinking mode set
    when the template supports ``enable_thinking``), or plain text when chat is off or absent."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        kwargs: dict[str, Any] = {}
        if think is not None and "enable_thinking" in str(tokenizer.chat_template):
            kwargs["enable_thinking"] = bool(think)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return _plain_prompt(messages)


def decode_answer(tokenizer: Any, ids: Sequence[int]) -> tuple[str, str]:
    """(raw decoded output, answer after think stripping). Special tokens are kept while stripping
    (``<think>`` may be a special token) and removed afterwards."""
    raw = tokenizer.decode(list(ids), skip_special_tokens=False)
    ans = strip_think(raw)
    for tok in getattr(tokenizer, "all_special_tokens", []) or []:
        if tok and tok not in ("<think>", "</think>"):
            ans = ans.replace(tok, "")
            raw = raw.replace(tok, "")
    return raw, ans.strip()


# ------------------------------------------------------------------------------------------ run
class _Model:
    """What the loop needs from a model: a tokenizer, a generator and identity for provenance."""

    def __init__(self, spec: str, s: BenchSettings, progress: Callable[[str], None] | None) -> None:
        from driftkit.generate import HFGenerator, VLLMGenerator
        from driftkit.models import load_model, load_tokenizer, resolve_model_path, tokenizer_sha256, weights_sha256

        self.spec = spec
        if s.backend == "vllm":
            path = resolve_model_path(spec, progress)
            self.tokenizer = load_tokenizer(path, revision=s.revision, trust_remote_code=s.trust_remote_code)
            self.generator = VLLMGenerator(
                path, tensor_parallel_size=s.tensor_parallel_size, dtype=s.dtype, trust_remote_code=s.trust_remote_code
            )
            self.path, self.dtype, self.device = path, s.dtype, "cuda"
        elif s.backend == "hf":
            loaded = load_model(
                spec,
                dtype=s.dtype,
                device=s.device,
                trust_remote_code=s.trust_remote_code,
                revision=s.revision,
                progress=progress,
            )
            self.tokenizer = loaded.tokenizer
            self.generator = HFGenerator(loaded, batch_size=s.batch_size)
            self.path, self.dtype, self.device = (
                loaded.path,
                str(loaded.dtype).replace("torch.", ""),
                str(loaded.device),
            )
        else:
            raise DriftkitError(f"Unknown generation back-end {s.backend!r}; use 'hf' or 'vllm'.")
        self.info = {
            "spec": spec,
            "path": self.path,
            "revision": s.revision,
            "weights_sha256": weights_sha256(self.path),
            "tokenizer_sha256": tokenizer_sha256(self.tokenizer),
        }


def generation_groups(benches: Sequence[Benchmark], s: BenchSettings) -> list[list[Benchmark]]:
    """Benchmarks whose requests go through ``generate`` together, in suite order.

    Why pool: decoding a small model is memory-bound (on the 2-core CPU one decoding step costs
    0.20 s for 8 rows and 0.27 s for 32), so three benchmarks of 8 items each cost nearly three
    times one pooled batch of 24. Only benchmarks with the same token budget are pooled, and only
    under greedy decoding: sampled outputs are seeded per batch, and a benchmark's samples must
    not depend on which other benchmarks ran beside it.
    """
    if s.temperature > 0:
        return [[b] for b in benches]
    groups: dict[int, list[Benchmark]] = {}
    for b in benches:
        groups.setdefault(int(b.max_new_tokens), []).append(b)
    return list(groups.values())


def check_settings(s: BenchSettings) -> None:
    """Refuse sampling settings that cannot work, before anything is loaded."""
    if s.temperature < 0 or not (0 < s.top_p <= 1):
        raise DriftkitError(
            f"temperature must be >= 0 and top_p in (0, 1]; got temperature={s.temperature}, top_p={s.top_p}."
        )
    if s.samples_per_item > 1 and s.temperature == 0:
        raise DriftkitError(
            f"{opt('samples_per_item', s.samples_per_item, flag='--samples')} with greedy decoding would repeat the "
            "same "
            f"answer; set {opt('temperature', 0.6)} (or any value > 0) for pass@k with several samples, or use "
            f"{opt('samples_per_item', 1, flag='--samples')}."
        )


def load_data(
    benches: Sequence[Benchmark], s: BenchSettings, log: Callable[[str], None] | None
) -> dict[str, LoadedData]:
    """Every benchmark's items, loaded before the model: a dataset problem should stop the run
    before minutes of model loading. Fixture fallbacks are reported through ``log``."""
    datas: dict[str, LoadedData] = {}
    for b in benches:
        datas[b.name] = b.load(s.data, s.limit)
        fb = datas[b.name].provenance.get("fallback")
        if fb and log:
            log(f"{b.name}: {fb} ({len(datas[b.name].items)} fixture items; not comparable with real-dataset scores).")
    return datas


@dataclass
class Requests:
    """The rendered prompts of one benchmark as token ids: one request per (item, sample)."""

    ids: list[list[int]]
    prompt_lens: list[int]  # per item


def render_requests(
    benches: Sequence[Benchmark], datas: dict[str, LoadedData], tok: Any, s: BenchSettings
) -> dict[str, Requests]:
    """Each benchmark's prompts through the model's chat template (see :func:`render_prompt`), tokenized."""
    out: dict[str, Requests] = {}
    for b in benches:
        texts = [render_prompt(tok, b.build_prompt(it), s.chat_template, s.think) for it in datas[b.name].items]
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in texts]
        ids = [pid for pid in prompt_ids for _ in range(b.samples_per_item)]
        out[b.name] = Requests(ids, [len(p) for p in prompt_ids])
    return out


def generate_group(
    model: _Model,
    group: Sequence[Benchmark],
    requests: dict[str, Requests],
    s: BenchSettings,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[list[list[int]], float]:
    """Generate the pooled requests of one group (see :func:`generation_groups`); returns the
    generated ids in request order and the seconds it took."""
    label = "+".join(b.name for b in group)
    pooled = [r for b in group for r in requests[b.name].ids]
    done, tokens_done = 0.0, 0
    budget = len(pooled) * group[0].max_new_tokens

    def _tick(n: float, tokens: int = 0) -> None:
        nonlocal done, tokens_done
        done += n
        tokens_done += tokens
        if progress:
            progress(label, done, len(pooled))
            progress(f"{label} tokens", tokens_done, budget)  # generated tokens, of the budget

    if progress:
        progress(label, 0, len(pooled))
    t0 = time.perf_counter()
    gen = model.generator.generate(
        pooled,
        max_new_tokens=group[0].max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=s.seed,
        progress=_tick,
    )
    if progress:  # rows that stopped at EOS used less than the budget: close the line at what was made
        progress(f"{label} tokens", tokens_done, tokens_done)
    return gen, time.perf_counter() - t0


def score_benchmark(
    b: Benchmark, data: LoadedData, gen: Sequence[Sequence[int]], tok: Any, req: Requests
) -> list[dict[str, Any]]:
    """Per-item results of one benchmark: each sample decoded, think-stripped and scored by the plugin."""
    results = []
    for i, it in enumerate(data.items):
        samples = []
        for j in range(b.samples_per_item):
            ids = gen[i * b.samples_per_item + j]
            raw, ans = decode_answer(tok, ids)
            samples.append({"output": raw, "answer": ans, "new_tokens": len(ids), **b.score(it, ans)})
        results.append(
            {
                "benchmark": b.name,
                "id": it["_id"],
                "config": it.get("_config"),
                "prompt_tokens": req.prompt_lens[i],
                "samples": samples,
            }
        )
    return results


def timing_record(
    seconds: float, generation_s: float, n_items: int, results: list[dict[str, Any]], group: Sequence[Benchmark]
) -> dict[str, Any]:
    """The ``timing`` entry of one benchmark in the provenance."""
    return {
        "seconds": round(seconds, 3),
        "generation_seconds": round(generation_s, 3),
        "items": n_items,
        "items_per_s": round(n_items / seconds, 4) if seconds > 0 else None,
        "new_tokens": sum(smp["new_tokens"] for r in results for smp in r["samples"]),
        **({"generated_with": [x.name for x in group]} if len(group) > 1 else {}),
    }


def record_provenance(
    model: _Model, s: BenchSettings, bench_prov: dict[str, Any], timing: dict[str, Any]
) -> dict[str, Any]:
    """The provenance of a score file: tool, model identity, the compared settings and the runtime."""
    try:
        from importlib.metadata import version

        dk_version = version("driftkit")
    except Exception:
        dk_version = "unknown"
    tok = model.tokenizer
    think_supported = "enable_thinking" in str(getattr(tok, "chat_template", "") or "")
    return {
        "tool": "driftkit bench",
        "driftkit_version": dk_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model.info,
        "settings": {
            "chat_template": bool(s.chat_template and getattr(tok, "chat_template", None)),
            "think": s.think if think_supported else None,
            "think_strip_rule": THINK_RULE,
            "generation": {"temperature": s.temperature, "top_p": s.top_p, "seed": s.seed},
        },
        "benchmarks": bench_prov,
        "runtime": {
            "backend": s.backend,
            "batch_size": s.batch_size,
            "dtype": model.dtype,
            "device": model.device,
            "tensor_parallel_size": s.tensor_parallel_size,
        },
        "timing": timing,
    }


def _template_notices(tok: Any, s: BenchSettings, log: Callable[[str], None] | None) -> None:
    """Tell the user when a chat/think setting cannot take effect with this tokenizer."""
    if not log:
        return
    if s.think is not None and "enable_thinking" not in str(getattr(tok, "chat_template", "") or ""):
        log(
            "the model's chat template has no enable_thinking switch; --think/--no-think has no effect "
            "(think blocks are still stripped)."
        )
    if s.chat_template and not getattr(tok, "chat_template", None):
        log("the tokenizer has no chat template; prompts are given as plain text.")


def run_benchmarks(
    model_spec: str,
    benchmarks: Sequence[str] | str | None = None,
    out: str | Path = "scores.json",
    settings: BenchSettings | None = None,
    suite: str | None = "default",
    model_name: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Benchmark one checkpoint and write ``out`` (summary) + ``<out stem>.items.jsonl``.

    The steps: load every benchmark's data (:func:`load_data`), render the prompts
    (:func:`render_requests`), generate per pooled group (:func:`generate_group`), score
    (:func:`score_benchmark`) and record (:func:`record_provenance`, :func:`driftkit.scores.write_scores`).
    ``progress(benchmark, done, total)`` is called as items are generated; ``log(message)`` for
    notices (fixture fallback, think mode unsupported). Returns the summary path.
    """
    from driftkit.scores import write_scores

    s = settings or BenchSettings()
    check_settings(s)
    benches = load_benchmarks(resolve_benchmarks(benchmarks, suite), s)
    datas = load_data(benches, s, log)
    model = _Model(model_spec, s, (lambda m: log(m)) if log else None)
    _template_notices(model.tokenizer, s, log)
    requests = render_requests(benches, datas, model.tokenizer, s)
    all_scores: list[dict[str, Any]] = []
    items_out: list[dict[str, Any]] = []
    bench_prov: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    for group in generation_groups(benches, s):
        gen_all, t_gen = generate_group(model, group, requests, s, progress)
        n_pooled, offset = sum(len(requests[b.name].ids) for b in group), 0
        for b in group:
            t1 = time.perf_counter()
            n = len(requests[b.name].ids)
            results = score_benchmark(b, datas[b.name], gen_all[offset : offset + n], model.tokenizer, requests[b.name])
            offset += n
            items_out.extend(results)
            all_scores.extend(b.aggregate(results))
            # A pooled batch's generation time is shared out by request count, so items/s stays per benchmark.
            share = t_gen * n / max(1, n_pooled)
            bench_prov[b.name] = {**datas[b.name].provenance, **b.settings()}
            seconds = share + time.perf_counter() - t1
            timing[b.name] = timing_record(seconds, share, len(datas[b.name].items), results, group)
    provenance = record_provenance(model, s, bench_prov, timing)
    return write_scores(out, model_name or model_spec, all_scores, provenance, items_out)


def run_suite(
    model_spec: str,
    suite: str = "default",
    limit: int | None = None,
    out: str | Path = "scores.json",
    benchmarks: Sequence[str] | str | None = None,
    data: str = "auto",
    model_name: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> Path:
    """Benchmark ``model_spec`` on a named suite (or explicit ``benchmarks``); returns the score file path.

    Extra keyword arguments are :class:`BenchSettings` fields (backend, batch_size, max_new_tokens,
    think, chat_template, temperature, ...).
    """
    known = set(BenchSettings.__dataclass_fields__)
    bad = [k for k in settings if k not in known]
    if bad:
        raise DriftkitError(f"Unknown bench setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}.")
    s = BenchSettings(limit=limit, data=data, **settings)
    return run_benchmarks(
        model_spec, benchmarks, out, s, suite=suite, model_name=model_name, progress=progress, log=log
    )
