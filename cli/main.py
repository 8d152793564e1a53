"""The ``driftkit`` command. Each verb lives in its own module with a ``register(app)`` function."""

from __future__ import annotations

import importlib
import os

import typer
import typer.core

app = typer.Typer(
    name="driftkit",
    help="Measure how fine-tuning moves a language model: capture activations and exact logits, compare "
    "checkpoints (CKA, KL, token-rank shift, PCA shift), train SFT/RL checkpoints, benchmark, and compute "
    "the transferability index.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: modules under driftkit.cli that define verbs; a missing module (work in progress) is skipped.
VERB_MODULES = ("capture", "inspect", "plugins", "compare", "bench", "transfer", "train", "run")


def _print_version(value: bool) -> None:
    if value:
        from driftkit import __version__

        typer.echo(f"driftkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.", envvar="DRIFTKIT_DEBUG"),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print driftkit's version and exit."
    ),
) -> None:
    if debug:
        os.environ["DRIFTKIT_DEBUG"] = "1"


for _name in VERB_MODULES:
    try:
        _mod = importlib.import_module(f"driftkit.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"driftkit.cli.{_name}":
            raise
        continue
    _mod.register(app)


def _escape_help_markup(typer_app: typer.Typer) -> None:
    """Escape rich markup in every help text, epilog and option help of ``typer_app``.

    Why: help texts quote TOML tables (``[sft]``, ``[[rule]]``, ``[experiment].out``), which rich
    markup mode silently drops as unknown tags. Escaping once here keeps rich's layout (panels,
    verbatim example lines) and shows every bracket as written, for verbs added later too.
    """
    import inspect

    from rich.markup import escape

    from driftkit.cli.common import DriftkitCommand

    for cmd in typer_app.registered_commands:
        if cmd.cls in (
            None,
            typer.core.TyperCommand,
        ):  # a bare --json means stdout on every verb (see cli/common.json_option)
            cmd.cls = DriftkitCommand
        cmd.help = escape(cmd.help or inspect.getdoc(cmd.callback) or "") or None
        if cmd.epilog:
            cmd.epilog = escape(cmd.epilog)
        for param in inspect.signature(cmd.callback).parameters.values():
            info = param.default
            if isinstance(info, typer.models.ParameterInfo) and info.help:
                info.help = escape(info.help)


_escape_help_markup(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
