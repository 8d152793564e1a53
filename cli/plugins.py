"""``driftkit plugins [NAME]``: every probe, analysis, trainer and benchmark, or one plugin in detail.

Why the detail view: options are the contract between a plugin and its users (``--opt``,
``--probe-opt``, ``-o``, TOML); ``driftkit plugins NAME`` shows each option's type, default, allowed
values and help, straight from the plugin's declaration (driftkit.Option), for bundled, installed
and file plugins alike.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from driftkit.cli.common import console, emit_json, handle_errors, json_option

EPILOG = (
    "Examples:\n\n"
    "  driftkit plugins\n\n"
    "  driftkit plugins --kind probe --json\n\n"
    "  driftkit plugins cka\n\n"
    "  driftkit plugins my_metric.py:MyAnalysis --json"
)


def _describe(cls: type, kind: str, source: str, target: str) -> dict[str, Any]:
    from driftkit.registry.options import option_table

    desc = getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]
    return {
        "kind": kind,
        "name": getattr(cls, "name", "") or cls.__name__,
        "source": source,
        "target": target,
        "description": desc,
        "options": {name: opt.describe() for name, opt in option_table(cls).items()},
    }


def _one(name: str, kind: str | None) -> dict[str, Any]:
    """The plugin ``name`` (registered name, file.py:Class or module:Class) of ``kind`` (any when None)."""
    from driftkit import registry
    from driftkit.errors import DriftkitError
    from driftkit.registry.imports import import_object, is_file_target

    if ":" in name:
        cls = import_object(name, "plugin")
        found = registry.kind_of(cls)
        if kind and found != kind:
            raise DriftkitError(f"{name} is a {found} plugin, not a {kind} plugin.")
        source = "file" if is_file_target(name.rpartition(":")[0]) else "module"
        return _describe(registry.load(found, name), found, source, name)
    kinds = [kind] if kind else list(registry.GROUPS)
    hits = [registry.available(k)[name] for k in kinds if name in registry.available(k)]
    if not hits:
        names = sorted({i.name for k in kinds for i in registry.available(k).values()})
        import difflib

        near = difflib.get_close_matches(name, names, n=1)
        raise DriftkitError(
            f"No {kind or 'plugin'} named {name!r}{f' (did you mean {near[0]!r}?)' if near else ''}. "
            f"Run 'driftkit plugins' to list them, or give a file as path/to/file.py:ClassName."
        )
    if len(hits) > 1:
        raise DriftkitError(
            f"{name!r} names a plugin of several kinds ({', '.join(h.kind for h in hits)}); pick one with --kind."
        )
    info = hits[0]
    return _describe(registry.load(info.kind, info.name), info.kind, info.source, info.target)


def _show_one(row: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[bold]{escape(row['name'])}[/] ({escape(row['kind'])}, {escape(row['source'])}: {escape(row['target'])})",
        highlight=False,
    )
    if row["description"]:
        console.print(escape(row["description"]), highlight=False)
    if not row["options"]:
        console.print("No options.")
        return
    t = Table(title="options", title_justify="left")
    for c in ("name", "type", "default", "choices", "help"):
        t.add_column(c, overflow="fold")
    for opt in row["options"].values():
        choices = ", ".join(map(str, opt["choices"])) if opt["choices"] else ""
        t.add_row(
            *(escape(str(v)) for v in (opt["name"], opt["type"], _fmt_default(opt["default"]), choices, opt["help"]))
        )
    console.print(t)


def _fmt_default(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, dict, list)) or value is None else str(value)


def register(app: typer.Typer) -> None:
    @app.command("plugins", epilog=EPILOG)
    @handle_errors
    def plugins_cmd(
        name: str | None = typer.Argument(
            None, help="Show one plugin: a name, path/to/file.py:Class or package.module:Class."
        ),
        kind: str = typer.Option(None, "--kind", help="probe, analysis, trainer or benchmark."),
        json_out: str | None = json_option("the plugin list (or the one plugin)"),
    ) -> None:
        """List plugins (bundled ones and those installed through entry points), or show one with its options."""
        from rich.markup import escape
        from rich.table import Table

        from driftkit import registry
        from driftkit.errors import DriftkitError

        if kind and kind not in registry.GROUPS:
            raise DriftkitError(f"Unknown plugin kind {kind!r}; use one of {', '.join(registry.GROUPS)}.")
        if name:
            row = _one(name, kind)
            if not emit_json(json_out, json.dumps(row, indent=2, default=str)):
                _show_one(row)
            return
        rows = []
        for info in registry.all_plugins():
            if kind and info.kind != kind:
                continue
            try:
                rows.append(_describe(registry.load(info.kind, info.name), info.kind, info.source, info.target))
            except Exception as exc:  # a broken third-party plugin must not hide the others
                rows.append(
                    {
                        "kind": info.kind,
                        "name": info.name,
                        "source": info.source,
                        "target": info.target,
                        "description": "",
                        "error": f"cannot load: {exc}",
                        "options": {},
                    }
                )
        if emit_json(json_out, json.dumps(rows, indent=2, default=str)):
            return
        t = Table(title="driftkit plugins", title_justify="left")
        for c in ("kind", "name", "source", "description", "options"):
            t.add_column(c)
        for r in rows:
            desc = f"[red]{escape(r['error'])}[/]" if r.get("error") else escape(r["description"])
            opts = ", ".join(f"{k}={_fmt_default(o['default'])}" for k, o in r["options"].items())
            t.add_row(escape(r["kind"]), escape(r["name"]), escape(r["source"]), desc, escape(opts))
        console.print(t)
        console.print(
            "Details and option help: driftkit plugins NAME. Plugins from a file or module: pass "
            "[bold]path/to/file.py:ClassName[/] or [bold]package.module:ClassName[/] wherever a plugin name is "
            "accepted.",
            highlight=False,
        )
