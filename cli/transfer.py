"""``driftkit transfer``: the transferability index (TI) of tuned models against a base, from score files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from driftkit.cli.common import console, emit_json, err_console, handle_errors, json_option


def _fmt(x: Any, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def transfer_table(res: dict[str, Any]) -> Any:
    from rich.table import Table

    sig = res["sigma"]
    if res["sigma_mode"] == "per-model":
        sig_txt = "per model"
    else:
        sig_txt = ", ".join(f"{g}={v:.2f}" for g, v in sig.items())
    name = str(res["base"]["model"])
    against = "the base" if name == "base" else f"the base {name}"  # not "vs base base"
    t = Table(title=f"transferability vs {against}  (sigma {res['sigma_mode']}: {sig_txt})", title_justify="left")
    t.add_column("model")
    for col in ("DI math", "DI other", "DI non", "TI other", "TI non"):
        t.add_column(col, justify="right")
    for name, m in res["models"].items():
        t.add_row(
            name,
            _fmt(m["di"]["math"], 3),
            _fmt(m["di"]["other"], 3),
            _fmt(m["di"]["non"], 3),
            _fmt(m["ti"]["other"]),
            _fmt(m["ti"]["non"]),
        )
    return t


def scores_table(res: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="scores (primary metric, 0-100) and change from base", title_justify="left")
    t.add_column("benchmark")
    t.add_column("group")
    t.add_column("base", justify="right")
    for name in res["models"]:
        t.add_column(name, justify="right")
    for b, g in res["benchmarks"].items():
        cells = [f"{m['scores'][b]:.1f} ({m['benchmarks'][b]['delta']:+.1f})" for m in res["models"].values()]
        t.add_row(b, g, f"{res['base']['scores'][b]:.1f}", *cells)
    return t


def register(app: typer.Typer) -> None:
    @app.command(
        "transfer",
        epilog=(
            "Examples:\n\n"
            "  driftkit transfer --base scores/base.json scores/sft.json scores/rl.json\n\n"
            "  driftkit transfer --base scores/base.json scores/rl.json --sigma per-model --json ti.json\n\n"
            "  driftkit transfer --base scores/base.json scores/rl.json --sigma math=16.1,other=18.4,non=20.5\n\n"
            "TI_g = 100 * DI_g / DI_math for g in other, non; DI_g = sum_b w_b * sign(d_b) * sqrt(|d_b|), d_b = "
            "(R_model - R_base) / sigma_g, "
            "w_b proportional to 100 - R_base within the group. sigma 'pooled' (default) is the std of score changes "
            "over all models "
            "given together, as in the paper's tables; 'per-model' uses each model alone."
        ),
    )
    @handle_errors
    def transfer_cmd(
        models: list[Path] = typer.Argument(..., help="Score files of the tuned models (driftkit.scores/1)."),
        base: Path = typer.Option(..., "--base", help="Score file of the base model."),
        sigma: str = typer.Option("pooled", "--sigma", help="pooled | per-model | math=16.1,other=18.4,non=20.5"),
        ddof: int = typer.Option(
            0, "--ddof", help="Degrees of freedom of the sigma standard deviation (0: population, as numpy)."
        ),
        force: bool = typer.Option(
            False,
            "--force",
            help=(
                "Compute even when benchmarks or settings differ (on the common benchmarks; differences are recorded)."
            ),
        ),
        json_out: str | None = json_option("the result (driftkit.transfer/1)"),
    ) -> None:
        """The paper's transferability index of each model relative to the base, per group (other
        reasoning, non-reasoning)."""
        from driftkit.scores import transfer

        res = transfer(
            base,
            list(models),
            sigma=sigma,
            force=force,
            ddof=ddof,
            warn=lambda p: err_console.print(f"[yellow]forced:[/] {p}", highlight=False),
        )
        if json_out == "-":
            emit_json(json_out, res.to_json())
            return
        console.print(scores_table(res))
        console.print(transfer_table(res))
        for note in res.get("notes", []):
            console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        emit_json(json_out, res.to_json())
