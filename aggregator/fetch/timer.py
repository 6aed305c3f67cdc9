"""The fetch engine's one timer thread: backoffs, the read-timeout watchdog, the cancel check."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Callable


class Timer:
    """One thread: runs scheduled callables (backoffs) and a periodic ``tick(now)`` every
    ``period`` seconds. Callables run on the timer thread; an exception in one is dropped
    (the engine's callables report their own failures)."""

    def __init__(self, tick: Callable[[float], None], *, clock: Callable[[], float], period: float = 0.1) -> None:
        self._tick = tick
        self._clock = clock
        self._period = period
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fetch-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the timer thread ``delay`` seconds from now (unless stopped first)."""
        with self._cond:
            heapq.heappush(self._heap, (self._clock() + delay, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        """Drop what is scheduled and end the thread (joined unless called from it). Idempotent."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        next_tick = self._clock()
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = self._clock()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due and now < next_tick:
                    wake = min(next_tick, self._heap[0][0]) if self._heap else next_tick
                    self._cond.wait(max(0.0, wake - now))
                    continue
            for fn in due:
                with contextlib.suppress(Exception):
                    fn()
            if now >= next_tick:
                next_tick = now + self._period
                with contextlib.suppress(Exception):
                    self._tick(now)
