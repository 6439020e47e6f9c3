"""Log lines that a peer can make us repeat, said once and then counted.

What.  Some log lines are written once per event that a guest or a viewer controls: a console
program that floods terminal queries and never reads the answers makes the console drop one
answer per query, and a warning for each filled dom0's disk at 9 MB a second.  A
`RateLimitedLog` stands for one such line.  The first call logs it; further calls within
`interval` seconds are only counted; the first call after that logs it again, with the count
of the calls held back.  A flood then costs one line per interval, and the log still says
how much happened.

How.  One object per kind of line and per owner (each console has its own), so that one
flooding guest never silences another guest's lines, and the state is two numbers.  The
clock can be injected, so tests need not wait.

Trade-off.  The count of the calls held back is said with the next call after the interval:
if the flood stops, the last interval's count is never said.  A timer thread would say it,
at the price of a thread per owner; the first line already says that it happened.
"""

from __future__ import annotations

import logging
import threading
import time

INTERVAL = 60.0


class RateLimitedLog:
    """One kind of log line, said at most once per `interval` seconds, with a count of the rest."""

    def __init__(self, logger: logging.Logger, level: int, message: str,
                 interval: float = INTERVAL, clock=time.monotonic) -> None:
        self.logger = logger
        self.level = level
        self.message = message
        self.interval = interval
        self.clock = clock
        self._said = float("-inf")
        self._held = 0
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs) -> None:
        """Log the message with these arguments, or count it if it was said too recently."""
        now = self.clock()
        with self._lock:
            if now - self._said < self.interval:
                self._held += 1
                return
            held, self._said, self._held = self._held, now, 0
        if held:
            self.logger.log(self.level, self.message + " (%d like it held back)",
                            *args, held, **kwargs)
        else:
            self.logger.log(self.level, self.message, *args, **kwargs)
