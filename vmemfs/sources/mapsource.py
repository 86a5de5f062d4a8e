"""A memory map read as a source: one map's addresses become another map's source offsets.

The kernel virtual view (see :mod:`vmemfs.formats.virtual`) maps runs of a *physical* map
at virtual addresses: its mappings point into a :class:`MapSource` whose source offset is
the physical address.  Bytes are read through the physical map each time, with no copy
kept here, so a compressed, cached or live physical map serves the virtual one as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmemfs.errors import HoleError
from vmemfs.sources import Buffer, Source

if TYPE_CHECKING:
    from vmemfs.memmap import MemoryMap

MAP_SOURCE_SIZE = (1 << 64) - 1
"""What :meth:`MapSource.size` reports: the whole 64-bit space but its last byte.

A map's addresses run to ``2**64``, but region checks in :class:`~vmemfs.MemoryMap` hold
sizes in ``uint64``, which stops at ``2**64 - 1``; the last address of a physical space
is never a page a page table can name (physical addresses have at most 52 bits)."""


class MapSource(Source):
    """The bytes of a :class:`~vmemfs.MemoryMap`: source offset ``o`` is the map's address ``o``.

    A hole of the map is a byte the source cannot serve, so :meth:`read_into` is short
    at the first hole, exactly as the map's own ``read_into`` is; the map reading through
    this source then shows that byte as a hole too.

    :attr:`volatile` follows the map (true while any of its sources is live memory).
    :meth:`close` closes the map read through only when the source owns it (``owner``).
    """

    def __init__(self, memmap: MemoryMap, name: str = "<memory map>", *,
                 owner: bool = False) -> None:
        self.memmap = memmap
        self.name = name
        self.owner = owner
        """Whether :meth:`close` closes :attr:`memmap` (the map was handed over)."""

    @property
    def volatile(self) -> bool:
        """Whether the map read through has a source that can change (live memory)."""
        return self.memmap.volatile

    @volatile.setter
    def volatile(self, value: bool) -> None:
        raise AttributeError("a map source is volatile exactly when its map is")

    def size(self) -> int:
        """:data:`MAP_SOURCE_SIZE`: every address of the map but the very last."""
        return MAP_SOURCE_SIZE

    def read_into(self, offset: int, buffer: memoryview) -> int:
        """Copy the map's bytes from address ``offset``; short at the first hole.

        Runtime complexity: ``O(log n + k)`` for ``k`` pieces of the map, plus the copy.
        """
        return self.memmap.read_into(offset, buffer)

    def view(self, offset: int, length: int) -> Buffer:
        """Up to ``length`` bytes from address ``offset``, short at the first hole.

        Zero-copy where the map can do it (one piece of a file); see
        :meth:`vmemfs.MemoryMap.view` for what such a view may be used for.
        """
        if length <= 0:
            return b""
        try:
            return self.memmap.view(offset, length)
        except HoleError:
            return b""

    def close(self) -> None:
        """Close the map read through (its backing files), if this source owns it."""
        if self.owner:
            self.memmap.close()
