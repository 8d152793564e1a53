"""``check_plugin(cls)``: the plugin contract as a test, for bundled and user plugins alike.

Why: in the spirit of scikit-learn's ``check_estimator``, one function states what every plugin of
every kind must do, and a plugin author runs the very checks driftkit runs on its own plugins
(``tests/test_plugin_contract.py`` runs it on every bundled plugin). The checks need no model and no
capture file, so they take milliseconds:

- the class derives from one of the four base classes and sets a ``name`` that is an identifier
  (it becomes a JSON key, an ``--opt name.key`` prefix and a CLI word) and a ``description``;
- its options are declared with :class:`driftkit.Option` (or as plain defaults): supported types,
  defaults of their own type and among the choices, help texts that are strings;
- it is constructible with its defaults, refuses an unknown option with a :class:`DriftkitError`,
  and every option's default (and each choice) survives being written as a CLI string and read
  back; its option values and descriptions are JSON-able (they go into files and ``--json``);
- kind by kind, the methods the engine calls are implemented: an analysis's ``run`` and ``check``,
  a probe's ``sites`` and ``outputs``, a trainer's ``train``, a benchmark's ``build_prompt`` and
  ``score`` (and a known ``domain``).

Every failure is collected, then reported at once.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from driftkit.errors import DriftkitError

__all__ = ["PluginCheckError", "check_plugin"]

#: methods each kind must implement itself (the base class's version only raises or is abstract)
REQUIRED: dict[str, tuple[str, ...]] = {
    "probe": ("sites",),
    "analysis": ("run",),
    "trainer": ("train",),
    "benchmark": ("build_prompt", "score"),
}
#: methods the engine calls on each kind (they may be inherited)
CALLED: dict[str, tuple[str, ...]] = {
    "probe": ("sites", "outputs", "finalize", "static", "check", "describe"),
    "analysis": ("requirements", "check", "run", "summary", "render", "figures"),
    "trainer": ("train", "check", "run"),
    "benchmark": ("build_prompt", "score", "aggregate", "load", "normalize", "item_id"),
}
_UNKNOWN = "no_such_option_for_check_plugin"


class PluginCheckError(DriftkitError, AssertionError):
    """A plugin breaks the contract; ``failures`` lists every broken rule (one line each).

    Both a :class:`DriftkitError` (the CLI prints it as a user error) and an ``AssertionError``
    (pytest shows it as a failed check).
    """

    def __init__(self, plugin: str, failures: list[str]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(f"Plugin {plugin} breaks the driftkit plugin contract ({len(failures)} problem(s)):\n{lines}")


def _label(cls: Any) -> str:
    if not isinstance(cls, type):
        return repr(cls)
    return f"{cls.__module__}.{cls.__qualname__} ({getattr(cls, 'name', '') or 'no name'})"


def check_plugin(cls: type) -> None:
    """Check that plugin class ``cls`` (probe, analysis, trainer or benchmark) meets the contract.

    Parameters
    ----------
    cls:
        The plugin class (not an instance), e.g. ``check_plugin(MyAnalysis)``.

    Returns
    -------
    None when every check passes. Raises :class:`PluginCheckError` (an ``AssertionError`` and a
    ``DriftkitError``) listing every failed check otherwise.
    """
    from driftkit.registry import GROUPS, _base_class

    failures: list[str] = []
    if not isinstance(cls, type):
        raise PluginCheckError(_label(cls), ["check_plugin takes the plugin class, not an instance or a name"])
    kind = next((k for k in GROUPS if issubclass(cls, _base_class(k))), None)
    if kind is None:
        raise PluginCheckError(
            _label(cls),
            ["it derives from none of driftkit.Probe, driftkit.Analysis, driftkit.Trainer, driftkit.Benchmark"],
        )
    base = _base_class(kind)
    failures += _check_identity(cls, base)
    table, opt_failures = _check_declarations(cls)
    failures += opt_failures
    failures += _check_methods(cls, kind, base)
    if not opt_failures:
        failures += _check_instances(cls, table)
    if failures:
        raise PluginCheckError(_label(cls), failures)


def _check_identity(cls: type, base: type) -> list[str]:
    out = []
    name = getattr(cls, "name", "")
    own_name = any("name" in c.__dict__ for c in cls.__mro__ if c is not base and issubclass(c, base))
    if not isinstance(name, str) or not name or not own_name:
        out.append(f"'name' is not set: give the class a short name (name = \"my_{base.__name__.lower()}\")")
    elif not name.isidentifier():
        out.append(f"name {name!r} is not a valid identifier (letters, digits, underscores; it is used as a key)")
    desc = getattr(cls, "description", "")
    if not isinstance(desc, str) or not desc.strip():
        out.append("'description' is empty: one line saying what the plugin does (shown by 'driftkit plugins')")
    return out


def _check_declarations(cls: type) -> tuple[dict[str, Any], list[str]]:
    from driftkit.registry.options import TYPES, Option, option_table

    out: list[str] = []
    declared = getattr(cls, "options", {})
    if not isinstance(declared, dict):
        return {}, [f"'options' must be a dict of name -> driftkit.Option (or default), not {type(declared).__name__}"]
    try:
        table = option_table(cls)
    except TypeError as exc:
        return {}, [f"an option declaration is invalid: {exc}"]
    for name, opt in table.items():
        if not isinstance(opt, Option):
            out.append(f"option {name!r} is not a driftkit.Option")
            continue
        if not name.isidentifier():
            out.append(f"option name {name!r} is not a valid identifier (it is a keyword argument)")
        if opt.kind not in TYPES:
            out.append(f"option {name!r} has unsupported type {opt.kind!r}")
        if not isinstance(opt.help, str):
            out.append(f"option {name!r}: help must be a string")
        if opt.choices is not None and not opt.choices:
            out.append(f"option {name!r} declares an empty list of choices")
            continue
        if opt.choices is not None and opt.default is not None and opt.default not in opt.choices:
            out.append(f"option {name!r}: default {opt.default!r} is not among its choices {list(opt.choices)}")
            continue
        if opt.default is not None:
            try:
                if opt.coerce(opt.default) != opt.default:
                    out.append(f"option {name!r}: default {opt.default!r} is not a {opt.kind.__name__}")
                    continue
            except DriftkitError as exc:
                out.append(f"option {name!r}: its own default is refused ({exc})")
                continue
        for value in [opt.default] + [c for c in (opt.choices or ()) if c != opt.default]:
            text = opt.format(value)
            try:
                back = opt.coerce(text)
            except DriftkitError as exc:
                out.append(f"option {name!r}: {value!r} written as {text!r} is refused when read back ({exc})")
                continue
            if back != value:
                out.append(f"option {name!r}: {value!r} written as {text!r} reads back as {back!r}")
    return table, out


def _check_methods(cls: type, kind: str, base: type) -> list[str]:
    out = []
    abstract = sorted(getattr(cls, "__abstractmethods__", ()) or ())
    if abstract:
        out.append(f"abstract method(s) not implemented: {', '.join(abstract)}")
    required = REQUIRED[kind]
    if kind == "analysis" and getattr(cls, "consumes", None):  # streaming hooks instead of run()
        required = ("finish", *(h for c, h in (("logits", "on_logits"), ("layers", "on_layer")) if c in cls.consumes))
    for meth in required:
        if meth in abstract:
            continue
        impl = getattr(cls, meth, None)
        if not callable(impl) or impl is getattr(base, meth, None):
            out.append(f"method {meth}() is not implemented (a {kind} must override it)")
    for meth in CALLED[kind]:
        if not callable(getattr(cls, meth, None)):
            out.append(f"method {meth}() is missing or not callable")
    if kind == "analysis" and "check" in cls.__dict__ and len(inspect.signature(cls.check).parameters) != 2:
        out.append("check(self, pair) must take exactly one argument besides self")
    if kind == "benchmark":
        from driftkit.registry.benchmark import DOMAINS

        if getattr(cls, "domain", None) not in DOMAINS:
            out.append(f"domain {getattr(cls, 'domain', None)!r} is not one of {', '.join(DOMAINS)}")
        fixture = getattr(cls, "fixture", None)
        if not getattr(cls, "dataset_id", "") and fixture is None:
            out.append("a benchmark without a dataset_id must ship its data as 'fixture' (a JSONL file)")
        if fixture is not None:
            from pathlib import Path

            if not Path(fixture).is_file():
                out.append(f"fixture {fixture} does not exist")
    return out


def _check_instances(cls: type, table: dict[str, Any]) -> list[str]:
    out: list[str] = []
    try:
        inst = cls()
    except Exception as exc:  # noqa: BLE001 - any failure is a contract failure
        return [f"cannot be constructed with its defaults: {type(exc).__name__}: {exc}"]
    opts = getattr(inst, "opts", None)
    if not isinstance(opts, dict) or set(opts) != set(table):
        out.append("after construction, self.opts must hold every declared option (call super().__init__(**options))")
    else:
        for name, opt in table.items():
            if opts[name] != opt.default:
                out.append(
                    f"option {name!r}: constructed with defaults, self.opts holds {opts[name]!r}, not {opt.default!r}"
                )
    try:
        cls(**{_UNKNOWN: 1})
        out.append("an unknown option was accepted silently (it must raise DriftkitError)")
    except DriftkitError as exc:
        if _UNKNOWN not in str(exc):
            out.append(f"the error for an unknown option does not name it: {exc}")
    except Exception as exc:  # noqa: BLE001
        out.append(f"an unknown option raised {type(exc).__name__}, not DriftkitError: {exc}")
    for name, opt in table.items():  # each value as a CLI string through the constructor
        for value in [opt.default] + [c for c in (opt.choices or ()) if c != opt.default]:
            text = opt.format(value)
            try:
                got = cls(**{name: text}).opts[name]
            except Exception as exc:  # noqa: BLE001
                out.append(f"option {name!r}={text!r} (a CLI string) is refused: {type(exc).__name__}: {exc}")
                continue
            if got != value:
                out.append(f"option {name!r}={text!r} (a CLI string) gives {got!r}, not {value!r}")
    for what, obj in (("option values", opts), ("option descriptions", cls.describe_options())):
        try:
            json.dumps(obj)
        except (TypeError, ValueError) as exc:
            out.append(f"{what} are not JSON-able ({exc}); they go into capture files and --json output")
    describe = getattr(inst, "describe", None)
    if callable(describe):
        try:
            json.dumps(describe())
        except Exception as exc:  # noqa: BLE001
            out.append(f"describe() is not JSON-able: {exc}")
    return out
