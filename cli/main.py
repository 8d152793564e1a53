"""The ``driftkit`` command. Each verb lives in its own module with a ``register(app)`` function."""
from __future__ import annotations

import importlib
import os

import typer

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


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.", envvar="DRIFTKIT_DEBUG"),
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
