"""What a mount's files show and can change: the map, ``base`` and ``holes`` (SPEC §4.1,
§4.2, §4.4 in docs/mounting.md), and how ``mem`` is served: through the page cache where
that is exact, with ``direct_io`` otherwise (SPEC §4.2.1; docs/mounting.md, "Page
cache").  No FUSE here.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from vmemfs import ctl, values
from vmemfs.errors import HoleError
from vmemfs.memmap import MemoryMap
from vmemfs.sources import Buffer

MAX_FILE_SIZE = (1 << 63) - 1
"""The largest size a FUSE file can have: offsets are signed 64-bit (SPEC §4.1)."""
UPPER_HALF = 1 << 63
BASE_ALIGNMENT = 1 << 32
PAGE_SIZE = 4096
"""The kernel's page: in page-cache mode it asks for whole pages, and a hole must start
and end on a page boundary for the bytes before it to be readable to the byte."""
CACHE_PAGE = "page"
CACHE_DIRECT = "direct"


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


def unaligned_boundaries(extents: list[tuple[int, int]]) -> list[int]:
    """The extent starts and ends that are not multiples of :data:`PAGE_SIZE`, ascending.

    Runtime complexity: ``O(e)`` for ``e`` extents, once per layout.
    """
    mask = PAGE_SIZE - 1
    return [boundary for extent in extents for boundary in extent if boundary & mask]


def _any_between(boundaries: list[int], low: int, high: int) -> bool:
    """Whether a sorted list holds a value ``v`` with ``low < v < high``
    (``O(log n)``)."""
    position = bisect_right(boundaries, low)
    return position < len(boundaries) and boundaries[position] < high


class MountState:
    """The map a mount shows, and the settings ``.ctl/`` changes.

    The layout (extents, the top of the map) is fixed when the state is made (SPEC §4.7);
    ``base``, ``holes``, ``wordsize`` and ``endian`` change afterwards.

    ``cache`` (``"auto"`` or ``"never"``) says whether ``mem`` may be served through the
    page cache; :attr:`mem_page_cached` is the mode the next open of ``mem`` gets
    (SPEC §4.2.1).  Functions in :attr:`listeners` are called, with no argument, after
    every change of what ``mem`` shows (its bytes or its size), so that the kernel's
    cached pages and attributes of ``mem`` can be dropped.

    :raises ControlValueError: for a ``base`` outside ``[0, 2**64)``, an unknown
        ``holes`` policy or an unknown ``cache`` policy.
    """

    def __init__(self, memory_map: MemoryMap, *, base: int | None = None,
                 holes: str = values.HOLES_EIO, cache: str = values.CACHE_AUTO) -> None:
        self.map = memory_map
        self._view = memory_map.view
        self._read_zero_filled = memory_map.read_zero_filled
        self.extents = memory_map.extents()
        self.top = self.extents[-1][1] if self.extents else 0
        self.default_base = default_base(self.extents)
        self.cache: values.Cache = ctl.checked("cache", values.parse_cache, cache)
        self.volatile = memory_map.volatile
        """A source can change under the reader (live memory): never page-cached."""
        self._unaligned = unaligned_boundaries(self.extents)
        self._file_sizes = [(source, source.size()) for source in memory_map.file_sources()]
        self.lost_bytes_seen = False
        """A backing file was found shorter than when mounted, or a page-cached read met
        bytes a source could not serve: from then on ``mem`` opens with ``direct_io``."""
        self.listeners: list[Callable[[], None]] = []
        self.settings_listeners: list[Callable[[], None]] = []
        """Called, with no argument, after a change of word size or endian (what
        ``views/core.elf``'s headers follow)."""
        self.base = 0
        self.mem_size = 0
        self.mem_mapped_bytes = 0
        self.holes: values.Holes = values.HOLES_EIO
        self.zero_filled = False
        self.mem_aligned = False
        """``base`` and every extent boundary inside ``mem`` are multiples of 4096."""
        self.mem_page_cached = False
        self.set_base(self.default_base if base is None else base)
        self.set_holes(holes)

    def set_base(self, base: int) -> None:
        """Show address ``base`` at offset 0 of ``mem``; recompute its size and mode.

        ``mem`` is ``min(2**63 - 1, top - base)`` bytes long (0 when nothing is mapped
        above ``base``).  Runtime complexity: ``O(e)`` for ``e`` extents (the mapped
        bytes), ``O(log e)`` for the alignment.

        :raises ControlValueError: if ``base`` is outside ``[0, 2**64)``.
        """
        if not 0 <= base < values.ADDRESS_LIMIT:
            raise ctl.ControlValueError(f"base: {base:#x} is not in [0, 2**64)")
        size = min(MAX_FILE_SIZE, max(0, self.top - base))
        self.base = base
        self.mem_size = size
        self.mem_mapped_bytes = self.map.mapped_bytes(base, base + size) if size else 0
        self.mem_aligned = base % PAGE_SIZE == 0 and not _any_between(
            self._unaligned, base, base + size)
        self._mode_changed()

    def set_holes(self, holes: str) -> None:
        """How ``mem`` reads holes: ``"eio"`` (fail) or ``"zero"`` (zero bytes).

        :raises ControlValueError: for another value.
        """
        self.holes = ctl.checked(ctl.HOLES, values.parse_holes, holes)
        self.zero_filled = self.holes == values.HOLES_ZERO
        self._mode_changed()

    def _mode_changed(self) -> None:
        """Recompute the mode and tell the listeners that ``mem`` changed."""
        self._choose_mode()
        for listener in self.listeners:
            listener()

    def _choose_mode(self) -> None:
        """Page-cache mode when it is allowed (``cache=auto``), nothing is volatile, no
        byte was lost, and either holes read as zeros or every hole inside ``mem``
        starts and ends on a page boundary."""
        self.mem_page_cached = (
            self.cache == values.CACHE_AUTO and not self.volatile
            and not self.lost_bytes_seen and (self.zero_filled or self.mem_aligned))

    def page_cached_at_open(self) -> bool:
        """Whether ``mem`` opened now is served through the page cache.

        In page-cache mode the backing files are checked first: if one is shorter than
        when mounted, ``mem`` is served with ``direct_io`` from then on (its reads stop
        at the first lost byte, to the byte).  Runtime complexity: one size query
        (``lseek`` or ``fstat``, :meth:`Source.size`) per backing file, in page-cache mode
        only.
        """
        if self.mem_page_cached and any(source.size() < size
                                        for source, size in self._file_sizes):
            self.lost_bytes_seen = True
            self._choose_mode()
        return self.mem_page_cached

    @property
    def cache_mode(self) -> str:
        """``"page"`` or ``"direct"``: how ``mem`` opened now is served."""
        return CACHE_PAGE if self.page_cached_at_open() else CACHE_DIRECT

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
        if name in (ctl.WORDSIZE, ctl.ENDIAN):
            setattr(self.map, name, value)
            for listener in self.settings_listeners:
                listener()
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

    def read_mem_pages(self, offset: int, size: int) -> Buffer:
        """Exactly ``min(size, mem_size - offset)`` bytes of ``mem`` from ``offset``.

        The read of ``mem`` opened in page-cache mode: never short except at the end of
        ``mem`` (the kernel would take a short reply for the end of the file), so a
        request that touches a hole fails as a whole; the kernel then asks again page by
        page, and the reader gets every page before the hole (SPEC §4.2.1).  Under
        ``holes=zero`` holes read as zero bytes.  Runtime complexity: as
        :meth:`read_mem`.

        The kernel asks for pages up to the one holding its idea of the end of the file
        and no further.  A request past the page holding the end of ``mem`` therefore
        comes from a kernel that still thinks ``mem`` larger (``base`` moved while the
        read was on its way): it fails, rather than be answered short, which the kernel
        would take for the end of the file and fill with zeros.

        :raises HoleError: at the first byte of the range that is a hole (under
            ``holes=eio``) or that a source cannot serve (under either policy), or for a
            request past the page holding the end of ``mem``.
        """
        remaining = self.mem_size - offset
        if size > remaining:
            if offset + size > -(-self.mem_size // PAGE_SIZE) * PAGE_SIZE:
                raise HoleError(self.base + min(offset, self.mem_size))
            size = remaining
        try:
            if self.zero_filled or size <= 0:
                buffer = self.read_mem(offset, size)
            else:  # read_mem's own path under holes=eio, one call less on every page
                buffer = self._view(self.base + offset, size)
        except HoleError as error:
            self._note_hole(error.address)
            raise
        if len(buffer) < size:
            address = self.base + offset + len(buffer)
            self._note_hole(address)
            raise HoleError(address)
        return buffer

    def _note_hole(self, address: int) -> None:
        """A page-cached read failed at ``address``: if the index maps it, a source lost
        it (a backing file shrank), and later opens of ``mem`` use ``direct_io``."""
        if not self.lost_bytes_seen and self.map.is_mapped(address):
            self.lost_bytes_seen = True
            self._choose_mode()

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
