"""One option system for every plugin kind (probe, analysis, trainer, benchmark).

Why one: options reach a plugin from three places (Python keywords, ``--opt``/``--probe-opt``/``-o``
strings on the command line, TOML values in an experiment file) and a user should meet the same
types, the same error messages and the same listing (``driftkit plugins NAME``) whatever the kind.
The contract follows scikit-learn's: the constructor's keyword arguments *are* the declared options,
nothing else is accepted, and every declared option has a default, so ``Plugin()`` always works.

A plugin declares ``options = {"name": Option(default, "help", type=..., choices=...)}``; a plain
``options = {"name": default}`` still works (an :class:`Option` without help). Declarations are
merged down the class hierarchy, so a subclass sees its parents' options (the trainer base options
``steps``/``seed``/``save_steps``, the benchmark base options ``seed``/``max_new_tokens``/...).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from driftkit.errors import DriftkitError

#: the value types an option can have (what a string from the command line can be turned into)
TYPES: tuple[type, ...] = (str, int, float, bool, dict, list)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_HINT = {
    bool: "true/false, yes/no, on/off or 1/0",
    int: "a whole number",
    float: "a number",
    str: "text",
    dict: "name=value pairs separated by commas",
    list: "comma-separated values",
}


@dataclass(frozen=True)
class Option:
    """One plugin option: its default, a help text, its type and (optionally) the allowed values.

    ``type`` is taken from the default when not given (a ``None`` default means ``str`` unless a
    type is given); it must be one of :data:`TYPES`. ``name`` is filled in when the option is bound
    to a plugin class (the key of its ``options`` dict).
    """

    default: Any = None
    help: str = ""
    type: type | None = None
    choices: tuple[Any, ...] | None = None
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Mistakes here are the plugin author's, found when the class is defined: plain TypeErrors.
        if not isinstance(self.help, str):
            raise TypeError(
                f"Option(default, help, type=None, choices=None): help must be a str, got {self.help!r}. "
                f"The older trainer form Option(name, default, help) is now Option.named(name, default, help)."
            )
        if self.kind not in TYPES:
            raise TypeError(
                f"Option type {self.kind!r} is not supported; use one of {', '.join(t.__name__ for t in TYPES)}."
            )
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))

    @classmethod
    def named(
        cls, name: str, default: Any, help: str = "", type: type | None = None, choices: tuple[Any, ...] | None = None
    ) -> Option:
        """An option that carries its own name (the trainers' former ``option_specs`` form)."""
        return cls(default, help, type, choices, name=name)

    @property
    def kind(self) -> type:
        """The option's value type."""
        if self.type is not None:
            return self.type
        if self.default is None:
            return str
        return type(self.default)

    # -- values ------------------------------------------------------------------------------------
    def coerce(self, value: Any, owner: str = "plugin") -> Any:
        """``value`` (a Python value or a string from the CLI/TOML) as this option's type.

        ``owner`` names the plugin in messages (``"analysis 'cka'"``). ``None`` and, for an option
        whose default is ``None``, the empty string mean "no value". Raises :class:`DriftkitError`
        naming the plugin, the option, the bad value and what is expected.
        """
        if value is None or (isinstance(value, str) and value == "" and self.default is None):
            return None
        kind = self.kind
        try:
            out = _convert(value, kind)
        except (TypeError, ValueError):
            raise DriftkitError(
                f"Option {self.name!r} of {owner} takes {_article(kind.__name__)} ({_HINT[kind]}), got {value!r}."
                f"{' ' + self.help if self.help else ''}"
            ) from None
        if self.choices is not None and out not in self.choices:
            near = difflib.get_close_matches(str(out), [str(c) for c in self.choices], n=1)
            raise DriftkitError(
                f"Option {self.name!r} of {owner} must be one of {', '.join(map(str, self.choices))}; got {value!r}"
                f"{f' (did you mean {near[0]!r}?)' if near else ''}."
            )
        return out

    def format(self, value: Any) -> str:
        """``value`` written as the string the CLI would take (``coerce(format(v)) == v``)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, Mapping):
            return ",".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return repr(value) if isinstance(value, float) else str(value)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (what ``driftkit plugins NAME --json`` prints)."""
        return {
            "name": self.name,
            "type": self.kind.__name__,
            "default": _jsonable(self.default),
            "choices": None if self.choices is None else [_jsonable(c) for c in self.choices],
            "help": self.help,
        }


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _convert(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(value)
            return int(value)
        return int(str(value).strip()) if isinstance(value, str) else int(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value.strip()) if isinstance(value, str) else float(value)
    if kind is str:
        if isinstance(value, (list, tuple)):  # e.g. layers=[0, 4] -> "0,4"
            return ",".join(map(str, value))
        if isinstance(value, (Mapping, bytes)):
            raise TypeError(value)
        return str(value)
    if kind is dict:
        return parse_mapping(value) if isinstance(value, str) else dict(value)
    if kind is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    raise TypeError(kind)


def parse_mapping(text: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` (dict-typed options such as the trainers' ``columns``)."""
    from driftkit.parsing import parse_kv

    try:
        return parse_kv(text, what="mapping", example="name=value,name=value")
    except DriftkitError as exc:  # Option.coerce turns ValueError into its own message naming the option
        raise ValueError(str(exc)) from None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


# -- tables of options ---------------------------------------------------------------------------
def normalize(declared: Mapping[str, Any] | None) -> dict[str, Option]:
    """A declared ``options`` mapping as ``{name: Option}`` (plain defaults become help-less Options)."""
    out: dict[str, Option] = {}
    for key, value in dict(declared or {}).items():
        opt = value if isinstance(value, Option) else Option(value)
        out[key] = opt if opt.name == key else Option(opt.default, opt.help, opt.type, opt.choices, name=key)
    return out


def option_table(cls: type) -> dict[str, Option]:
    """The options of plugin class ``cls`` by name, its parents' included."""
    declared = getattr(cls, "options", None) or {}
    if isinstance(declared, Mapping) and all(isinstance(o, Option) and o.name == k for k, o in declared.items()):
        return dict(declared)
    return normalize(declared)


def owner_label(cls: type) -> str:
    """``"analysis 'cka'"``: how messages name a plugin."""
    return f"{getattr(cls, 'plugin_kind', 'plugin')} {getattr(cls, 'name', '') or cls.__name__!r}"


def resolve(cls: type, given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``cls``'s options overlaid with ``given`` (``None`` = not given), typed and checked.

    Names may use dashes for underscores (``--save-steps``). Unknown names are refused with the
    closest declared names as suggestions.
    """
    table = option_table(cls)
    owner = owner_label(cls)
    unknown = sorted(k for k in given if k.replace("-", "_") not in table)
    if unknown:
        hints = []
        for u in unknown:
            near = difflib.get_close_matches(u.replace("-", "_"), list(table), n=1)
            hints.append(f"{u!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        name = getattr(cls, "name", "") or cls.__name__
        raise DriftkitError(
            f"{owner[0].upper() + owner[1:]} has no option {', '.join(hints)}. Its options are: "
            f"{', '.join(table) or 'none'}. See 'driftkit plugins {name}' for their types and defaults."
        )
    out = {k: o.default for k, o in table.items()}
    for key, value in given.items():
        if value is not None:
            name = key.replace("-", "_")
            out[name] = table[name].coerce(value, owner)
    return out


class Configurable:
    """What the four plugin base classes share: the ``options`` table and a constructor that
    resolves keyword options against it into ``self.opts``.

    ``__init_subclass__`` binds each subclass's declaration once (names filled in, parents'
    options merged in), so ``cls.options`` is always ``{name: Option}`` after the class exists.
    """

    #: the plugin kind, for messages (set by each base class)
    plugin_kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("options")
        legacy = cls.__dict__.get("option_specs")  # trainers' former form: a tuple of named Options
        if own is None and not legacy:
            return
        merged: dict[str, Option] = {}
        for base in reversed(cls.__mro__[1:]):
            if isinstance(base.__dict__.get("options"), Mapping):
                merged.update(option_table(base))
        for opt in legacy or ():
            merged[opt.name] = opt
        merged.update(normalize(own))
        cls.options = merged

    def __init__(self, **options: Any) -> None:
        self.opts: dict[str, Any] = resolve(type(self), options)

    @classmethod
    def describe_options(cls) -> list[dict[str, Any]]:
        """Every option as a JSON-able dict (name, type, default, choices, help)."""
        return [o.describe() for o in option_table(cls).values()]
