"""The one progress-bar style of every long job (training, imitation, data collection, evaluation,
benchmarks): rich's bar with "done/total unit", elapsed < remaining.

It lives at the bottom of the layering so `envs`, `perception` and `agents` all draw the same bar.

    with progress_bar(total=10_000, description="collect", unit="frames") as bar:
        bar.advance(256)
    for batch in track(loader, "epoch 3/20", unit="batches", transient=True):
        ...
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

T = TypeVar("T")


class _CountColumn(ProgressColumn):
    """ "12,800/200,000 env steps" (thousands separated), or "12,800 env steps" without a total."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        total = "" if task.total is None else f"/{int(task.total):,}"
        return Text(f"{int(task.completed):,}{total} {self.unit}", style="progress.download")


class ProgressBar:
    """One task on a rich `Progress`; `advance(n)` moves it, `close()` (or leaving `with`) ends it."""

    def __init__(self, total: float | None, description: str, unit: str, disable: bool = False,
                 transient: bool = False, completed: float = 0, console: Console | None = None) -> None:
        columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), _CountColumn(unit),
                   TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn())
        self._progress = Progress(*columns, disable=disable, transient=transient, console=console)
        self._task = self._progress.add_task(description, total=total, completed=completed)
        self._progress.start()

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._task, amount)

    def describe(self, description: str) -> None:
        """Say what the job does now (the text left of the bar)."""
        self._progress.update(self._task, description=description)

    def set_total(self, total: float) -> None:
        self._progress.update(self._task, total=total)

    @property
    def completed(self) -> float:
        return self._progress.tasks[0].completed

    @property
    def total(self) -> float | None:
        return self._progress.tasks[0].total

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress_bar(total: float | None, description: str, unit: str = "steps", disable: bool = False,
                 transient: bool = False, completed: float = 0) -> ProgressBar:
    """A bar from `completed` to `total` (None: a count without an end); transient bars vanish when done."""
    return ProgressBar(total, description, unit, disable=disable, transient=transient, completed=completed)


def track(items: Iterable[T], description: str, total: float | None = None, unit: str = "items",
          disable: bool = False, transient: bool = False) -> Iterator[T]:
    """Iterate over `items` with a bar that advances by one per item (total: `len(items)` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, description, unit, disable=disable, transient=transient) as bar:
        for item in items:
            yield item
            bar.advance(1)
