"""``driftkit run`` (an experiment file) and ``driftkit demo`` (the bundled study)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from driftkit.cli.common import console, emit_json, err_console, handle_errors, json_option, progress_bar
from driftkit.cli.progress import phase_callback


def _execute(ex, resume: bool, json_out: str | None) -> None:
    import time

    from driftkit.pipeline.runner import run_experiment
    from driftkit.pipeline.study import Study

    t0 = time.perf_counter()
    with progress_bar() as bar:
        progress = phase_callback(bar)  # training steps, captured tokens, generated samples, benchmark items

        result = run_experiment(
            ex, resume=resume, log=lambda m: err_console.print(m, highlight=False), progress=progress
        )
    data = json.loads(result.report_json.read_text())
    findings = data.pop("findings", [])
    if emit_json(
        json_out,
        json.dumps(
            {
                "out": str(result.out),
                "html": str(result.report_html),
                "executed": result.executed,
                "skipped": result.skipped,
                "findings": findings,
            },
            indent=2,
        ),
    ):
        return
    Study(data, findings).show(console)
    console.print(
        f"\n{len(result.executed)} step(s) run, {len(result.skipped)} cached, {time.perf_counter() - t0:.0f} s. "
        f"HTML report: [bold]{result.report_html}[/]"
    )


def register(app: typer.Typer) -> None:
    @app.command(
        "run",
        epilog="Examples:\n\n  driftkit run experiment.toml\n\n  driftkit run experiment.toml --resume\n\n"
        "See docs/pipeline.md for the experiment file.",
    )
    @handle_errors
    def run_cmd(
        config: Path = typer.Argument(..., help="Experiment TOML file."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue interrupted steps (captures, training) instead of redoing them."
        ),
        out: Path | None = typer.Option(None, "--out", help="Override [experiment].out."),
        device: str | None = typer.Option(
            None, "--device", help="Override [experiment].device: auto, cpu, cuda or cuda:N (every step's models)."
        ),
        dtype: str | None = typer.Option(
            None, "--dtype", help="Override [experiment].dtype: auto, float32, bfloat16 or float16."
        ),
        revision: str | None = typer.Option(None, "--revision", help="Override [experiment].revision (base model)."),
        seed: int | None = typer.Option(None, "--seed", help="Override [experiment].seed."),
        json_out: str | None = json_option("a summary (out, html, executed, skipped, findings)"),
    ) -> None:
        """Run the whole study: train -> bench -> capture -> compare -> transfer -> report, cached by input hashes."""
        from driftkit.models import pick_device, pick_dtype
        from driftkit.pipeline.experiment import load_experiment

        ex = load_experiment(config)
        for key, value in (("out", out), ("device", device), ("dtype", dtype), ("revision", revision), ("seed", seed)):
            if value is not None:
                setattr(ex, key, value)
        pick_dtype(ex.dtype, pick_device(ex.device))  # a wrong device or dtype fails now, not after training
        _execute(ex, resume, json_out)

    @app.command("demo", epilog="Examples:\n\n  driftkit demo\n\n  driftkit demo --quick --out /tmp/demo")
    @handle_errors
    def demo_cmd(
        out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (reruns reuse its cache)."),
        quick: bool = typer.Option(
            False, "--quick", help="Tiny random model, seconds-scale settings: a smoke test of the pipeline."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue interrupted steps."),
        json_out: str | None = json_option("a summary (out, html, executed, skipped, findings)"),
    ) -> None:
        """The paper's study on the bundled SmolLM2-135M: SFT and RL on math, benchmarks, drift, report."""
        from driftkit.pipeline.demo import demo_experiment

        _execute(demo_experiment(out, quick), resume, json_out)
