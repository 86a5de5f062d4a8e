"""Searching mapped memory for byte patterns, at memory speed.

Each extent (a run with no holes) is scanned in large chunks with ``bytearray.find``;
consecutive chunks overlap by ``len(pattern) - 1`` bytes so that a match across a chunk
edge, or across two adjacent mappings, is found exactly once.  A match never spans a
hole, because extents end at holes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol


class Searchable(Protocol):
    """What a search needs of a map (a :class:`vmemfs.MemoryMap`)."""

    def extents(self) -> list[tuple[int, int]]: ...
    def read_into(self, address: int, buffer: memoryview | bytearray) -> int: ...
    def lost_bytes_end(self, address: int) -> int: ...

CHUNK = 8 << 20
"""Bytes read per step of a scan."""
PAGE = 4096
"""After a byte that cannot be read, the scan resumes at the next multiple of this."""


def iter_matches(
    memmap: Searchable,
    pattern: bytes,
    start: int | None = None,
    *,
    align: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Iterator[int]:
    """Yield, ascending, every address ``>= start`` where ``pattern`` lies in mapped memory.

    Only addresses that are multiples of ``align`` are reported.  ``start=None`` means the
    lowest mapped address.  Bytes lost from a backing file that shrank are skipped like
    holes, page by page.  ``progress``, if given, is called with the number of bytes scanned so far.

    Runtime complexity: ``O(mapped bytes from start)`` byte comparisons, plus ``O(1)``
    Python work per chunk and per match.

    :raises ValueError: if ``pattern`` is empty or ``align`` is not positive.
    """
    pattern = bytes(pattern)
    width = len(pattern)
    if width == 0:
        raise ValueError("cannot search for an empty pattern")
    if align < 1:
        raise ValueError(f"alignment must be positive, not {align}")
    extents = memmap.extents()
    if not extents:
        return
    if start is None:
        start = extents[0][0]
    buffer = bytearray(min(max(CHUNK, 2 * width), max(width, _largest_extent(extents, start))))
    view = memoryview(buffer)
    find = buffer.find
    scanned = 0
    for extent_start, extent_end in extents:
        if extent_end <= start:
            continue
        position = max(extent_start, start)
        while extent_end - position >= width:
            want = min(len(buffer), extent_end - position)
            count = memmap.read_into(position, view[:want])
            hit = find(pattern, 0, count)
            while hit != -1:
                address = position + hit
                if address % align == 0:
                    yield address
                hit = find(pattern, hit + 1, count)
            scanned += count
            if progress is not None:
                progress(scanned)
            if count < want:
                # A byte the source cannot serve (a guard page of a process, a page that
                # fails to decode, a file that shrank): resume at the next page, within
                # the piece that failed, so readable pages after it are still searched.
                failed = position + count
                position = min(memmap.lost_bytes_end(failed), (failed | (PAGE - 1)) + 1)
            elif position + count >= extent_end:
                break
            else:
                position += count - width + 1


def _largest_extent(extents: list[tuple[int, int]], start: int) -> int:
    return max((end - max(begin, start) for begin, end in extents if end > start), default=0)
