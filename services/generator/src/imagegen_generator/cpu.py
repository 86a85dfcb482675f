"""The replica's CPU pool: decoding, resizing and encoding images, building base64 inputs.

A replica waits on Replicate for thousands of jobs at once (I/O, on the event loop) but can only do
as much CPU work at once as it has cores. Such work runs here, in a pool of threads sized to the
cores the process may use (Pillow and zlib release the GIL while they work), so that a burst of
finished predictions queues for the cores instead of piling threads on them, and the event loop
keeps pulling, acking and extending ack waits meanwhile. ``asyncio.to_thread`` would share the
loop's default executor (up to 32 threads, whatever the cores) with everything else.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class CpuPool:
    """At most ``workers`` CPU-bound calls at once, off the event loop (0: one per usable core)."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or usable_cores()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="imagegen-cpu")
        self._lock = threading.Lock()
        self._busy = 0
        self._waiting = 0
        #: The most calls that ran at the same time, and the calls made (tests read them).
        self.peak = 0
        self.calls = 0

    @property
    def busy(self) -> int:
        """Calls running now."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Calls waiting for a free worker."""
        return self._waiting

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs ``function(*args, **kwargs)`` in the pool; waits for a free worker when all are busy."""
        call = functools.partial(self._counted, functools.partial(function, *args, **kwargs))
        with self._lock:
            self._waiting += 1
            self.calls += 1
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _counted(self, call: Callable[[], T]) -> T:
        with self._lock:
            self._waiting -= 1
            self._busy += 1
            self.peak = max(self.peak, self._busy)
        try:
            return call()
        finally:
            with self._lock:
                self._busy -= 1

    def close(self) -> None:
        """Stops the threads once the calls under way are done; queued calls are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)
