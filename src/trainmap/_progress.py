"""Progress reporting for long computations, shared by every lens.

In a terminal, a rich progress bar (done/total, elapsed, remaining); when stderr is not a terminal
(logs, CI, a batch job), a plain line roughly every 5% of the work, so that log files show how far
a run got without carriage-return noise.
"""

from __future__ import annotations

import json
import os
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


#: set to a file path to append one JSON line per finished :func:`stage` (wall s, CPU s, peak RSS)
STAGE_LOG_ENV = "TRAINMAP_STAGE_LOG"


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux ≥ 4.0), so that a stage's VmHWM is
    its own peak. False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float | None:
    """The process's peak resident memory (VmHWM) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class stage:
    """Context manager for one stage of a long command: prints ``name ...`` when it starts and
    ``name: 3.2 s`` when it ends (stderr), so that no stage is silent. With the environment variable
    ``TRAINMAP_STAGE_LOG`` set to a path, also appends ``{"stage", "wall_s", "cpu_s",
    "peak_rss_mib"}`` as one JSON line (the benchmarks read it; the peak is the stage's own where
    the kernel allows resetting it, else the process's so far; resetting it also lowers the
    ``ru_maxrss`` that the parent's ``wait4`` reports, so take the largest stage peak instead).

    Args:
        name: what the stage does, e.g. ``"SVD"``.
        enabled: False times and logs without printing.
    """

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name, self.enabled = name, enabled
        self.wall_s = 0.0

    def __enter__(self) -> "stage":
        self._own_peak = _reset_peak_rss() if os.environ.get(STAGE_LOG_ENV) else False
        if self.enabled:
            print(f"{self.name} ...", file=sys.stderr, flush=True)
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.wall_s = time.perf_counter() - self._t0
        if exc_type is not None:
            return
        if self.enabled:
            print(f"{self.name}: {self.wall_s:.1f} s", file=sys.stderr, flush=True)
        path = os.environ.get(STAGE_LOG_ENV)
        if path:
            line = {"stage": self.name, "wall_s": self.wall_s, "cpu_s": time.process_time() - self._c0,
                    "peak_rss_mib": peak_rss_mib(), "peak_is_stage_own": self._own_peak}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
