"""Shared CLI plumbing: the console, error handling and exit codes.

Exit codes (DESIGN.md section 5): 0 ok, 1 user error (a one-paragraph message, no traceback unless
``--debug``), 2 internal error (a bug: traceback with --debug, a short pointer otherwise).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from driftkit.errors import DriftkitDeprecation, DriftkitError, cli_interface

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("DRIFTKIT_DEBUG", "") not in ("", "0")


def _quiet_hdf5_unraisable(hook: Any) -> Any:
    """h5py reports write failures a second time when it frees objects (``_dealloc``), as an
    'Exception ignored' traceback. The first report already became a clear error, so drop the echo."""

    def filtered(info: Any) -> None:
        if (
            isinstance(info.exc_value, RuntimeError)
            and "file write failed" in str(info.exc_value)
            and not debug_enabled()
        ):
            return
        hook(info)

    return filtered


def _deprecation_notes(show: Any) -> Any:
    """``warnings.showwarning`` that prints driftkit's own deprecations as one ``note:`` line
    (a user typing an old spelling needs the new one, not a warning with a source location)."""

    def shown(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DriftkitDeprecation):
            err_console.print(f"[yellow]note:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
        else:
            show(message, category, *args, **kwargs)

    return shown


def handle_errors(fn: F) -> F:
    """Wrap a command: DriftkitError -> message + exit 1; other exceptions -> exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not getattr(sys.unraisablehook, "_driftkit", False):
            sys.unraisablehook = _quiet_hdf5_unraisable(sys.unraisablehook)
            sys.unraisablehook._driftkit = True  # type: ignore[attr-defined]
        warnings.simplefilter("default", DriftkitDeprecation)  # shown once per place, even outside __main__
        if not getattr(warnings.showwarning, "_driftkit", False):
            warnings.showwarning = _deprecation_notes(warnings.showwarning)
            warnings.showwarning._driftkit = True  # type: ignore[attr-defined]
        try:
            with cli_interface():  # messages spell options as flags (driftkit.errors.opt)
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except DriftkitError as exc:
            if debug_enabled():
                err_console.print_exception()
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False
            )  # emoji=False: "sample:x: use" must not print an emoji for ":x:"
            if getattr(exc, "end_process", False):
                # See StorageError: HDF5 objects left by a failed write can crash the interpreter
                # when they are freed at exit, turning a clear exit 1 into a segfault.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: completed work is kept; rerun with --resume to continue.")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug, not the user's fault
            if debug_enabled():
                err_console.print_exception()
            else:
                err_console.print(
                    f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                    f"This is a bug in driftkit. Rerun with --debug for the traceback and report it.",
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def progress_bar(**kwargs: Any) -> Any:
    """Progress on stderr (so --json stdout stays clean): a rich bar on a terminal, timed plain lines
    on a pipe or in CI (see :mod:`driftkit.cli.progress`)."""
    from driftkit.cli.progress import progress_bar as make

    return make(err_console, **kwargs)


# -- --json PATH on every verb ------------------------------------------------------------------------
JSON_HELP = (
    "Write the result as JSON to PATH; '-' (or a bare --json as the last option) prints it to stdout "
    "instead of the terminal output."
)


def json_option(what: str = "the result") -> Any:
    """The one ``--json`` option every verb takes: ``--json PATH`` writes ``what`` there, ``--json -``
    prints it to stdout; a bare ``--json`` (followed by nothing or another option) means stdout too, so
    scripts written when some verbs had a ``--json`` flag keep working."""
    return typer.Option(
        None,
        "--json",
        metavar="PATH",
        help=f"Write {what} as JSON to PATH; '-' (or a bare --json as the last option) prints it "
        f"to stdout instead of the terminal output.",
    )


def bare_json_to_stdout(args: list[str]) -> list[str]:
    """``--json`` with no value (last, or followed by another option) means ``--json -``."""
    out: list[str] = []
    for i, a in enumerate(args):
        out.append(a)
        if a == "--json" and (i + 1 == len(args) or (args[i + 1].startswith("-") and args[i + 1] != "-")):
            out.append("-")
    return out


class DriftkitCommand(typer.core.TyperCommand):
    """Every verb's command class (set in ``driftkit.cli.main``): reads a bare ``--json`` as stdout."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, bare_json_to_stdout(list(args)))


def emit_json(dest: str | None, text: str) -> bool:
    """Send JSON ``text`` where ``--json`` says; True when it went to stdout (the caller then prints
    nothing else there, so the output parses).

    Refuses to replace an existing file that is not ``.json``: ``driftkit inspect --json x.h5`` would
    otherwise read ``x.h5`` as the JSON destination and overwrite the capture.
    """
    from pathlib import Path

    from driftkit.atomic import atomic_write

    if dest is None:
        return False
    if not text.endswith("\n"):
        text += "\n"
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    p = Path(dest)
    if p.exists() and p.suffix.lower() not in (".json", ".jsonl"):
        raise DriftkitError(
            f"--json {p} names an existing file that is not .json; refusing to overwrite it. Give a "
            f"new .json path, or '--json -' for stdout (put a bare --json last, after the arguments)."
        )
    atomic_write(p, text)
    err_console.print(f"wrote {p}", highlight=False)
    return False
