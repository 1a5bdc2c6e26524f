"""The runner's progress bar (rich, on stderr): units done of the total, rate and time left.

Example:
    >>> bar = progress_bar(False, None)  # a disabled bar: every call is a no-op
    >>> with bar:
    ...     task = bar.add_task("eval", total=4)
    ...     bar.advance(task, 4)
"""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool, console: Any) -> Any:
    """A ``rich.progress.Progress`` with description, bar, M/N, rate, elapsed time and ETA."""
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

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- it/s" if speed is None else f"{speed:.2f} it/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


__all__ = ["progress_bar"]
