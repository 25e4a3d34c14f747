"""Timer: wall-clock timing of host-side work."""

from __future__ import annotations

import time


class Timer:
    """A context manager measuring elapsed wall-clock seconds (``perf_counter``).

    Time jitted work after ``jax.block_until_ready`` on its result, or the
    timer stops before the device finishes.

    >>> import procela_jax as pj
    >>> with pj.Timer() as t:
    ...     _ = sum(range(1000))
    >>> t.elapsed >= 0.0
    True
    """

    def __init__(self):
        self.start: float | None = None
        self.end: float | None = None

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.end = None
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since ``start`` (until ``end`` once the block has exited)."""
        if self.start is None:
            return 0.0
        return (self.end if self.end is not None else time.perf_counter()) - self.start
