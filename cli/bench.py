"""``driftkit bench``: score a checkpoint on benchmark plugins, or import lm-evaluation-harness results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from driftkit.cli.common import console, emit_json, err_console, handle_errors, json_option, progress_bar
from driftkit.cli.progress import phase_callback


def scores_table(doc: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"scores of {doc['model']}", title_justify="left")
    for col, kw in (
        ("benchmark", {}),
        ("domain", {}),
        ("metric", {}),
        ("value", {"justify": "right"}),
        ("± stderr", {"justify": "right"}),
        ("n", {"justify": "right"}),
    ):
        t.add_column(col, **kw)
    for s in doc["scores"]:
        se = s.get("stderr")
        t.add_row(
            s["benchmark"],
            s["domain"],
            s["metric"] + (" *" if s.get("primary") else ""),
            f"{s['value']:.1f}",
            "" if se is None else f"{se:.1f}",
            str(s["n"]),
        )
    return t


def _suites_text() -> str:
    """The bundled suites as the help shows them, read from the suite table so the two cannot differ."""
    from driftkit.registry.suites import suites

    return ", ".join(f"{name} ({', '.join(benchmarks)})" for name, benchmarks in suites().items())


def register(app: typer.Typer) -> None:
    """Register the verb. Long, like the command inside it, because typer declares every option in the
    command's signature; the command bodies are short."""

    @app.command(
        "bench",
        epilog=(
            "Examples:\n\n"
            "  driftkit bench smollm2-135m --suite default --limit 50 --out scores/base.json\n\n"
            "  driftkit bench smollm2-135m --data fixtures --limit 20 --out scores/base.json   (offline)\n\n"
            "  driftkit bench ckpt/rl --benchmarks math500,ifeval --backend vllm --tp 2 --out scores/rl.json\n\n"
            "  driftkit bench --import-lm-eval results/ --model ckpt/sft --out scores/sft.json\n\n"
            f"Suites: {_suites_text()}. quick uses small budgets, for CPU demos. "
            "Scores are written as driftkit.scores/1 JSON plus OUT.items.jsonl with every item's output and score; "
            "'*' marks the metric 'driftkit transfer' uses."
        ),
    )
    @handle_errors
    def bench_cmd(
        model_arg: str | None = typer.Argument(
            None, metavar="MODEL", help="HF id, local safetensors folder, or a bundled model (smollm2-135m)."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Score file to write (JSON); per-item results go beside it."),
        suite: str = typer.Option("default", "--suite", help="Named suite: default, quick, math, other, non."),
        benchmarks: str | None = typer.Option(
            None, "--benchmarks", "-b", help="Comma list of benchmark names or file.py:Class (overrides --suite)."
        ),
        limit: int | None = typer.Option(None, "--limit", help="At most N items per benchmark (subtasks interleaved)."),
        data: str = typer.Option(
            "auto", "--data", help="auto (hub, or the bundled fixtures when the hub is unreachable), hub, or fixtures."
        ),
        backend: str = typer.Option(
            "hf", "--backend", help="hf (transformers generate, CPU/GPU) or vllm (GPU, optional extra)."
        ),
        batch_size: int = typer.Option(
            32,
            "--batch-size",
            help=(
                "Prompts per generate batch (hf back-end); decoding is memory-bound, so larger batches are nearly free "
                "per row."
            ),
        ),
        tp: int = typer.Option(1, "--tp", "--tensor-parallel-size", help="vLLM tensor parallel size."),
        max_new_tokens: str | None = typer.Option(
            None,
            "--max-new-tokens",
            help=(
                "Generation budget: 64 for every benchmark, or math500=128,ifeval=96 (default: the suite's / each "
                "benchmark's own)."
            ),
        ),
        temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default)."),
        top_p: float = typer.Option(1.0, "--top-p"),
        seed: int = typer.Option(0, "--seed", help="Sampling seed and GPQA option-shuffle seed."),
        samples: int = typer.Option(1, "--samples", help="Samples per item (pass@k; needs --temperature > 0)."),
        chat_template: bool = typer.Option(
            True, "--chat-template/--no-chat-template", help="Wrap prompts in the model's chat template (default on)."
        ),
        think: bool | None = typer.Option(
            None,
            "--think/--no-think",
            help="Set enable_thinking in templates that support it; <think> blocks are always stripped before scoring.",
        ),
        dtype: str = typer.Option(
            "auto", "--dtype", help="Model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."
        ),
        device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one), cpu, cuda or cuda:N."),
        trust_remote_code: bool = typer.Option(
            False, "--trust-remote-code", help="Allow the model repo's own code to run (off by default)."
        ),
        revision: str | None = typer.Option(None, "--revision", help="Model revision."),
        dataset_revision: str | None = typer.Option(
            None, "--dataset-revision", help="Dataset revision (commit) to load from the hub."
        ),
        name: str | None = typer.Option(None, "--name", help="Model name recorded in the score file (default: MODEL)."),
        import_lm_eval: Path | None = typer.Option(
            None,
            "--import-lm-eval",
            help="Import an lm-evaluation-harness --output_path folder (or results_*.json) instead of generating.",
        ),
        model_opt: str | None = typer.Option(
            None, "--model", help="Model (same as MODEL); with --import-lm-eval, the name to record."
        ),
        lm_eval_map: Path | None = typer.Option(
            None,
            "--lm-eval-map",
            help="TOML file with extra [[rule]] task->benchmark mappings, tried before the bundled table.",
        ),
        as_json: str | None = json_option("the score document (driftkit.scores/1)"),
    ) -> None:
        """Score a checkpoint on benchmark plugins (one per domain by default) and write driftkit.scores/1."""
        from driftkit.errors import DriftkitError
        from driftkit.scores import read_scores

        if model_arg and model_opt and model_arg != model_opt:
            raise DriftkitError(f"MODEL {model_arg!r} and --model {model_opt!r} disagree; give the model once.")
        model = model_arg or model_opt
        if import_lm_eval is not None:
            from driftkit.plugins.benchmarks.lm_eval_import import import_to_file

            path, unmapped = import_to_file(import_lm_eval, out, model=name or model, user_map=lm_eval_map)
            if unmapped:
                err_console.print(
                    f"[yellow]note:[/] lm-eval task(s) with no mapping rule were skipped: {', '.join(unmapped)} (add "
                    "rules with --lm-eval-map)."
                )
        else:
            if not model:
                raise DriftkitError(
                    "Give the model to benchmark (driftkit bench MODEL --out FILE), or --import-lm-eval DIR to import "
                    "lm-eval results."
                )
            from driftkit.bench import BenchSettings, parse_budget, run_benchmarks

            settings = BenchSettings(
                limit=limit,
                data=data,
                backend=backend,
                batch_size=batch_size,
                max_new_tokens=parse_budget(max_new_tokens),
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                samples_per_item=samples,
                chat_template=chat_template,
                think=think,
                tensor_parallel_size=tp,
                dtype=dtype,
                device=device,
                trust_remote_code=trust_remote_code,
                revision=revision,
                dataset_revision=dataset_revision,
            )
            with progress_bar() as pb:
                # phases are benchmark groups (samples) and their generated "... tokens"
                _progress = phase_callback(pb, unit=lambda p: "tokens" if p.endswith(" tokens") else "samples")

                path = run_benchmarks(
                    model,
                    benchmarks,
                    out,
                    settings,
                    suite=suite,
                    model_name=name,
                    progress=_progress,
                    log=lambda m: err_console.print(f"[yellow]note:[/] {m}", highlight=False),
                )
        doc = read_scores(path)
        if not emit_json(as_json, doc.to_json()):
            console.print(scores_table(doc))
            console.print(f"wrote {path}")
