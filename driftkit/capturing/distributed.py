"""Capture across processes on torch.distributed: one shard per rank, stitched into one capture.

Two ways in, one code path (:func:`run_rank`):

- ``driftkit capture ... --nproc N`` (or :func:`capture_sharded` with ``nproc=N``) starts N local
  workers through torch.distributed's own launcher (``torch.distributed.launcher.api.elastic_launch``,
  the engine behind ``torchrun --standalone``) and waits for them;
- ``torchrun --nproc-per-node N -m driftkit.cli capture ...`` (also multi-node) starts the workers
  itself; each finds its place in the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables torchrun sets.

Each rank captures a contiguous share of the samples (balanced by token budget: prompt tokens plus
the response budget) into ``OUT.shards/rank-RRRRR-of-WWWWW.h5`` with the ordinary engine, so resume,
verification and the output lock work per shard unchanged. The ranks then exchange their outcome
(a gloo group on CPU, nccl on GPU); when every shard is complete, rank 0 writes ``OUT``, a small file
of HDF5 virtual datasets over the shards (:mod:`driftkit.store.stitch`). A rank that fails still
reaches the exchange, so the others finish their shards (resumable with ``--resume``) and the run
fails with a message naming the rank.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from driftkit.capturing.config import CaptureConfig
from driftkit.errors import DriftkitError, cli_interface, interface, opt
from driftkit.store.stitch import shard_path, stitch

#: how long a rank that finished its share waits for the slowest one at the outcome exchange (the
#: collective timeout: torch's default, 10-30 minutes, is shorter than a large share's capture)
EXCHANGE_TIMEOUT = timedelta(hours=24)
#: test hook: the rank named here raises after its first captured batch (exercises fail + resume)
FAIL_RANK_ENV = "DRIFTKIT_TEST_FAIL_RANK"


def dist_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when this process is one of several torch.distributed workers
    (torchrun or :func:`launch` set these variables), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def share_range(budgets: Sequence[int], rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``rank``'s contiguous share of samples with these token ``budgets``.

    A sample goes to the rank whose slice of the cumulative token budget holds its midpoint, so
    shares are contiguous (the stitched file keeps the one-process sample order) and near equal in
    tokens, which is what a forward pass costs. Every rank gets at least one sample. Integer
    arithmetic only, so every rank and every rerun computes the same split.
    """
    n = len(budgets)
    if n < world:
        raise DriftkitError(
            f"{n} sample(s) cannot be shared by {world} processes; use {opt('nproc', str(max(n, 1)))} or fewer."
        )
    b = np.asarray(budgets, dtype=np.int64)
    mid2 = 2 * np.cumsum(b) - b  # twice each sample's midpoint on the cumulative budget axis
    total = int(b.sum())
    starts = [int(np.searchsorted(mid2 * world, 2 * total * r, side="left")) for r in range(world)] + [n]
    for r in range(1, world):  # at least one sample per rank, whatever the lengths
        starts[r] = min(max(starts[r], starts[r - 1] + 1), n - (world - r))
    return starts[rank], starts[rank + 1]


def take_share(shard: Sequence[int], budgets: Sequence[int], *columns: list) -> tuple[list, ...]:
    """``columns`` (per-sample lists) cut to the share of ``shard = [rank, world]`` (see :func:`share_range`)."""
    lo, hi = share_range(budgets, int(shard[0]), int(shard[1]))
    return tuple(c[lo:hi] for c in columns)


def shard_config(cfg: CaptureConfig, rank: int, world: int, local_rank: int) -> CaptureConfig:
    """``cfg`` for one rank: its shard file, its share, its own GPU when there is one."""
    import torch

    device = cfg.device
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        device = f"cuda:{local_rank}"
    return dataclasses.replace(cfg, out=shard_path(cfg.out, rank, world), shard=[rank, world], device=device)


def _set_threads(local_world: int) -> None:
    """Share the machine's cores between the local ranks (torchrun would give each one thread)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // max(1, local_world)))


def _fail_hook(rank: int) -> Any:
    """The :data:`FAIL_RANK_ENV` progress callback: raise once the first batch was handed to the writer."""
    if os.environ.get(FAIL_RANK_ENV) != str(rank):
        return None
    calls = [0]

    def progress(phase: str, done: float, total: float) -> None:
        if phase == "capture":
            calls[0] += 1
            if calls[0] > 1:
                raise RuntimeError(f"test failure of rank {rank} ({FAIL_RANK_ENV})")

    return progress


def run_rank(cfg: CaptureConfig, progress: Any = None) -> Path | None:
    """This process's part of a sharded capture (under torchrun or :func:`launch`).

    Captures this rank's shard, exchanges outcomes with every rank, and on rank 0 stitches ``cfg.out``.
    Returns ``cfg.out`` on rank 0 and None elsewhere; raises DriftkitError on every rank when any rank
    failed (naming it), after the other shards were finished.
    """
    import torch
    import torch.distributed as dist

    from driftkit.capturing.engine import CaptureEngine

    env = dist_env()
    if env is None:
        raise DriftkitError("run_rank needs torch.distributed's RANK and WORLD_SIZE variables (torchrun sets them).")
    rank, world, local_rank = env
    _set_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    gpu = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    if gpu:
        torch.cuda.set_device(local_rank)
    own_pg = not dist.is_initialized()
    if own_pg:
        dist.init_process_group("nccl" if gpu else "gloo", timeout=EXCHANGE_TIMEOUT)
    try:
        error: str | None = None
        try:
            if rank == 0 and cfg.overwrite:  # the old stitched file would point at shards about to be replaced
                Path(cfg.out).unlink(missing_ok=True)
            hook = _fail_hook(rank)
            CaptureEngine(shard_config(cfg, rank, world, local_rank), progress=hook or progress).run()
        except Exception as exc:  # noqa: BLE001 - reported to every rank below, then raised
            error = str(exc) if isinstance(exc, DriftkitError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, DriftkitError):  # an internal error: its traceback, on this rank's stderr
                traceback.print_exc()
        outcomes: list[Any] = [None] * world
        dist.all_gather_object(outcomes, error)
        failed = {r: e for r, e in enumerate(outcomes) if e is not None}
        if failed:
            by_error: dict[str, list[int]] = {}  # the same error on every rank is shown once
            for r, e in sorted(failed.items()):
                by_error.setdefault(e.strip(), []).append(r)
            shown = "; ".join(f"rank {', '.join(map(str, rs))}: {e}" for e, rs in by_error.items())
            ranks = ", ".join(str(r) for r in sorted(failed))
            raise DriftkitError(
                f"The capture failed on rank {ranks} of {world}. {shown} The other shards in "
                f"{shard_path(cfg.out, 0, world).parent} are kept: fix the cause and rerun the same command with "
                f"{opt('resume')} to capture only what is missing."
            )
        if rank != 0:
            return None
        return stitch(cfg.out, [shard_path(cfg.out, r, world) for r in range(world)])
    finally:
        if own_pg:
            dist.destroy_process_group()


def _worker(cfg: CaptureConfig, iface: str) -> dict[str, Any]:
    """Entry point of each process started by :func:`launch`: outcome as a plain dict (never raises a
    DriftkitError, so the launcher's return value, not a child's traceback, carries the message).
    ``iface``: the caller's interface, so messages spell options as flags under the CLI."""
    try:
        with cli_interface() if iface == "cli" else nullcontext():
            out = run_rank(cfg)
    except DriftkitError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "out": str(out) if out else None}


def launch(cfg: CaptureConfig, nproc: int) -> Path:
    """Run :func:`run_rank` in ``nproc`` local processes through torch.distributed's elastic launcher
    (a standalone c10d rendezvous on localhost, no restarts) and return the stitched capture."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    conf = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        start_method="spawn",
        monitor_interval=0.2,
    )
    try:
        results = elastic_launch(conf, _worker)(cfg, interface())
    except ChildFailedError as exc:
        ranks = ", ".join(str(r) for r in sorted(exc.failures))
        why = "; ".join(
            f"rank {r}: exit code {f.exitcode}" + (f" ({f.message})" if f.message else "")
            for r, f in sorted(exc.failures.items())
        )
        raise DriftkitError(
            f"The capture failed on rank {ranks} of {nproc}: the process died ({why}). The other shards in "
            f"{shard_path(cfg.out, 0, nproc).parent} are kept: rerun the same command with {opt('resume')} to "
            "capture only what is missing."
        ) from None
    errors = [r["error"] for _, r in sorted(results.items()) if not r["ok"]]
    if errors:
        raise DriftkitError(errors[0])
    return Path(cfg.out)


def _precheck(cfg: CaptureConfig, nproc: int) -> None:
    """What the parent can refuse before starting ``nproc`` processes that would each load the model and
    fail the same way: a bad ``--store`` or ``--backend``, and fewer samples than processes (counted
    from the prompt file or the ``--tokens-from`` capture, without a tokenizer)."""
    from driftkit.capturing.engine import _check_backend
    from driftkit.capturing.pooling import parse_store
    from driftkit.prompts import load_prompts
    from driftkit.store.reader import CaptureReader

    parse_store(cfg.store)
    _check_backend(cfg)
    if cfg.tokens_from:
        with CaptureReader(cfg.tokens_from) as r:
            n = r.n_samples
    elif cfg.prompts is not None:
        n = len(load_prompts(cfg.prompts, limit=cfg.limit, seed=cfg.prompt_seed))
    else:
        return  # the engine names the missing --prompts
    share_range([1] * n, 0, nproc)  # raises the one-paragraph "cannot be shared" error when n < nproc


def capture_sharded(cfg: CaptureConfig, nproc: int = 1, progress: Any = None) -> Path | None:
    """A capture over several processes: under torchrun this process's rank (see :func:`run_rank`),
    else ``nproc`` local processes (:func:`launch`). Returns ``cfg.out`` (None on ranks other than 0)."""
    out = Path(cfg.out)
    env = dist_env()
    if env is not None:
        if nproc > 1:
            raise DriftkitError(
                f"{opt('nproc', str(nproc))} was given inside a torchrun job of {env[1]} processes; torchrun already "
                "started the workers, so drop --nproc (or drop torchrun)."
            )
        return run_rank(cfg, progress if env[0] == 0 else None)
    if nproc < 1:
        raise DriftkitError(f"{opt('nproc', str(nproc))} must be at least 1.")
    if nproc == 1:
        from driftkit.capturing.engine import CaptureEngine

        return CaptureEngine(cfg, progress=progress).run()
    if out.is_dir():
        raise DriftkitError(f"{opt('out', str(out))} is a folder; give a file name like {out / 'capture.h5'}.")
    _precheck(cfg, nproc)
    there = [p for p in [out, *(shard_path(out, r, nproc) for r in range(nproc))] if p.exists()]
    if there and not (cfg.overwrite or cfg.resume):
        raise DriftkitError(
            f"{there[0]} already exists. Pass {opt('overwrite')} to replace it, or {opt('resume')} to continue an "
            "interrupted capture."
        )
    return launch(cfg, nproc)
