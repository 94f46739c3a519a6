"""Progress of long phases, on stderr: a rich bar on a terminal, plain lines otherwise.

When stderr is not a terminal (nohup, CI, a log file) a live bar would show nothing until its last frame, so
`progress` prints a line every few seconds instead (and one at the end), each with done/total, the rate and the
ETA:

    encoding mosi text (train): 640/1284 sentences (50%), 41.2 sentences/s, ETA 16s

`every=0` prints a line at every step (one per training epoch, say). Nothing here imports torch.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

EVERY = 5.0  # seconds between two lines when the output is not a terminal


def on_terminal() -> bool:
    """Is stderr a terminal (where a live rich display can redraw)? rich's own test, so FORCE_COLOR /
    TTY_COMPATIBLE and Jupyter count the way rich counts them."""
    from rich.console import Console

    return Console(stderr=True).is_terminal


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h04m`: short enough for a progress line."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def singular(unit: str) -> str:
    """`epochs` -> `epoch`, `passes` -> `pass`, `sentences` -> `sentence`."""
    if unit.endswith(("sses", "shes", "ches", "xes")):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") and not unit.endswith("ss") else unit


def rate_text(done: float, seconds: float, unit: str) -> str:
    """`41.2 sentences/s`, or `2.3 s/epoch` for slow steps."""
    if done <= 0 or seconds <= 0:
        return ""
    per_second = done / seconds
    return f"{per_second:.1f} {unit}/s" if per_second >= 1 else f"{seconds / done:.1f} s/{singular(unit)}"


class Lines:
    """Progress as plain lines: one when `every` seconds have passed since the last (every step with `every=0`),
    and one at the end. The rate and ETA count only the steps of this session (not `done` at the start: cached
    clips, say)."""

    def __init__(self, description: str, total: int | None, unit: str, done: int = 0, every: float = EVERY,
                 stream=None, eta: str = "ETA"):
        self.description, self.total, self.unit, self.every, self.eta = description, total, unit, every, eta
        self.done, self.start_done, self.note = done, done, ""
        self.stream = stream or sys.stderr
        self.started = self.last = time.perf_counter()

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """`n` more steps done; `note` (e.g. the last clip, or this epoch's loss) is shown after the figures."""
        self.done += n
        if note is not None:
            self.note = note
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.print()

    def line(self, final: bool = False) -> str:
        elapsed = time.perf_counter() - self.started
        steps = self.done - self.start_done
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        rate = rate_text(steps, elapsed, self.unit)
        if final:
            parts.append(f"in {duration(elapsed)}" + (f" ({rate})" if rate else ""))
        else:
            parts += [rate] if rate else []
            if self.total and steps > 0 and self.done < self.total:
                parts.append(f"{self.eta} {duration(elapsed / steps * (self.total - self.done))}")
        return f"{self.description}: {', '.join(parts)}" + (f"; {self.note}" if self.note else "")

    def print(self, final: bool = False) -> None:
        print(self.line(final), file=self.stream, flush=True)


class Bar:
    """The same calls on a rich progress bar (a terminal)."""

    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.bar.update(self.task, advance=n, **({"note": note} if note is not None else {}))


class Silent:
    """The same calls, showing nothing (`enabled=False`)."""

    def advance(self, n: int = 1, note: str | None = None) -> None:
        pass


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "items", done: int = 0,
             every: float = EVERY, enabled: bool = True) -> Iterator[Lines | Bar | Silent]:
    """Show the progress of a phase of `total` steps (None: unknown) on stderr; yields an object whose
    `advance(n=1, note=None)` reports steps done. A rich bar (done/total, rate, elapsed, ETA) on a terminal,
    else lines (see `Lines`); nothing with `enabled=False`. `done`: steps finished before this session."""
    if not enabled:
        yield Silent()
        return
    if not on_terminal():
        lines = Lines(description, total, unit, done, every)
        yield lines
        lines.print(final=True)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(rate_text(task.completed - done, task.elapsed or 0.0, unit), style="progress.data.speed")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit), Rate(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
    # stdout into a file or pipe (JSON lines, say) must not be routed through the bar's console on stderr
    with Progress(*columns, console=Console(stderr=True), redirect_stdout=sys.stdout.isatty()) as bar:
        yield Bar(bar, bar.add_task(description, total=total, completed=done, note=""))


def track(items: Iterable, description: str, total: int | None = None, unit: str = "items",
          every: float = EVERY, enabled: bool = True) -> Iterator:
    """Iterate over `items`, showing progress as `progress` does (one step per item)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with progress(description, total, unit, every=every, enabled=enabled) as p:
        for item in items:
            yield item
            p.advance()
