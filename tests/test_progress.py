"""Progress off a terminal: timed plain lines with done/total, rate and ETA (CI logs, pipes)."""

from __future__ import annotations

import io
import time

from rich.console import Console

from driftkit.cli.progress import PlainProgress, progress_bar


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, force_terminal=False), buf


def test_plain_lines_carry_count_rate_and_eta() -> None:
    con, buf = _console()
    with PlainProgress(con, interval=0.0) as p:
        t = p.add_task("capturing tokens", total=1000, unit="tokens", info="")
        p.update(t, completed=250)
        p.update(t, completed=1000)
    lines = buf.getvalue().strip().splitlines()
    assert (
        lines[0].startswith("capturing tokens: 250/1,000 tokens (25%)") and "tokens/s" in lines[0] and "ETA" in lines[0]
    )
    assert lines[-1].startswith("capturing tokens: 1,000/1,000 tokens (100%)") and "ETA" not in lines[-1]


def test_heartbeat_prints_while_nothing_moves() -> None:
    con, buf = _console()
    with PlainProgress(con, interval=0.05) as p:
        t = p.add_task("train sft", total=10, unit="steps", info="loss=1.2")
        p.update(t, completed=1)
        time.sleep(0.3)  # a slow step: the heartbeat still reports
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("train sft: 1/10 steps")]
    assert len(lines) >= 2 and all("loss=1.2" in ln for ln in lines)


def test_updates_within_the_interval_are_coalesced() -> None:
    con, buf = _console()
    p = PlainProgress(con, interval=3600.0)
    t = p.add_task("compare", total=100)
    for i in range(1, 100):
        p.update(t, completed=i)
    assert buf.getvalue() == ""  # nothing due yet, nothing finished
    p.update(t, completed=100)
    assert buf.getvalue().count("\n") == 1


def test_off_a_terminal_the_factory_gives_plain_lines(monkeypatch) -> None:
    monkeypatch.delenv("DRIFTKIT_PROGRESS", raising=False)
    con, _ = _console()
    assert isinstance(progress_bar(con), PlainProgress)  # pytest's stderr is not a terminal
    monkeypatch.setenv("DRIFTKIT_PROGRESS", "1")
    assert not isinstance(progress_bar(con), PlainProgress)


def test_plain_progress_has_rich_start_and_stop() -> None:
    con, _ = _console()
    p = PlainProgress(con, interval=0.01)
    p.start()
    p.stop()
    p.stop()  # idempotent, like rich's


def test_slow_work_reads_as_seconds_per_item() -> None:
    from driftkit.cli.progress import _rate

    assert _rate(0.08, "steps") == "12.5 s/step" and _rate(812.34, "tokens") == "812.3 tokens/s"


def test_train_progress_rates_only_the_steps_it_timed(monkeypatch) -> None:
    """train's task is created at the first step report, after that step ran: the rate must not count it
    (a 1-step GRPO run printed "63,804.0 steps/s" in the issue 12 walkthrough)."""
    import driftkit.cli.train as train_cli

    con, buf = _console()
    monkeypatch.setattr(train_cli, "progress_bar", lambda: PlainProgress(con, interval=0.0))
    with train_cli._Progress("train rl") as p:
        p(1, 1, {"loss": 0.0})
    line = buf.getvalue().strip().splitlines()[-1]
    assert line.startswith("train rl: 1/1 steps (100%), elapsed") and "steps/s" not in line, line


def test_fractional_progress_shows_whole_items_done() -> None:
    """Generation reports fractional samples; the count must not round up past the percentage."""
    con, buf = _console()
    with PlainProgress(con, interval=0.0) as p:
        t = p.add_task("generating", total=2, unit="samples")
        p.update(t, completed=1.5)
    # the heartbeat thread (interval 0) may also print the 0/2 line first: look at every line
    lines = buf.getvalue().splitlines()
    assert any(line.startswith("generating: 1/2 samples (75%)") for line in lines), lines
    assert not any("2/2 samples (75%)" in line for line in lines), lines
