"""Progress reporting for long computations, shared by every lens.

In a terminal, a rich progress bar (done/total, elapsed, remaining); when stderr is not a terminal
(logs, CI, a batch job), a plain line roughly every 5% of the work, so that log files show how far
a run got without carriage-return noise.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator


class progress:
    """Context manager yielding ``advance()``, to be called once per finished unit of work.

    Args:
        enabled: False yields a no-op.
        total: number of units.
        description: what is being counted (shown before the counts).
    """

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled and total > 0, int(total), description
        self._bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        if not sys.stderr.isatty():
            return self._plain()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda: self._bar.advance(task)

    def _plain(self) -> Callable[[], None]:
        start, done = time.perf_counter(), [0]
        every = max(1, self.total // 20)

        def advance() -> None:
            done[0] += 1
            if done[0] % every == 0 or done[0] == self.total:
                print(f"{self.description}: {done[0]}/{self.total} "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def progress_iter(items: Iterable[Any], description: str, enabled: bool,
                  total: int | None = None) -> Iterator[Any]:
    """Iterate over ``items``, reporting progress as :class:`progress` does.

    ``total`` defaults to ``len(items)`` when ``items`` has a length.
    """
    if total is None:
        total = len(items) if hasattr(items, "__len__") else 0  # type: ignore[arg-type]
    if not enabled or not total:
        yield from items
        return
    with progress(True, total, description) as advance:
        for item in items:
            yield item
            advance()
