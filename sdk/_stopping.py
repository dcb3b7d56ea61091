"""Stopping at a safe point: the signal that the migration and the sync share when the
app's stop event is set (shared, so that neither capability imports the other for it).

    >>> stop = threading.Event()
    >>> stoppable_sleep(stop)(0.0)  # not set: waits, then returns
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Stopped", "stoppable_sleep"]


class Stopped(Exception):
    """The caller's stop event was set: leave at this safe point (the journal is current).

    Raised inside the engine (and by :func:`stoppable_sleep` during retry waits), turned
    into a ``STOPPED`` result by the migration engine or the sync; never reaches the app.

    >>> issubclass(Stopped, Exception)
    True
    """


def stoppable_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A ``sleep`` for the transport's retry waits that ends early, with :class:`Stopped`,
    as soon as ``stop`` is set.

    >>> stop = threading.Event()
    >>> stop.set()
    >>> stoppable_sleep(stop)(30.0)
    Traceback (most recent call last):
    ...
    sdk._stopping.Stopped: stopped during a retry wait
    """

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise Stopped("stopped during a retry wait")

    return sleep
