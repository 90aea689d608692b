"""Progress of a long evaluation: problems done, samples per second, running accuracy.

A 500-problem x 8-sample run takes a while; the user should see that it moves and whether
the numbers look sane long before it ends. On a terminal this is a rich progress bar; in a
log file (SLURM, CI, a pipe) it is a plain line every 10% of the problems or every
`every_s` seconds, because a redrawn bar turns a log into noise.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["EvalProgress"]


class EvalProgress:
    """``with EvalProgress(total) as p: p.update(problems=4, samples=32, correct=11)``.

    `update` takes increments. `stream` defaults to stderr, so stdout stays the report.
    """

    def __init__(self, total: int, *, desc: str = "eval", stream: TextIO | None = None,
                 every_s: float = 30.0, rich: bool | None = None) -> None:
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.use_rich = self.stream.isatty() if rich is None else rich
        self.problems = self.samples = self.correct = 0
        self._start = time.perf_counter()
        self._last_line = self._start
        self._next_fraction = 0.1
        self._last_reported = 0
        self._bar = None
        self._task = None

    # ------------------------------------------------------------ context
    def __enter__(self) -> EvalProgress:
        self._start = self._last_line = time.perf_counter()
        if self.use_rich:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("problems | {task.fields[rate]} samples/s | acc {task.fields[acc]}"),
                TimeRemainingColumn(), console=Console(file=self.stream), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.desc, total=self.total, rate="-", acc="-")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif exc[0] is None and self.problems and self._last_reported != self.problems:
            self._line()

    # ------------------------------------------------------------ updates
    @property
    def rate(self) -> float:
        """Samples per second since the start."""
        return self.samples / max(time.perf_counter() - self._start, 1e-9)

    @property
    def accuracy(self) -> float:
        """Correct samples so far / samples so far."""
        return self.correct / self.samples if self.samples else 0.0

    def update(self, *, problems: int, samples: int, correct: int) -> None:
        self.problems += problems
        self.samples += samples
        self.correct += correct
        if self._bar is not None:
            self._bar.update(self._task, advance=problems, rate=f"{self.rate:.1f}", acc=f"{self.accuracy:.3f}")
            return
        now = time.perf_counter()
        due_fraction = self.total and self.problems >= self._next_fraction * self.total
        if due_fraction or now - self._last_line >= self.every_s or self.problems >= self.total:
            self._line()
            while self.total and self._next_fraction * self.total <= self.problems:
                self._next_fraction += 0.1

    def _line(self) -> None:
        self._last_line = time.perf_counter()
        self._last_reported = self.problems
        print(f"{self.desc}: {self.problems}/{self.total} problems | {self.samples} samples | "
              f"{self.rate:.1f} samples/s | acc {self.accuracy:.3f}", file=self.stream, flush=True)
