"""Progress for long commands: a rich bar on a terminal, plain timed lines everywhere else.

Why two forms: a live bar redraws one line in place, which a pipe, a CI log or ``nohup`` turns into
nothing at all (rich disables itself off a terminal) and the user sees no sign of life for
minutes. Off a terminal, :class:`PlainProgress` prints one line per running task at least every
``interval`` seconds (from a heartbeat thread, so a slow step still shows it is alive), with items
done, the rate in the task's unit and an ETA, plus a final line when a task completes. Both expose
the subset of rich's ``Progress`` API the commands use (``add_task``, ``update``, ``advance``, a
context manager), so callers do not care which one they got.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console


@dataclass
class _Task:
    description: str
    total: float | None
    unit: str
    completed: float = 0.0
    start_completed: float = 0.0  # work already done when the task was added (a resume): not in the rate
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _rate(rate: float, unit: str) -> str:
    """``812.3 tokens/s``, or for slow work (training steps) ``12.4 s/step`` instead of ``0.1 steps/s``."""
    if rate <= 0:
        return f"– {unit}/s"
    if rate < 1:
        return f"{1 / rate:,.1f} s/{unit[:-1] if unit.endswith('s') else unit}"
    return f"{rate:,.1f} {unit}/s"


class PlainProgress:
    """Timed plain-text progress lines (see the module docstring)."""

    #: not a live display: callers that print their own lines on a pipe may check this like rich's
    disable = True

    def __init__(self, console: Console, interval: float = 10.0) -> None:
        self.console = console
        self.interval = interval
        self._tasks: dict[int, _Task] = {}
        self._last_print: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- rich-compatible API ---------------------------------------------------------------------
    def add_task(
        self, description: str, total: float | None = None, unit: str = "items", completed: float = 0.0, **fields: Any
    ) -> int:
        with self._lock:
            tid = len(self._tasks)
            self._tasks[tid] = _Task(description, total, unit, completed, completed, fields=dict(fields))
            self._last_print[tid] = time.perf_counter()
        return tid

    def update(
        self,
        task_id: int,
        *,
        completed: float | None = None,
        total: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        with self._lock:
            t = self._tasks[task_id]
            if total is not None:
                t.total = total
            if completed is not None:
                t.completed = completed
            if advance is not None:
                t.completed += advance
            if description is not None:
                t.description = description
            t.fields.update(fields)
            done = t.total is not None and t.completed >= t.total and not t.finished
            due = time.perf_counter() - self._last_print[task_id] >= self.interval
            if done:
                t.finished = True
            if done or due:
                self._emit(task_id, t)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def start(self) -> None:
        """Start the heartbeat (rich's ``Progress.start``)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._heartbeat, name="driftkit-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat (rich's ``Progress.stop``), e.g. before printing an error."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def __enter__(self) -> PlainProgress:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------
    def line(self, t: _Task) -> str:
        """One progress line: ``description done/total (pct) rate unit/s, ETA m:ss, elapsed m:ss info``."""
        elapsed = time.perf_counter() - t.started
        rate = (t.completed - t.start_completed) / elapsed if elapsed > 0 else 0.0
        if t.total:
            pct = 100.0 * t.completed / t.total
            eta = (t.total - t.completed) / rate if rate > 0 else None
            # whole items only: generation reports fractions (tokens of a batch), and 1.5 rounded read "2/2 (75%)"
            head = f"{t.description}: {math.floor(t.completed):,}/{t.total:,.0f} {t.unit} ({pct:.0f}%)"
            tail = f", ETA {_duration(eta)}" if eta is not None and not t.finished else ""
        else:
            head, tail = f"{t.description}: {math.floor(t.completed):,} {t.unit}", ""
        info = str(t.fields.get("info") or "")
        # no rate when nothing was timed: a task first seen already done (an analysis that reports once) has none
        shown = f", {_rate(rate, t.unit)}" if t.completed > t.start_completed else ""
        return f"{head}{shown}{tail}, elapsed {_duration(elapsed)}" + (f" {info}" if info else "")

    def _emit(self, task_id: int, t: _Task) -> None:
        self._last_print[task_id] = time.perf_counter()
        self.console.print(self.line(t), highlight=False, markup=False, soft_wrap=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            now = time.perf_counter()
            with self._lock:
                for tid, t in self._tasks.items():
                    if not t.finished and now - self._last_print[tid] >= self.interval:
                        self._emit(tid, t)


def progress_bar(console: Console, **kwargs: Any) -> Any:
    """A rich progress bar on a terminal (or with ``DRIFTKIT_PROGRESS=1``), :class:`PlainProgress`
    lines otherwise (``DRIFTKIT_PROGRESS=0`` silences both; ``DRIFTKIT_PROGRESS_INTERVAL`` sets the
    seconds between plain lines, default 10)."""
    mode = os.environ.get("DRIFTKIT_PROGRESS", "")
    live = mode == "1" or (mode == "" and sys.stderr.isatty())
    if not live and mode != "0":
        return PlainProgress(console, float(os.environ.get("DRIFTKIT_PROGRESS_INTERVAL", "10")))
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=mode == "0",
        **kwargs,
    )


def unit_of(phase: str) -> str:
    """What a progress phase reported by the engines counts: ``train ...`` steps, ``capture`` and
    ``... tokens`` tokens, ``generate`` samples, anything else items."""
    if phase.endswith(" tokens"):
        return "tokens"
    return {"train": "steps", "capture": "tokens", "generate": "samples"}.get(phase.split(" ")[0], "items")


def phase_callback(
    bar: Any, labels: Mapping[str, str] | None = None, unit: Callable[[str], str] = unit_of
) -> Callable[[str, float, float], None]:
    """The ``progress(phase, done, total)`` callback the engines take, drawing one task per phase on
    ``bar`` (either display). A task starts at the ``done`` of its first report, so work finished
    before (a resume) does not count in its rate."""
    tasks: dict[str, Any] = {}

    def progress(phase: str, done: float, total: float) -> None:
        if phase not in tasks:
            label = (labels or {}).get(phase, phase)
            tasks[phase] = bar.add_task(label, total=total, completed=done, info="", unit=unit(phase))
        bar.update(tasks[phase], completed=done, total=total)

    return progress
