"""The one importer of user code given on a command line: ``path/to/file.py:Name`` or ``package.module:Name``.

Why one: plugin classes (``--probe``, ``--analysis``, ``driftkit train my.py:MyTrainer``) and plain
functions (the RL trainer's ``extra_rewards``) are named the same way, and users should get the same
rules and messages for both:

- a target ending in ``.py`` or holding a path separator is a file, relative to the current folder or
  absolute (``~`` expanded); a relative path that does not exist there is also looked up in the
  driftkit source tree, so the documented ``probes/examples/attn_head.py:AttnHeadProbe`` works from
  any folder;
- anything else is an importable module (``driftkit.probes.examples.attn_head:AttnHeadProbe``);
- a file is imported once per (path, modification time): importing it again returns the same
  objects, so a class loaded twice is still one class.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from driftkit.errors import DriftkitError

_FILE_MODULES: dict[tuple[str, int], Any] = {}


def is_file_target(target: str) -> bool:
    """Whether ``target`` (the part before ``:``) names a file rather than a module."""
    return target.endswith(".py") or "/" in target or "\\" in target


def _find_file(target: str) -> Path | None:
    path = Path(target).expanduser()
    if path.is_file():
        return path.resolve()
    parts = path.parts
    if not path.is_absolute() and len(parts) > 1 and parts[0] in ("probes", "plugins"):
        # ``probes/...`` and ``plugins/...`` are folders of the driftkit source tree installed as
        # driftkit.probes / driftkit.plugins: the documented paths resolve from any folder.
        found = importlib.util.find_spec(f"driftkit.{parts[0]}")
        for loc in (found.submodule_search_locations or []) if found is not None else []:
            candidate = Path(loc, *parts[1:])
            if candidate.is_file():
                return candidate.resolve()
    return None


def import_file(target: str, what: str) -> Any:
    """The module of Python file ``target`` (imported once per path and modification time)."""
    path = _find_file(target)
    if path is None:
        raise DriftkitError(
            f"The {what} file {target} does not exist (looked in {Path.cwd()}). Give an existing Python file as "
            f"'path/to/file.py:Name' (relative to the current folder, or absolute), or an importable module as "
            f"'package.module:Name'."
        )
    key = (str(path), path.stat().st_mtime_ns)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    mod_name = f"driftkit_user_{path.stem}_{abs(hash(key))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise DriftkitError(f"Cannot import {path} as a Python module; check that it is a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user code: report, don't crash with a traceback
        sys.modules.pop(mod_name, None)
        raise DriftkitError(f"Importing the {what} file {path} failed: {exc!r}. Fix the file and retry.") from exc
    _FILE_MODULES[key] = module
    return module


def import_object(spec: str, what: str = "plugin") -> Any:
    """The object ``Name`` of ``path/to/file.py:Name`` or ``package.module:Name``.

    ``what`` words the messages ("analysis plugin", "reward"). Raises :class:`DriftkitError`
    naming what is wrong (no colon, missing file, failing import, missing name with the names the
    module does define).
    """
    target, sep, attr = spec.strip().rpartition(":")
    if not sep or not target or not attr or not attr.isidentifier():
        raise DriftkitError(f"Cannot read the {what} {spec!r}: write 'path/to/file.py:Name' or 'package.module:Name'.")
    if is_file_target(target):
        module = import_file(target, what)
        where = target
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise DriftkitError(
                f"Cannot import the module {target!r} of {what} {spec!r}: {exc}. Give an importable module "
                f"('package.module:Name', installed or on PYTHONPATH) or a file ('path/to/file.py:Name')."
            ) from exc
        except Exception as exc:  # user code failing at import time
            raise DriftkitError(f"Importing the module {target!r} of {what} {spec!r} failed: {exc!r}.") from exc
        where = target
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise DriftkitError(f"{where} has no {attr!r}. It defines: {', '.join(names) or 'nothing'}.")
    return getattr(module, attr)
