"""The tree a vmemfs mount shows, as a pure model (no FUSE): SPEC §4.

::

    ROOT (1)
      mem            MEM (2)           the map from `base` on, as one sparse file
      extents/       EXTENTS (3)
        <start>-<end>  FIRST_EXTENT + i  extent i, ascending
      .ctl/          CTL (4)
        wordsize     CTL_WORDSIZE (5)  read/write
        endian       CTL_ENDIAN (6)    read/write
        base         CTL_BASE (7)      read/write
        holes        CTL_HOLES (8)     read/write
        maps         CTL_MAPS (9)      read-only

Inode numbers are fixed; extent ``i`` (in ascending address order) is inode
``FIRST_EXTENT + i``.  The layout follows the mappings as they were when the
:class:`Layout` was made (SPEC §4.7); only ``base``, ``holes``, ``wordsize`` and
``endian`` change afterwards, through :meth:`Layout.write_control`.

Reads return what a FUSE read reply carries: a buffer no longer than asked for, empty
at or past the end of the file.  :class:`~vmemfs.errors.HoleError` means "reply EIO";
:class:`NotFound` means "reply ENOENT"; :class:`~vmemfs.ctl.ControlValueError` means
"reply EINVAL".  The adapter (:mod:`vmemfs.fs`) does that translation.
"""

from __future__ import annotations

import re
import stat
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from vmemfs import ctl
from vmemfs.errors import HoleError
from vmemfs.index import ADDRESS_LIMIT

ROOT = 1
MEM = 2
EXTENTS = 3
CTL = 4
CTL_WORDSIZE = 5
CTL_ENDIAN = 6
CTL_BASE = 7
CTL_HOLES = 8
CTL_MAPS = 9
FIRST_EXTENT = 16
"""Extent ``i`` has inode ``FIRST_EXTENT + i``; inodes below it are fixed."""

MAX_FILE_SIZE = (1 << 63) - 1
"""The largest size a FUSE file can have: offsets are signed 64-bit (SPEC §4.1)."""

UPPER_HALF = 1 << 63
BASE_ALIGNMENT = 1 << 32
BLOCK_SIZE = 512
"""The unit of ``st_blocks``."""

MEM_NAME = b"mem"
EXTENTS_NAME = b"extents"
CTL_NAME = b".ctl"
MAPS_NAME = b"maps"

_CONTROL_INODES: dict[int, str] = {
    CTL_WORDSIZE: ctl.WORDSIZE,
    CTL_ENDIAN: ctl.ENDIAN,
    CTL_BASE: ctl.BASE,
    CTL_HOLES: ctl.HOLES,
}
_ROOT_ENTRIES: tuple[tuple[bytes, int], ...] = (
    (MEM_NAME, MEM), (EXTENTS_NAME, EXTENTS), (CTL_NAME, CTL))
_CTL_ENTRIES: tuple[tuple[bytes, int], ...] = (
    *((name.encode("ascii"), inode) for inode, name in _CONTROL_INODES.items()),
    (MAPS_NAME, CTL_MAPS),
)
_EXTENT_NAME = re.compile(rb"([0-9a-f]{16})-([0-9a-f]{16,17})")

DIRECTORY_MODE = stat.S_IFDIR | 0o555
READ_ONLY_MODE = stat.S_IFREG | 0o444
CONTROL_MODE = stat.S_IFREG | 0o644


class NotFound(LookupError):
    """No such name in a directory, or no such inode."""


class MapView(Protocol):
    """What the layout needs from a :class:`~vmemfs.memmap.MemoryMap`."""

    wordsize: int | None
    endian: Any

    def extents(self) -> list[tuple[int, int]]: ...
    def view(self, address: int, size: int) -> Any: ...
    def read_zero_filled(self, address: int, size: int) -> Any: ...
    def mapped_bytes(self, start: int = 0, end: int = ADDRESS_LIMIT) -> int: ...
    @property
    def mappings(self) -> tuple[Any, ...]: ...


@dataclass(frozen=True, slots=True)
class Attributes:
    """What ``stat`` shows of a node, apart from owner and times (the adapter's part)."""

    inode: int
    mode: int
    """``st_mode``, file type included."""
    nlink: int
    size: int
    blocks: int
    """Mapped (or stored) bytes in 512-byte units, rounded up."""
    volatile: bool
    """The attributes can change while mounted (``mem``, ``.ctl/*`` values): the kernel
    must not cache them."""


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


def extent_name(start: int, end: int) -> bytes:
    """``%016x-%016x``: the extent's first address and its exclusive end.

    The end of an extent that reaches the top of the address space is ``2**64``, which
    takes 17 digits: ``10000000000000000``.

    >>> extent_name(0x1000, 0x3000)
    b'0000000000001000-0000000000003000'
    """
    return b"%016x-%016x" % (start, end)


def _blocks(byte_count: int) -> int:
    return -(-byte_count // BLOCK_SIZE)


class Layout:
    """The mounted tree over one memory map: names, attributes, reads, control values.

    ``base`` defaults to :func:`default_base`; ``holes`` is ``"eio"`` or ``"zero"``.
    Building a layout costs ``O(e)`` for ``e`` extents; lookups by name cost
    ``O(log e)``; a read costs what :meth:`MemoryMap.view` costs.

    :raises ValueError: for a ``base`` outside ``[0, 2**64)`` or an unknown ``holes``
        policy (:class:`~vmemfs.ctl.ControlValueError`).
    """

    def __init__(self, memory_map: MapView, *, base: int | None = None,
                 holes: str = ctl.HOLES_EIO) -> None:
        self._map = memory_map
        self._view = memory_map.view
        self._read_zero_filled = memory_map.read_zero_filled
        extents = memory_map.extents()
        self._starts: list[int] = [start for start, _ in extents]
        self._ends: list[int] = [end for _, end in extents]
        self._top = self._ends[-1] if extents else 0
        self.default_base = default_base(extents)
        self._maps_text: bytes | None = None
        self.base = 0
        self.mem_size = 0
        self.mem_blocks = 0
        self._zero_filled = False
        self.holes = ctl.HOLES_EIO
        self.set_base(self.default_base if base is None else base)
        self.set_holes(holes)

    # ---------------------------------------------------------------- state

    def set_base(self, base: int) -> None:
        """Show address ``base`` at offset 0 of ``mem``; recompute its size and blocks.

        ``mem`` is ``min(2**63 - 1, top - base)`` bytes long (0 when nothing is mapped
        above ``base``).  Runtime complexity: ``O(e)``.

        :raises ControlValueError: if ``base`` is outside ``[0, 2**64)``.
        """
        if not 0 <= base < ADDRESS_LIMIT:
            raise ctl.ControlValueError(f"base: {base:#x} is not in [0, 2**64)")
        size = min(MAX_FILE_SIZE, max(0, self._top - base))
        self.base = base
        self.mem_size = size
        self.mem_blocks = _blocks(self._map.mapped_bytes(base, base + size)) if size else 0

    def set_holes(self, holes: str) -> None:
        """How ``mem`` reads holes: ``"eio"`` (fail) or ``"zero"`` (zero bytes).

        :raises ControlValueError: for another value.
        """
        self.holes = ctl.parse_holes(holes)
        self._zero_filled = self.holes == ctl.HOLES_ZERO

    def control_value(self, name: str) -> Any:
        """The current value of control ``name`` (see :mod:`vmemfs.ctl`)."""
        if name == ctl.WORDSIZE:
            return self._map.wordsize
        if name == ctl.ENDIAN:
            return self._map.endian
        if name == ctl.BASE:
            return self.base
        if name == ctl.HOLES:
            return self.holes
        raise NotFound(name)

    def set_control(self, name: str, value: Any) -> None:
        """Set control ``name`` to an already parsed ``value``."""
        if name == ctl.WORDSIZE:
            self._map.wordsize = value
        elif name == ctl.ENDIAN:
            self._map.endian = value
        elif name == ctl.BASE:
            self.set_base(value)
        elif name == ctl.HOLES:
            self.set_holes(value)
        else:
            raise NotFound(name)

    # ---------------------------------------------------------------- the tree

    @property
    def extent_count(self) -> int:
        return len(self._starts)

    @property
    def inode_count(self) -> int:
        """How many nodes the tree has."""
        return CTL_MAPS + len(self._starts)

    @property
    def mapped_bytes(self) -> int:
        """Mapped bytes in the whole address space."""
        return self._map.mapped_bytes()

    def extent(self, inode: int) -> tuple[int, int]:
        """``(start, end)`` of the extent file ``inode``.

        :raises NotFound: if ``inode`` is not an extent file.
        """
        number = inode - FIRST_EXTENT
        if not 0 <= number < len(self._starts):
            raise NotFound(inode)
        return self._starts[number], self._ends[number]

    def is_directory(self, inode: int) -> bool:
        return inode in (ROOT, EXTENTS, CTL)

    def control_name(self, inode: int) -> str | None:
        """The control a writable ``.ctl/`` file holds, or ``None`` for any other inode."""
        return _CONTROL_INODES.get(inode)

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode called ``name`` in directory ``parent``.

        Runtime complexity: ``O(1)``, or ``O(log e)`` in ``extents/``.

        :raises NotFound: if there is no such entry.
        """
        if parent == ROOT:
            entries = _ROOT_ENTRIES
        elif parent == CTL:
            entries = _CTL_ENTRIES
        elif parent == EXTENTS:
            return self._lookup_extent(name)
        else:
            raise NotFound(name)
        for entry_name, inode in entries:
            if entry_name == name:
                return inode
        raise NotFound(name)

    def _lookup_extent(self, name: bytes) -> int:
        match = _EXTENT_NAME.fullmatch(name)
        if match is None:
            raise NotFound(name)
        start = int(match[1], 16)
        number = bisect_right(self._starts, start) - 1
        if number < 0 or self._starts[number] != start or extent_name(
                start, self._ends[number]) != name:
            raise NotFound(name)
        return FIRST_EXTENT + number

    def entries(self, directory: int, position: int = 0) -> Iterator[tuple[bytes, int, int]]:
        """``(name, inode, next_position)`` of the entries of ``directory`` from ``position``.

        ``position`` is 0 for the first entry, else a ``next_position`` seen before.

        :raises NotFound: if ``directory`` is not a directory.
        """
        if directory == EXTENTS:
            starts, ends = self._starts, self._ends
            for number in range(position, len(starts)):
                yield extent_name(starts[number], ends[number]), FIRST_EXTENT + number, number + 1
            return
        if directory == ROOT:
            entries = _ROOT_ENTRIES
        elif directory == CTL:
            entries = _CTL_ENTRIES
        else:
            raise NotFound(directory)
        for number in range(position, len(entries)):
            name, inode = entries[number]
            yield name, inode, number + 1

    def attributes(self, inode: int) -> Attributes:
        """The attributes of ``inode``.

        :raises NotFound: for an inode the tree does not have.
        """
        if inode == MEM:
            return Attributes(MEM, READ_ONLY_MODE, 1, self.mem_size, self.mem_blocks, True)
        if inode >= FIRST_EXTENT:
            start, end = self.extent(inode)
            size = min(MAX_FILE_SIZE, end - start)
            return Attributes(inode, READ_ONLY_MODE, 1, size, _blocks(size), False)
        if inode == ROOT:
            return Attributes(ROOT, DIRECTORY_MODE, 4, 0, 0, False)
        if inode in (EXTENTS, CTL):
            return Attributes(inode, DIRECTORY_MODE, 2, 0, 0, False)
        if inode == CTL_MAPS:
            size = len(self.maps_text())
            return Attributes(CTL_MAPS, READ_ONLY_MODE, 1, size, _blocks(size), False)
        name = _CONTROL_INODES.get(inode)
        if name is None:
            raise NotFound(inode)
        size = len(ctl.format_value(name, self.control_value(name)))
        return Attributes(inode, CONTROL_MODE, 1, size, _blocks(size), True)

    # ---------------------------------------------------------------- reading

    def read_mem(self, offset: int, size: int) -> Any:
        """Up to ``size`` bytes of ``mem`` from ``offset`` (address ``base + offset``).

        Under ``holes=eio`` the bytes up to the first hole (a short read), under
        ``holes=zero`` exactly the bytes asked for with holes as zeros; empty at or past
        the end of ``mem``.  Runtime complexity: ``O(log n)`` plus, across pieces or
        with ``holes=zero``, a copy.

        :raises HoleError: under ``holes=eio`` if ``base + offset`` is a hole; under
            either policy at a byte lost from a backing file that shrank.
        """
        remaining = self.mem_size - offset
        if remaining <= 0:
            return b""
        if size > remaining:
            size = remaining
        address = self.base + offset
        if not self._zero_filled:
            return self._view(address, size)
        try:
            buffer = self._view(address, size)  # no copy when the range has no hole
        except HoleError:
            return self._read_zero_filled(address, size)
        if len(buffer) == size:
            return buffer
        return self._read_zero_filled(address, size)

    def read_extent(self, inode: int, offset: int, size: int) -> Any:
        """Up to ``size`` bytes of extent file ``inode`` from ``offset``; empty past its end.

        An extent has no holes, so a read is short only at the end of the file.

        :raises HoleError: if a backing file shrank and lost bytes in the range read
            (never a short read: the kernel caches these files and would take a short
            read for the end of the file).
        :raises NotFound: if ``inode`` is not an extent file.
        """
        start, end = self.extent(inode)
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

    def maps_text(self) -> bytes:
        """The text of ``.ctl/maps``: one line per mapping, in insertion order.

        Built once (the mappings do not change while mounted).
        """
        if self._maps_text is None:
            self._maps_text = b"".join(
                str(mapping).encode("utf-8", "surrogateescape") + b"\n"
                for mapping in self._map.mappings)
        return self._maps_text

    def read_text(self, inode: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a ``.ctl/`` file from ``offset``.

        :raises NotFound: if ``inode`` is not a ``.ctl/`` file.
        """
        if inode == CTL_MAPS:
            text = self.maps_text()
        else:
            name = _CONTROL_INODES.get(inode)
            if name is None:
                raise NotFound(inode)
            text = ctl.format_value(name, self.control_value(name))
        return text[offset:offset + size]

    def read(self, inode: int, offset: int, size: int) -> Any:
        """Up to ``size`` bytes of file ``inode`` from ``offset`` (any file of the tree).

        :raises HoleError: see :meth:`read_mem` and :meth:`read_extent`.
        :raises NotFound: if ``inode`` is not a file.
        """
        if inode == MEM:
            return self.read_mem(offset, size)
        if inode >= FIRST_EXTENT:
            return self.read_extent(inode, offset, size)
        return self.read_text(inode, offset, size)

    # ---------------------------------------------------------------- writing

    def write_control(self, inode: int, offset: int, data: bytes) -> int:
        """Set a control from a ``write(2)`` of ``data`` at ``offset``; returns ``len(data)``.

        The write must hold the whole value, at offset 0, with at most one trailing
        newline (SPEC §4.4).  Nothing changes if it is refused.

        :raises ControlValueError: for a non-zero offset or a bad value.
        :raises NotFound: if ``inode`` is not a writable control file.
        """
        name = _CONTROL_INODES.get(inode)
        if name is None:
            raise NotFound(inode)
        if offset != 0:
            raise ctl.ControlValueError(
                f"{name}: write at offset {offset}: write the whole value at offset 0")
        self.set_control(name, ctl.parse(name, bytes(data)))
        return len(data)
