"""What the command line shows a person: a live progress bar and readable summaries.

The bar uses rich (the ``cli`` extra) when it is installed and the output is a terminal;
otherwise plain lines, one per phase and per tenth of the upload, which logs and CI keep
readable. rich is imported only when a bar is drawn, never by ``import sdk``::

    >>> import io
    >>> out = io.StringIO()
    >>> lines = LineProgress(out)
    >>> lines(Progress(ProgressPhase.UPLOADING, 50, 100))
    >>> out.getvalue()
    'uploading: 50/100 items (50%)\\n'
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from ._events import Progress, ProgressPhase

__all__ = ["LineProgress", "ProgressDisplay", "counts", "describe_item", "open_progress"]


class ProgressDisplay:
    """Base of the displays: a callable fed with :class:`~sdk.Progress`, and a context
    manager around the migration.

    >>> with ProgressDisplay() as display:
    ...     display(Progress(ProgressPhase.DONE, 1, 1))
    """

    def __call__(self, progress: Progress) -> None:
        """Show one progress report (the base shows nothing)."""

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LineProgress(ProgressDisplay):
    """Plain lines: one when the phase changes, one per tenth of the phase's items; every
    phase reports its end, so the last line of each reads ``N/N``.

    >>> import io
    >>> out = io.StringIO()
    >>> show = LineProgress(out)
    >>> for done in (0, 3, 5, 10):
    ...     show(Progress(ProgressPhase.UPLOADING, done, 10))
    >>> print(out.getvalue(), end="")
    uploading: 0/10 items (0%)
    uploading: 3/10 items (30%)
    uploading: 5/10 items (50%)
    uploading: 10/10 items (100%)
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._phase: ProgressPhase | None = None
        self._tenth = -1

    def __call__(self, progress: Progress) -> None:
        tenth = int(progress.fraction * 10)
        if progress.phase is self._phase and tenth <= self._tenth:
            return
        self._phase, self._tenth = progress.phase, tenth
        stream = self._stream or sys.stderr
        if progress.items_total:
            line = (
                f"{progress.phase.value}: {progress.items_done:,}/{progress.items_total:,} "
                f"items ({progress.fraction:.0%})"
            )
        else:
            line = progress.phase.value
        stream.write(line + "\n")
        stream.flush()


class _RichBar(ProgressDisplay):
    """A live rich progress bar on standard error."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("items"),
            TaskProgressColumn(),
            TextColumn("{task.fields[overall]:>4.0%} overall"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task("detecting", total=None, overall=0.0)

    def __call__(self, progress: Progress) -> None:
        # Every phase reports its end, so the bar shows each phase reaching its total.
        self._bar.update(
            self._task,
            description=progress.phase.value,
            completed=progress.items_done,
            total=progress.items_total or None,
            overall=progress.overall,
        )

    def __enter__(self) -> ProgressDisplay:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def open_progress(mode: str, *, stream: TextIO | None = None) -> ProgressDisplay:
    """The display for ``--progress MODE``: ``bar`` (rich, falling back to lines when rich
    is not installed), ``lines``, ``none``, or ``auto`` (a bar on a terminal, else lines).

    >>> type(open_progress("none")).__name__, type(open_progress("lines")).__name__
    ('ProgressDisplay', 'LineProgress')
    """
    if mode == "none":
        return ProgressDisplay()
    out = stream or sys.stderr
    wants_bar = mode == "bar" or (mode == "auto" and out.isatty())
    if wants_bar:
        try:
            return _RichBar()
        except ImportError:
            if mode == "bar":
                out.write("(rich is not installed: pip install 'offline-migrate[cli]' for a bar)\n")
    return LineProgress(stream)


def describe_item(item: Any, width: int = 60) -> str:
    """One line for one side of a conflict: the data (shortened) and when it changed.

    >>> describe_item({"data": {"score": 3}, "updatedAt": 0, "deleted": False})
    '{"score": 3}  (changed 1970-01-01 00:00 UTC)'
    >>> describe_item({"data": {}, "updatedAt": 0, "deleted": True})
    'deleted  (changed 1970-01-01 00:00 UTC)'
    """
    if item.get("deleted"):
        text = "deleted"
    else:
        text = json.dumps(item.get("data"), sort_keys=True, ensure_ascii=False)
        if len(text) > width:
            text = text[: width - 3] + "..."
    stamp = item.get("updatedAt")
    if isinstance(stamp, int):
        when = dt.datetime.fromtimestamp(stamp / 1000, tz=dt.timezone.utc)
        text += f"  (changed {when:%Y-%m-%d %H:%M} UTC)"
    return text


def counts(values: Mapping[str, int] | Iterable[tuple[str, int]]) -> str:
    """``a 2, b 1`` for a mapping of counts, ``none`` when empty.

    >>> counts({"b": 1, "a": 2}), counts({})
    ('a 2, b 1', 'none')
    """
    pairs = sorted(dict(values).items())
    return ", ".join(f"{name} {count:,}" for name, count in pairs) or "none"
