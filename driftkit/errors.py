"""Error types shared by the whole tool.

Why a dedicated type: the CLI turns a :class:`DriftkitError` into a one-paragraph message and exit
code 1 (the user can fix it), while any other exception is a bug and exits 2 with a pointer to
``--debug``. Library code raises ``DriftkitError`` whenever the cause is the user's input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class DriftkitError(Exception):
    """A problem with the user's input or environment, with the fix in the message.

    The message should name the problem and the fix in one paragraph, e.g.
    ``"Prompt file x.jsonl line 3 is not valid JSON (Expecting ',' ...). Fix the line or remove it."``
    """

    exit_code = 1


class DriftkitDeprecation(DeprecationWarning):
    """A spelling driftkit still accepts but will drop (e.g. the ``probes:`` data prefix); the CLI
    shows it as a one-line note, library users get an ordinary ``DeprecationWarning``."""


class IncompatibleCaptures(DriftkitError):
    """Two capture files cannot be compared (different samples, tokens, sites or incomplete)."""


class StorageError(DriftkitError):
    """Writing an output file failed (disk full, permission, I/O error).

    After such a failure HDF5 may still hold objects that cannot be flushed; freeing them later
    (at garbage collection or interpreter exit) can crash the process. The CLI therefore ends the
    process right after printing the message (completed samples were flushed before the failure);
    library users should treat the capture as failed and not keep using the same process for
    HDF5 writes to that file.
    """

    end_process = True


# -- naming the interface the user called ------------------------------------------------------------
# Why: the same check (say "the output exists") is reached from ``driftkit capture --out x.h5`` and from
# ``driftkit.capture(CaptureConfig(out="x.h5"))``. Its fix must be spelled the way that user can type it:
# ``--overwrite`` on the command line, ``overwrite=True`` in Python. The CLI's ``handle_errors`` marks
# the call as a CLI call; library code spells every option through :func:`opt`, so one mechanism
# covers every message (no per-message special cases).
# A process-wide depth count, not a ContextVar: messages are also built in worker threads (the capture
# writer's), which do not inherit the calling thread's context.
_CLI_DEPTH = [0]


def interface() -> str:
    """``"cli"`` inside a ``driftkit`` command, ``"python"`` otherwise."""
    return "cli" if _CLI_DEPTH[0] > 0 else "python"


@contextmanager
def cli_interface() -> Iterator[None]:
    """Within this block, :func:`opt` spells options as command-line flags."""
    _CLI_DEPTH[0] += 1
    try:
        yield
    finally:
        _CLI_DEPTH[0] -= 1


def opt(name: str, value: Any = True, flag: str | None = None) -> str:
    """An option as the user types it: ``opt("overwrite")`` is ``--overwrite`` in the CLI and
    ``overwrite=True`` in Python; ``opt("layers", "every:4")`` is ``--layers every:4`` or
    ``layers='every:4'``. ``value=None`` names the option alone (``--sigma`` / ``sigma=``).

    ``name`` is the Python parameter; the flag is derived (underscores become dashes) unless ``flag``
    gives it (for flags spelled differently from the parameter).
    """
    if interface() == "cli":
        f = flag or "--" + name.replace("_", "-")
        if value is None or value is True:
            return f
        if value is False:
            return "--no-" + f[2:]
        return f"{f} {value}"
    if value is None:
        return f"{name}="
    return f"{name}={value!r}"
