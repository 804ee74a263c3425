"""What a person sees while a grid runs: a live bar per stage on a terminal, a summary line every
`SUMMARY_EVERY_S` without one (CI logs), one line per cell only with `--verbose`. Failures and warnings are
always printed, the first `MAX_FAILURE_LINES` failures one line each.

Training and unlearning cells report from inside (cvmf_ray/meter.py): their stage shows the epochs done of the
running cells' total and their images per second, and the ETA counts the part of a cell already done, so a
grid that is one long training has an ETA from its first readings on."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

from cvmf_ray.grid import STAGES, Cell
from cvmf_ray.scheduler import cell_cost

SUMMARY_EVERY_S = 10.0
MAX_FAILURE_LINES = 10


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else (
        f"{seconds // 60}:{seconds % 60:02d}")  # fmt: skip


class Progress:
    """Fed by the searcher (`cell_finished`, `cell_failed`, `note`) and ticked by Tune's loop (`tick`)."""

    def __init__(self, counts: Callable[[], dict[str, Counter]], work: Callable[[], tuple[float, float]],
                 verbose: bool, log: Callable[[str], None], live: bool | None = None) -> None:  # fmt: skip
        """`counts()`: per stage, cells by state; `work()`: estimated work done in this invocation and left."""
        self.counts, self.work, self.verbose, self.log = counts, work, verbose, log
        self.live = sys.stdout.isatty() if live is None else live
        self.started = self.last_summary = time.monotonic()
        self.failures = 0
        self.inside: dict[str, tuple[Cell, dict]] = {}  # running cell -> its latest meter reading
        self.bars = None
        if self.live:
            self._start_bars()

    # ---- events
    def cell_progress(self, cell: Cell, reading: dict) -> None:
        self.inside[cell.key] = (cell, reading)

    def cell_stopped(self, key: str) -> None:
        """The cell's trial ended (finished, failed or requeued): its readings no longer describe work."""
        self.inside.pop(key, None)

    def cell_finished(self, cell: Cell, seconds: float) -> None:
        self.cell_stopped(cell.key)
        if self.verbose:
            self._print(f"  done {cell.stage}: {cell.describe()} ({seconds:.1f} s)")

    def cell_failed(self, cell: Cell, error: str) -> None:
        self.cell_stopped(cell.key)
        self.failures += 1
        if self.failures <= MAX_FAILURE_LINES:
            self._print(f"  FAILED {cell.stage}: {cell.describe()}: {error}")
        elif self.failures == MAX_FAILURE_LINES + 1:
            self._print("  (further failures are counted, not printed; the results table has every reason)")

    def note(self, message: str) -> None:
        self._print(f"  {message}")

    # ---- display
    def tick(self) -> None:
        now = time.monotonic()
        if self.bars is not None:
            self._update_bars()
        elif now - self.last_summary >= SUMMARY_EVERY_S:
            self.last_summary = now
            self._print(self.summary())

    def summary(self) -> str:
        counts = self.counts()
        parts = []
        for stage in STAGES:
            c = counts[stage]
            total = sum(c.values())
            if total:
                busy = ", ".join(self._states(stage, c, ("running", "queued")))
                parts.append(f"{stage} {c['done']}/{total}" + (f" ({busy})" if busy else ""))
        failed = sum(c["failed"] for c in counts.values())
        return f"[{_clock(time.monotonic() - self.started)}] " + " · ".join(parts) + f" · failed {failed}{self._eta()}"

    def _states(self, stage: str, c: Counter, whats: tuple[str, ...]) -> list[str]:
        """'2 running: epoch 0.5/1, 489 img/s', '3 queued', …: each state of `stage` that has cells."""
        inside = self._inside(stage) if c["running"] else ""
        return [f"{c[what]} {what}" + (inside if what == "running" else "") for what in whats if c[what]]

    def _inside(self, stage: str) -> str:
        """': epoch 1.4/2, 3,100 img/s' over the stage's running cells that report from inside (summed)."""
        readings = [r for cell, r in self.inside.values() if cell.stage == stage and r.get("epochs")]
        if not readings:
            return ""
        done, total = sum(r["epoch"] for r in readings), sum(r["epochs"] for r in readings)
        rate = sum(r["images_per_s"] or 0 for r in readings)
        return f": epoch{'s' * (len(readings) > 1)} {done:.1f}/{total}" + (f", {rate:,.0f} img/s" if rate else "")

    def _eta(self) -> str:
        """Time left at the pace of this invocation so far, in estimated work (`scheduler.cell_cost`), not cells:
        a training is worth many evaluations. The done part of a running cell that reports from inside counts."""
        finished_here, left = self.work()
        partial = sum(cell_cost(cell) * r["epoch"] / r["epochs"] for cell, r in self.inside.values() if r.get("epochs"))
        elapsed = time.monotonic() - self.started
        if not left or finished_here + partial <= 0:
            return ""
        return f" · ETA {_clock(elapsed / (finished_here + partial) * max(left - partial, 0.0))}"

    def _print(self, line: str) -> None:
        if self.bars is not None:
            self.bars.console.print(line, markup=False, highlight=False)
        else:
            self.log(line)

    def _start_bars(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bars

        self.bars = Bars(
            TextColumn("{task.description:9}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"), TimeRemainingColumn(), transient=False,
        )  # fmt: skip
        counts = self.counts()
        self.tasks = {
            stage: self.bars.add_task(stage, total=sum(counts[stage].values()), state="")
            for stage in STAGES
            if sum(counts[stage].values())
        }
        self.bars.start()

    def _update_bars(self) -> None:
        counts = self.counts()
        for stage, task in self.tasks.items():
            c = counts[stage]
            state = " ".join(self._states(stage, c, ("running", "queued", "failed")))
            self.bars.update(task, completed=c["done"] + c["failed"], state=state)

    def close(self) -> None:
        if self.bars is not None:
            self._update_bars()
            self.bars.stop()
            self.bars = None
