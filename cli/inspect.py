"""``driftkit inspect``: what a capture file holds, at a glance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from driftkit.cli.common import console, emit_json, handle_errors, json_option


def describe(path: Path) -> dict:
    """A JSON-able description of a capture file (used by ``inspect --json`` and the table); long
    because it gathers every field ``inspect`` shows, one line each."""
    import h5py

    from driftkit.capturing.lock import busy_message, holder_of
    from driftkit.errors import DriftkitError
    from driftkit.store.reader import CaptureReader

    try:
        reader = CaptureReader(path, allow_incomplete=True)
    except DriftkitError as exc:
        holder = holder_of(path)  # HDF5 refuses a file open for writing elsewhere; say who writes it
        if holder is not None:
            busy = busy_message(path, holder).split(". Wait")[0]
            raise DriftkitError(f"{busy}; inspect it once that capture has finished.") from exc
        raise
    with reader as r:
        arrays = []

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and not name.startswith("samples/"):
                stored = obj.attrs.get("dtype", str(obj.dtype))
                arrays.append(
                    {
                        "path": name,
                        "shape": list(obj.shape),
                        "dtype": stored if isinstance(stored, str) else stored.decode(),
                        "compression": obj.compression or "none",
                        "bytes": int(obj.id.get_storage_size()),
                    }
                )

        r.h5.visititems(visit)
        # visititems does not follow external links: list arrays kept in a shared file too
        for name in ("final/unembed", "final/unembed_bias"):
            link = r.h5.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                ds = r.h5[name] if r.has(name) else None
                arrays.append(
                    {
                        "path": name,
                        "shape": list(ds.shape) if ds is not None else [],
                        "dtype": str(ds.attrs.get("dtype", ds.dtype)) if ds is not None else "?",
                        "compression": f"shared: {link.filename}" + ("" if ds is not None else " (missing)"),
                        "bytes": 0,
                    }
                )
        domains: dict[str, int] = {}
        for d in r.domains:
            domains[str(d)] = domains.get(str(d), 0) + 1
        cfg = r.config
        return {
            "path": str(path),
            "schema": r.attrs.get("schema"),
            "complete": r.complete,
            "model": r.model,
            "created": r.attrs.get("created"),
            "driftkit_version": r.attrs.get("driftkit_version"),
            "dtype": r.attrs.get("dtype"),
            "device": r.attrs.get("device"),
            "weights_sha256": r.attrs.get("weights_sha256"),
            "tokenizer_sha256": r.attrs.get("tokenizer_sha256"),
            "store": r.store,  # layer sites: tokens | pooled | sample:K (capture --store)
            "samples": r.n_samples,
            "samples_done": int(r.done.sum()),
            "tokens": r.n_tokens,
            "prompt_tokens": int(r.prompt_len.sum()),
            "domains": domains,
            "sites": r.sites(),
            "arrays": arrays,
            "bytes_on_disk": path.stat().st_size,
            "config": {
                k: cfg.get(k)
                for k in (
                    "prompts",
                    "tokens_from",
                    "probes",
                    "layers",
                    "chat",
                    "generate",
                    "max_new_tokens",
                    "storage_dtype",
                    "compression",
                )
            },
        }


def _verify(path: Path, json_out: str | None) -> None:
    """``inspect --verify``: the same check the capture runs before it sets ``complete``."""
    from driftkit.capturing.lock import busy_message, holder_of
    from driftkit.errors import DriftkitError
    from driftkit.store.reader import CaptureReader
    from driftkit.store.verify import verify_file

    holder = holder_of(path)
    if holder is not None:
        busy = busy_message(path, holder).split(". Wait")[0]
        raise DriftkitError(f"{busy}; verify it once that capture has finished.")
    with CaptureReader(path, allow_incomplete=True) as r:
        check = verify_file(r.h5)
        flagged = r.complete
    to_stdout = emit_json(
        json_out,
        json.dumps(
            {
                "path": str(path),
                "verified": check.ok,
                "complete_attr": flagged,
                "problems": check.problems,
                "checked": check.checked,
            },
            indent=2,
        ),
    )
    if check.ok and not to_stdout:
        console.print(check.message(path), highlight=False, soft_wrap=True)
    if not check.ok:
        if to_stdout:
            raise typer.Exit(1)
        raise DriftkitError(
            f"{check.message(path)} Finish it with 'driftkit capture ... --resume --out {path}' "
            f"(with the settings it was made with), or capture it again with --overwrite."
        )


def register(app: typer.Typer) -> None:
    """Register the verb (long because it holds the command and its table, one row per field)."""

    @app.command(
        "inspect",
        epilog="Examples:\n\n  driftkit inspect base.h5\n\n  driftkit inspect base.h5 --json\n\n"
        "  driftkit inspect --verify base.h5",
    )
    @handle_errors
    def inspect_cmd(
        path: Path = typer.Argument(..., help="Capture file."),
        json_out: str | None = json_option("the description (or with --verify, the check)"),
        verify: bool = typer.Option(
            False,
            "--verify",
            help="Check that every sample of every per-token dataset was "
            "written: exit 0 'verified', or exit 1 naming what is missing.",
        ),
    ) -> None:
        """Show a capture's model, settings, sites, shapes, token counts, size on disk and completeness."""
        from rich.table import Table

        if verify:
            _verify(path, json_out)
            return

        d = describe(path)
        if emit_json(json_out, json.dumps(d, indent=2, default=str)):
            return
        head = Table(title=f"{path}", show_header=False, title_justify="left")
        head.add_column(style="bold cyan")
        head.add_column()
        status = (
            "[green]complete[/]"
            if d["complete"]
            else f"[red]INCOMPLETE[/] ({d['samples_done']}/{d['samples']} samples; finish with --resume)"
        )
        rows = [
            ("status", status),
            ("model", str(d["model"])),
            ("created", f"{d['created']} (driftkit {d['driftkit_version']})"),
            ("dtype / device", f"{d['dtype']} on {d['device']}"),
            ("samples", f"{d['samples']}  ({', '.join(f'{k}: {v}' for k, v in d['domains'].items())})"),
            ("tokens", f"{d['tokens']}  (prompt {d['prompt_tokens']}, response {d['tokens'] - d['prompt_tokens']})"),
            ("sites", f"{len(d['sites'])}: {', '.join(d['sites'][:6])}{' …' if len(d['sites']) > 6 else ''}"),
            (
                "size on disk",
                f"{d['bytes_on_disk'] / 1e6:.1f} MB ({d['bytes_on_disk'] / max(d['tokens'], 1) / 1e3:.1f} kB/token)",
            ),
            ("weights sha256", str(d["weights_sha256"])[:16] or "-"),
            ("tokenizer sha256", str(d["tokenizer_sha256"])[:16]),
        ]
        rows += [(f"config.{k}", str(v)) for k, v in d["config"].items() if v not in (None, False)]
        for k, v in rows:
            head.add_row(k, v)
        console.print(head)
        arr = Table(title="arrays", title_justify="left")
        for c in ("path", "shape", "dtype", "compression", "MB"):
            arr.add_column(c, justify="right" if c == "MB" else "left")
        # Every array, in natural order (residual.2 before residual.10): a capture's table is its inventory.
        for a in sorted(
            d["arrays"], key=lambda a: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", a["path"])]
        ):
            arr.add_row(
                a["path"], "×".join(map(str, a["shape"])), a["dtype"], a["compression"], f"{a['bytes'] / 1e6:.2f}"
            )
        console.print(arr)
