"""What a mount's files show and can change: the map, ``base`` and ``holes`` (SPEC §4.1,
§4.2, §4.4 in docs/mounting.md).  No FUSE here.
"""

from __future__ import annotations

from typing import Any

from vmemfs import ctl, values
from vmemfs.errors import HoleError
from vmemfs.memmap import MemoryMap
from vmemfs.sources import Buffer

MAX_FILE_SIZE = (1 << 63) - 1
"""The largest size a FUSE file can have: offsets are signed 64-bit (SPEC §4.1)."""
UPPER_HALF = 1 << 63
BASE_ALIGNMENT = 1 << 32


def default_base(extents: list[tuple[int, int]]) -> int:
    """The base a mount uses unless told otherwise (SPEC §4.1).

    0 when any extent starts below 2**63 (or nothing is mapped); otherwise the lowest
    extent start rounded down to a multiple of 2**32, so that a kernel image at
    ``0xffffffff81000000`` shows at offset ``0x81000000`` of ``mem``.

    >>> hex(default_base([(0xffffffff81000000, 0xffffffff82000000)]))
    '0xffffffff00000000'
    >>> default_base([(0x1000, 0x2000), (0xffffffff81000000, 0xffffffff82000000)])
    0
    """
    if not extents or extents[0][0] < UPPER_HALF:
        return 0
    return extents[0][0] & ~(BASE_ALIGNMENT - 1)


class MountState:
    """The map a mount shows, and the settings ``.ctl/`` changes.

    The layout (extents, the top of the map) is fixed when the state is made (SPEC §4.7);
    ``base``, ``holes``, ``wordsize`` and ``endian`` change afterwards.

    :raises ControlValueError: for a ``base`` outside ``[0, 2**64)`` or an unknown
        ``holes`` policy.
    """

    def __init__(self, memory_map: MemoryMap, *, base: int | None = None,
                 holes: str = values.HOLES_EIO) -> None:
        self.map = memory_map
        self._view = memory_map.view
        self._read_zero_filled = memory_map.read_zero_filled
        self.extents = memory_map.extents()
        self.top = self.extents[-1][1] if self.extents else 0
        self.default_base = default_base(self.extents)
        self.base = 0
        self.mem_size = 0
        self.mem_mapped_bytes = 0
        self.holes: values.Holes = values.HOLES_EIO
        self.zero_filled = False
        self.set_base(self.default_base if base is None else base)
        self.set_holes(holes)

    def set_base(self, base: int) -> None:
        """Show address ``base`` at offset 0 of ``mem``; recompute its size.

        ``mem`` is ``min(2**63 - 1, top - base)`` bytes long (0 when nothing is mapped
        above ``base``).  Runtime complexity: ``O(e)`` for ``e`` extents.

        :raises ControlValueError: if ``base`` is outside ``[0, 2**64)``.
        """
        if not 0 <= base < values.ADDRESS_LIMIT:
            raise ctl.ControlValueError(f"base: {base:#x} is not in [0, 2**64)")
        size = min(MAX_FILE_SIZE, max(0, self.top - base))
        self.base = base
        self.mem_size = size
        self.mem_mapped_bytes = self.map.mapped_bytes(base, base + size) if size else 0

    def set_holes(self, holes: str) -> None:
        """How ``mem`` reads holes: ``"eio"`` (fail) or ``"zero"`` (zero bytes).

        :raises ControlValueError: for another value.
        """
        self.holes = ctl.checked(ctl.HOLES, values.parse_holes, holes)
        self.zero_filled = self.holes == values.HOLES_ZERO

    def control_value(self, name: str) -> object:
        """The current value of control ``name`` (see :mod:`vmemfs.ctl`)."""
        if name == ctl.WORDSIZE:
            return self.map.wordsize
        if name == ctl.ENDIAN:
            return self.map.endian
        if name == ctl.BASE:
            return self.base
        if name == ctl.HOLES:
            return self.holes
        raise KeyError(name)

    def set_control(self, name: str, value: Any) -> None:
        """Set control ``name`` to an already parsed ``value`` (see :func:`ctl.parse`)."""
        if name == ctl.WORDSIZE:
            self.map.wordsize = value
        elif name == ctl.ENDIAN:
            self.map.endian = value
        elif name == ctl.BASE:
            self.set_base(value)
        elif name == ctl.HOLES:
            self.set_holes(value)
        else:
            raise KeyError(name)

    @property
    def mapped_bytes(self) -> int:
        """Mapped bytes in the whole address space."""
        return self.map.mapped_bytes()

    def read_mem(self, offset: int, size: int) -> Buffer:
        """Up to ``size`` bytes of ``mem`` from ``offset`` (address ``base + offset``).

        Under ``holes=eio`` the bytes up to the first hole (a short read), under
        ``holes=zero`` exactly the bytes asked for with holes as zeros; empty at or past
        the end of ``mem``.  Runtime complexity: ``O(log n)`` plus, across pieces or
        with ``holes=zero``, a copy.

        :raises HoleError: under ``holes=eio`` if ``base + offset`` is a hole; under
            either policy at a byte a source cannot serve (a backing file that shrank).
        """
        remaining = self.mem_size - offset
        if remaining <= 0:
            return b""
        if size > remaining:
            size = remaining
        address = self.base + offset
        if not self.zero_filled:
            return self._view(address, size)
        try:
            buffer = self._view(address, size)  # no copy when the range has no hole
        except HoleError:
            return self._read_zero_filled(address, size)
        if len(buffer) == size:
            return buffer
        return self._read_zero_filled(address, size)

    def read_extent(self, start: int, end: int, offset: int, size: int) -> Buffer:
        """Up to ``size`` bytes of the extent ``[start, end)`` from ``offset``.

        An extent has no holes, so a read is short only at the end of the file.

        :raises HoleError: if a source cannot serve a byte in the range read (never a
            short read: the kernel caches these files and would take a short read for
            the end of the file).
        """
        remaining = min(MAX_FILE_SIZE, end - start) - offset
        if remaining <= 0:
            return b""
        if size > remaining:
            size = remaining
        address = start + offset
        buffer = self._view(address, size)
        if len(buffer) < size:
            raise HoleError(address + len(buffer))
        return buffer
