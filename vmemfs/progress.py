"""A one-line progress bar for long commands, shown only on a terminal.

The bar is drawn on a text stream (standard error by default) when that stream is a
terminal, and not at all otherwise, so ``vmemfs save core out 2>log`` or a pipeline sees
no control characters.  Redraws are rate-limited: calling :meth:`ProgressBar.update`
millions of times costs a clock read and a comparison each, and the terminal sees at
most one redraw per ``interval`` seconds.

>>> import io
>>> bar = ProgressBar("saving", 100, stream=io.StringIO())  # not a terminal
>>> bar.enabled
False
>>> bar.update(50); bar.close()   # draws nothing
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

DEFAULT_INTERVAL = 0.1
"""Seconds between redraws."""
DEFAULT_WIDTH = 80
"""Columns assumed when the terminal does not say."""
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(count: int) -> str:
    """``count`` bytes in binary units, three significant digits: ``'1.50 GiB'``.

    >>> format_size(512), format_size(1536), format_size(10 << 30)
    ('512 B', '1.50 KiB', '10.0 GiB')
    """
    if count < 1024:
        return f"{count} B"
    value = float(count)
    unit = 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    if value >= 100:
        return f"{value:.0f} {_UNITS[unit]}"
    if value >= 10:
        return f"{value:.1f} {_UNITS[unit]}"
    return f"{value:.2f} {_UNITS[unit]}"


class ProgressBar:
    """``label [#####.....]  50%  1.00 GiB / 2.00 GiB`` on one terminal line.

    ``total`` is the amount of work (bytes); ``update(done)`` reports progress.  The bar
    is drawn only if ``show`` and ``stream.isatty()`` are true (``enabled``); otherwise
    every method does nothing.  :meth:`clear` erases the line (call it before printing other output
    to the same terminal: the next update draws the bar again); :meth:`close` erases it
    for good.  Use as a context manager to close it on any exit.

    Cost of :meth:`update` when no redraw is due: one call of ``clock``.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        show: bool = True,
    ) -> None:
        self.label = label
        self.total = max(0, total)
        self.stream: TextIO = sys.stderr if stream is None else stream
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.enabled = show and _is_terminal(self.stream)
        self.redraws = 0
        """How many times the bar was drawn (for tests and curiosity)."""
        self._next_draw = float("-inf")
        self._shown = 0
        """Columns of the bar currently on screen (0: none)."""
        self._closed = False

    def update(self, done: int, total: int | None = None) -> None:
        """Record that ``done`` of ``total`` (default: the total given before) is done.

        Draws the bar if it is enabled and ``interval`` seconds have passed since the
        last draw (or ever, for the first call).
        """
        self.done = done
        if total is not None:
            self.total = max(0, total)
        if not self.enabled or self._closed:
            return
        now = self.clock()
        if now < self._next_draw:
            return
        self._next_draw = now + self.interval
        self._draw()

    def clear(self) -> None:
        """Erase the bar from the terminal, if it is shown; the next update redraws it."""
        if self._shown:
            self._write("\r" + " " * self._shown + "\r")
            self._shown = 0
            self._next_draw = float("-inf")

    def close(self) -> None:
        """Erase the bar for good; later updates draw nothing."""
        self.clear()
        self._closed = True

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def render(self, width: int) -> str:
        """The bar's text for a terminal ``width`` columns wide (never wider than
        ``width - 1``, so the cursor never wraps)."""
        done = min(self.done, self.total) if self.total else self.done
        counts = f"{format_size(done)} / {format_size(self.total)}"
        fraction = done / self.total if self.total else 1.0
        percent = f"{int(fraction * 100):3d}%"
        room = width - 1 - len(self.label) - len(percent) - len(counts) - 6
        if room >= 10:
            cells = min(room, 40)
            filled = int(fraction * cells)
            bar = "[" + "#" * filled + "." * (cells - filled) + "]"
            text = f"{self.label} {bar} {percent}  {counts}"
        else:
            text = f"{self.label} {percent} {counts}"
        return text[: max(0, width - 1)]

    def _draw(self) -> None:
        text = self.render(_terminal_width(self.stream))
        padding = " " * max(0, self._shown - len(text))
        self._write("\r" + text + padding)
        self._shown = len(text)
        self.redraws += 1

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # The terminal went away (closed stream, hang-up): stop drawing, go on working.
            self.enabled = False
            self._shown = 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_WIDTH
    except (AttributeError, ValueError, OSError):
        return DEFAULT_WIDTH
