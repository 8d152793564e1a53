"""``driftkit plugins``: every probe, analysis, trainer and benchmark, and where it came from."""
from __future__ import annotations

import json

import typer

from driftkit.cli.common import console, handle_errors


def register(app: typer.Typer) -> None:
    @app.command("plugins", epilog="Examples:\n\n  driftkit plugins\n\n  driftkit plugins --kind probe --json")
    @handle_errors
    def plugins_cmd(
        kind: str = typer.Option(None, "--kind", help="probe, analysis, trainer or benchmark."),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """List plugins: bundled ones and those installed through entry points."""
        from rich.table import Table

        from driftkit import registry
        from driftkit.errors import DriftkitError

        if kind and kind not in registry.GROUPS:
            raise DriftkitError(f"Unknown plugin kind {kind!r}; use one of {', '.join(registry.GROUPS)}.")
        rows = []
        for info in registry.all_plugins():
            if kind and info.kind != kind:
                continue
            desc, opts = "", {}
            try:
                cls = registry.load(info.kind, info.name)
                desc = getattr(cls, "description", "") or (cls.__doc__ or "").strip().split("\n")[0]
                opts = dict(getattr(cls, "options", {}) or {})
            except Exception as exc:  # a broken third-party plugin must not hide the others
                desc = f"[red]cannot load: {exc}[/]"
            rows.append({"kind": info.kind, "name": info.name, "source": info.source, "target": info.target, "description": desc, "options": opts})
        if json_out:
            print(json.dumps(rows, indent=2, default=str))
            return
        t = Table(title="driftkit plugins", title_justify="left")
        for c in ("kind", "name", "source", "description", "options"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["kind"], r["name"], r["source"], r["description"], ", ".join(f"{k}={v}" for k, v in r["options"].items()))
        console.print(t)
        console.print("Plugins from a file: pass [bold]path/to/file.py:ClassName[/] wherever a plugin name is accepted.")
