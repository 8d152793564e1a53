"""``driftkit compare``: run analysis plugins on captures and report (terminal, JSON, HTML)."""

from __future__ import annotations

from pathlib import Path

import typer

from driftkit.cli.common import console, handle_errors, json_option, progress_bar
from driftkit.cli.progress import phase_callback

EPILOG = (
    "Examples:\n\n"
    "  driftkit compare base.h5 sft.h5\n\n"
    "  driftkit compare base.h5 sft.h5 rl.h5 --json report.json --html report.html\n\n"
    "  driftkit compare base_on_sft.h5 sft.h5 --analyses kl,token_rank --positions response\n\n"
    "  driftkit compare base.h5 sft.h5 --analysis my_metric.py:MyAnalysis\n\n"
    "  driftkit compare base.h5 sft.h5 --analyses cka --layers every:4 --max-tokens 50000 --opt cka.unit=sample\n\n"
    "The first file is the reference A (usually the base model); each other file is compared against it. "
    "Files must hold the same samples with identical token ids (capture the tuned model with "
    "--tokens-from base.h5 when it generated its own responses)."
)


def parse_plugin_options(items: list[str]) -> dict[str, dict[str, str]]:
    """``["cka.unit=sample", "kl.top=20"]`` -> ``{"cka": {"unit": "sample"}, "kl": {"top": "20"}}``."""
    from driftkit.errors import DriftkitError
    from driftkit.parsing import parse_kv

    out: dict[str, dict[str, str]] = {}
    for key, value in parse_kv(items, what="--opt", example="cka.unit=sample", allow_empty=True).items():
        name, dot, opt = key.partition(".")
        if not dot or not name or not opt:
            raise DriftkitError(
                f"--opt {key}={value} must look like analysis.option=value (e.g. --opt cka.unit=sample)."
            )
        out.setdefault(name.strip(), {})[opt.strip()] = value
    return out


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def register(app: typer.Typer) -> None:
    """Register the verb. Long, like the command inside it, because typer declares every option in the
    command's signature; the command bodies are short."""

    @app.command("compare", epilog=EPILOG)
    @handle_errors
    def compare_cmd(
        captures: list[Path] = typer.Argument(
            ..., help="Capture files: the reference A first, then one or more to compare with it."
        ),
        analyses: str | None = typer.Option(
            None,
            "--analyses",
            "-a",
            help="Comma-separated analyses (default: every one the files support). See 'driftkit plugins'.",
        ),
        analysis_files: list[str] = typer.Option(
            [],
            "--analysis",
            help=(
                "An extra analysis as path/to/file.py:ClassName or package.module:ClassName (repeatable); it is then "
                "also selectable by its name in --analyses."
            ),
        ),
        positions: str = typer.Option(
            "auto",
            "--positions",
            help=(
                "Token positions: auto (response tokens when both captures hold responses, else all), all, prompt or "
                "response."
            ),
        ),
        layers: str | None = typer.Option(
            None, "--layers", "-l", help="Residual layers: all, 0,4,8, every:4, -1, 2-5 (default: all recorded)."
        ),
        domains: str | None = typer.Option(
            None, "--domains", help="Comma-separated sample domains to keep (e.g. math,other)."
        ),
        max_tokens: int | None = typer.Option(
            None, "--max-tokens", help="Random subsample of at most this many tokens per analysis (seeded)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the --max-tokens subsample."),
        allow_incomplete: bool = typer.Option(
            False, "--allow-incomplete", help="Use only the samples captured in both files of unfinished captures."
        ),
        opt: list[str] = typer.Option(
            [], "--opt", help="Analysis option analysis.key=value (repeatable), e.g. cka.unit=sample, kl.top=20."
        ),
        json_out: str | None = json_option("the report (driftkit.report/1)"),
        html_out: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report with figures."),
        chunk_tokens: int = typer.Option(4096, "--chunk-tokens", help="Tokens read per chunk (memory vs. speed)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the terminal report."),
        jobs: int = typer.Option(
            1, "--jobs", "-j", help="Processes for the layers pass (CKA, PCA shift); results are identical to 1."
        ),
    ) -> None:
        """Compare captures of several checkpoints: CKA, exact KL/JS, token-rank shift, PCA shift."""
        from driftkit.comparing import compare

        specs: list[str] | None = _split(analyses)
        options = parse_plugin_options(opt)
        progress = progress_bar()
        on_progress = phase_callback(progress)

        with progress:
            report = compare(
                captures,
                analyses=specs,
                positions=positions,
                layers=layers,
                domains=_split(domains),
                max_tokens=max_tokens,
                seed=seed,
                allow_incomplete=allow_incomplete,
                chunk_tokens=chunk_tokens,
                options=options,
                progress=on_progress,
                extra_analyses=list(analysis_files),
                jobs=jobs,
            )
        if html_out is not None:
            report.to_html(html_out)
        if json_out == "-":
            typer.echo(report.to_json(), nl=False)
        else:
            if json_out is not None:
                report.to_json(json_out)
            if not quiet:
                report.show(console)
            written = [str(p) for p in (json_out, html_out) if p is not None]
            if written:
                console.print(f"wrote {', '.join(written)}", style="dim")
