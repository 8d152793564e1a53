"""``driftkit capture``: record activations and exact-logit ingredients of a checkpoint to HDF5."""

from __future__ import annotations

from pathlib import Path

import typer

from driftkit.cli.common import emit_json, err_console, handle_errors, json_option, progress_bar
from driftkit.cli.progress import phase_callback

STORE_HELP = "tokens (per token, default), pooled (3 vectors per sample) or sample:K (K tokens per sample)"


def parse_probe_opts(items: list[str]) -> dict[str, str]:
    from driftkit.parsing import parse_kv

    return parse_kv(items, what="--probe-opt", example="topk=50", allow_empty=True)


def register(app: typer.Typer) -> None:
    """Register the verb. Long, like the command inside it, because typer declares every option in the
    command's signature; the command bodies are short."""

    @app.command(
        "capture",
        epilog=(
            "Examples:\n\n"
            "  driftkit capture smollm2-135m --prompts bundled:general-mix --out base.h5\n\n"
            "  driftkit capture ./ckpt/sft --prompts my_prompts.jsonl --chat --generate --max-new-tokens 256 --out "
            "sft.h5\n\n"
            "  driftkit capture smollm2-135m --tokens-from sft.h5 --out base_on_sft.h5\n\n"
            "  driftkit capture smollm2-135m --prompts bundled:math --probe probes/examples/attn_head.py:AttnHeadProbe "
            "--probe-opt layer=3 --probe-opt head=1 --out head.h5"
        ),
    )
    @handle_errors
    def capture_cmd(
        model: str = typer.Argument(..., help="HF id, local safetensors folder, or a bundled model (smollm2-135m)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Output HDF5 file (required unless --dry-run)."),
        prompts: str | None = typer.Option(
            None,
            "--prompts",
            "-p",
            help="JSONL file, bundled:NAME (math, other, non, general-mix) or hf:DATASET[:CONFIG]:SPLIT:FIELD.",
        ),
        tokens_from: Path | None = typer.Option(
            None, "--tokens-from", help="Reuse another capture's exact samples and token ids."
        ),
        probe: list[str] = typer.Option(
            ["residual", "final"], "--probe", help="Probe name or file.py:Class (repeatable)."
        ),
        probe_opt: list[str] = typer.Option(
            [], "--probe-opt", help="name=value option for the probes that take it (repeatable)."
        ),
        layers: str | None = typer.Option(None, "--layers", "-l", help="Layers: all, 0,4,8, every:4, -1, 2-5."),
        chat: bool = typer.Option(
            False, "--chat/--raw", help="Wrap prompts in the tokenizer's chat template (default: raw text)."
        ),
        generate: bool = typer.Option(
            False, "--generate", help="Let the model answer each prompt first, then capture prompt + answer."
        ),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
        temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
        top_p: float = typer.Option(1.0, "--top-p"),
        seed: int = typer.Option(0, "--seed"),
        limit: int | None = typer.Option(None, "--limit", help="Use only the first N prompts."),
        prompt_seed: int | None = typer.Option(
            None, "--prompt-seed", help="Shuffle prompts with this seed before --limit."
        ),
        dtype: str = typer.Option(
            "auto", "--dtype", help="Model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."
        ),
        device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one), cpu, cuda or cuda:N."),
        device_map: str | None = typer.Option(
            None,
            "--device-map",
            help="auto | balanced | sequential: accelerate spreads the layers over the GPUs (then CPU memory), "
            "for models bigger than one device. Default: the whole model on --device.",
        ),
        backend: str = typer.Option(
            "hf",
            "--backend",
            help="Generation engine for --generate: hf (default) or vllm (GPU; pip install "
            "'driftkit[vllm]'). The capture then scores the generated tokens teacher-forced either way.",
        ),
        storage_dtype: str = typer.Option(
            "float16", "--storage-dtype", help="Activation storage: float16 or bfloat16."
        ),
        compression: str = typer.Option("none", "--compression", help="none, lzf or gzip."),
        max_batch_tokens: int = typer.Option(
            4096, "--max-batch-tokens", help="Token budget per forward batch (rows x longest)."
        ),
        trust_remote_code: bool = typer.Option(
            False, "--trust-remote-code", help="Allow the model repo's own code to run (off by default)."
        ),
        revision: str | None = typer.Option(
            None, "--revision", help="Model revision (branch, tag or commit) of a hub model."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted capture of the same settings."),
        truncate: str | None = typer.Option(
            None,
            "--truncate",
            help="left | right: cut samples longer than the model's maximum positions "
            "(default: refuse them before any compute).",
        ),
        shared_unembed: Path | None = typer.Option(
            None,
            "--shared-unembed",
            help="Keep the unembedding in this file, shared by every capture of the same "
            "checkpoint (written on first use; refused for other weights). Small captures stay small.",
        ),
        store: str = typer.Option("tokens", "--store", help=f"Layer sites: {STORE_HELP}. final/* stays per token."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the capture's size (config + tokenizer only, no weights) and stop."
        ),
        nproc: int = typer.Option(
            1,
            "--nproc",
            help="Capture in N processes (torch.distributed), one shard file per rank in OUT.shards/, stitched into "
            "OUT. Under torchrun leave it out: torchrun starts the processes.",
        ),
        json_out: str | None = json_option("a summary (out, model, samples, tokens, sites, bytes, complete)"),
    ) -> None:
        """Capture a checkpoint's layer activations and final hidden states (exact logits) to HDF5."""
        import json

        from driftkit.capturing import CaptureConfig, CaptureEngine
        from driftkit.capturing.distributed import capture_sharded, dist_env
        from driftkit.errors import DriftkitError
        from driftkit.store.reader import CaptureReader
        from driftkit.store.stitch import capture_bytes

        if out is None and not dry_run:
            raise DriftkitError("Missing --out: give the output HDF5 file (only --dry-run runs without one).")
        cfg = CaptureConfig(
            model=model,
            out=out or Path("capture.h5"),
            store=store,
            prompts=prompts,
            tokens_from=tokens_from,
            probes=list(probe),
            probe_options=parse_probe_opts(probe_opt),
            layers=layers,
            chat=chat,
            generate=generate,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            limit=limit,
            prompt_seed=prompt_seed,
            dtype=dtype,
            device=device,
            device_map=device_map,
            backend=backend,
            storage_dtype=storage_dtype,
            compression=None if compression == "none" else compression,
            max_batch_tokens=max_batch_tokens,
            trust_remote_code=trust_remote_code,
            revision=revision,
            overwrite=overwrite,
            resume=resume,
            truncate=truncate,
            shared_unembed=shared_unembed,
        )
        if dry_run:
            _dry_run(cfg, json_out)
            return
        engine: CaptureEngine | None = None
        with progress_bar() as bar:
            labels = {
                "convert": "converting model",
                "generate": "generating",
                "generate tokens": "generated tokens (of the budget)",
                "capture": "capturing tokens",
            }
            progress = phase_callback(bar, labels)

            try:
                if nproc != 1 or dist_env() is not None:  # several processes: docs/scale.md
                    path = capture_sharded(cfg, nproc, progress)
                else:
                    engine = CaptureEngine(cfg, progress=progress)
                    path = engine.run()
            except KeyboardInterrupt:
                if engine is not None and engine.opened:
                    raise  # a file holds completed samples: the generic "rerun with --resume" is right
                bar.stop()
                if resume and out.exists():
                    err_console.print(
                        f"[yellow]interrupted[/] before {out} was reopened: it is unchanged; "
                        f"rerun with --resume to continue."
                    )
                else:
                    err_console.print(
                        f"[yellow]interrupted[/] before any capture file was written ({out} was not "
                        f"{'changed' if out.exists() else 'created'}); rerun the same command to start."
                    )
                raise typer.Exit(130) from None
        if path is None:  # a torchrun rank other than 0: rank 0 stitches and reports
            return
        with CaptureReader(path) as r:
            summary = {
                "out": str(path),
                "model": r.model,
                "samples": r.n_samples,
                "tokens": r.n_tokens,
                "sites": r.sites(),
                "bytes": capture_bytes(path),  # with its shard files when --nproc stitched it
                "complete": r.complete,
                "store": r.store,
            }
        if not emit_json(json_out, json.dumps(summary)):
            err_console.print(
                f"[green]wrote[/] {path}: {summary['samples']} samples, {summary['tokens']} tokens, "
                f"{len(summary['sites'])} sites, {summary['bytes'] / 1e6:.1f} MB"
            )


def _dry_run(cfg: object, json_out: str | None) -> None:
    """``--dry-run``: the size estimate (driftkit.capturing.sizing) as JSON or a short table."""
    import json

    from rich.table import Table

    from driftkit.capturing.sizing import estimate, human
    from driftkit.cli.common import console

    est = estimate(cfg)  # type: ignore[arg-type]
    if emit_json(json_out, json.dumps(est)):
        return
    # a heading line, not the table's title: a title wraps at the (narrow) table's width
    console.print(
        f"{est['model']}: --store {est['store']}, layer sites in {est['storage_dtype']}",
        highlight=False,
        soft_wrap=True,
    )
    t = Table()
    t.add_column("array")
    t.add_column("bytes", justify="right")
    t.add_column("per", style="dim")
    for path, b in est["per_site"].items():
        t.add_row(path, f"{b:,}", "token")
    for path, b in est["per_site_per_sample"].items():
        t.add_row(path, f"{b:,}", "sample")
    console.print(t)
    console.print(
        f"{est['samples']} samples, {est['tokens']:,} tokens: {est['bytes_per_token']:,} B/token"
        + (f" + {est['bytes_per_sample']:,} B/sample" if est["bytes_per_sample"] else "")
        + f" + {human(est['static_bytes'])} once = [bold]{human(est['total_bytes'])}[/] ({est['total_bytes']:,} bytes)"
    )
