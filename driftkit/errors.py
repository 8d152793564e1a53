"""Error types shared by the whole tool.

Why a dedicated type: the CLI turns a :class:`DriftkitError` into a one-paragraph message and exit
code 1 (the user can fix it), while any other exception is a bug and exits 2 with a pointer to
``--debug``. Library code raises ``DriftkitError`` whenever the cause is the user's input.
"""
from __future__ import annotations


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
