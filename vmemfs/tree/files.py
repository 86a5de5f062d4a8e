"""The fixed part of the mount: ``/``, ``mem``, ``extents/`` and ``.ctl/`` (SPEC §4).

::

    ROOT (1)
      mem            MEM (2)           the map from `base` on, as one sparse file
      extents/       EXTENTS (3)       one file per extent, numbered in a range
      .ctl/          CTL (4)
        wordsize  endian  base  holes  (read/write)
        maps  cache  vmcoreinfo        (read-only)
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence

from vmemfs import ctl
from vmemfs.sources import Buffer
from vmemfs.tree.nodes import (
    CONTROL_MODE,
    DIRECTORY_MODE,
    FIRST_RANGE,
    READ_ONLY_MODE,
    Attributes,
    BytesHandle,
    Handle,
    Node,
    NodeTable,
    NotFound,
    RangeOwner,
    Refused,
    blocks,
)
from vmemfs.tree.state import MAX_FILE_SIZE, MountState

ROOT = 1
MEM = 2
EXTENTS = 3
CTL = 4
CTL_WORDSIZE = 5
CTL_ENDIAN = 6
CTL_BASE = 7
CTL_HOLES = 8
CTL_MAPS = 9
CTL_VMCOREINFO = 10
CTL_CACHE = 11
AT = 12
FIND = 13
FIND_TEXT = 14
FIND_HEX = 15
FIND_POINTER = 16
SYM = 17
VIEWS = 18
VIEW_CORE = 19
VIEW_LIME = 20
FIRST_EXTENT = FIRST_RANGE
"""``extents/`` owns the first range: extent ``i`` (ascending) is ``FIRST_EXTENT + i``."""

CONTROL_INODES: dict[str, int] = {
    ctl.WORDSIZE: CTL_WORDSIZE, ctl.ENDIAN: CTL_ENDIAN, ctl.BASE: CTL_BASE,
    ctl.HOLES: CTL_HOLES}

_EXTENT_NAME = re.compile(rb"([0-9a-f]{16})-([0-9a-f]{16,17})")


def extent_name(start: int, end: int) -> bytes:
    """``%016x-%016x``: the extent's first address and its exclusive end.

    The end of an extent that reaches the top of the address space is ``2**64``, which
    takes 17 digits: ``10000000000000000``.

    >>> extent_name(0x1000, 0x3000)
    b'0000000000001000-0000000000003000'
    """
    return b"%016x-%016x" % (start, end)


class Directory(Node):
    """A directory with a fixed list of children, in listing order."""

    def __init__(self, children: Sequence[tuple[bytes, Node]] = (), nlink: int = 2) -> None:
        self.children: list[tuple[bytes, Node]] = list(children)
        self._by_name = dict(self.children)
        self.nlink = nlink
        for _, child in self.children:
            child.parent = self

    def add(self, name: bytes, child: Node) -> None:
        self.children.append((name, child))
        self._by_name[name] = child
        child.parent = self

    def attributes(self) -> Attributes:
        return Attributes(DIRECTORY_MODE, nlink=self.nlink)

    def lookup(self, name: bytes) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFound(name) from None

    def entries(self, position: int) -> Iterator[tuple[bytes, Node, int]]:
        children = self.children
        for number in range(position, len(children)):
            name, child = children[number]
            yield name, child, number + 1


class MemHandle(Handle):
    """``mem`` opened, in the mode chosen at open (SPEC §4.2.1, docs/mounting.md, "Page
    cache").

    Page-cache mode: the kernel caches what it reads (``keep_cache``, so later opens
    find it), and a read is never short except at the end of ``mem``.  Direct mode
    (``direct_io``): every read goes to the daemon and stops short at a hole (SPEC §4.2).
    The mode is fixed for the life of the handle: a change of ``base`` or ``holes``
    applies to the next open.
    """

    def __init__(self, state: MountState, page_cached: bool) -> None:
        self.page_cached = page_cached
        self.direct_io = not page_cached
        self.keep_cache = page_cached
        # The hot path, bound once.
        self.read = (  # type: ignore[method-assign]
            state.read_mem_pages if page_cached else state.read_mem)


class MemFile(Node):
    """``mem``: the map from ``base`` on, holes and all.

    Its attributes change only with ``base``, and the mount drops the kernel's copy then
    (:attr:`MountState.listeners`); so the kernel may keep them while ``mem`` is page-cached
    (a page-cached read would otherwise ask for them at every ``read(2)``).  In direct mode
    they are not kept, so that a size the kernel lowered by itself (a private ``mmap``
    filled with a short reply) is corrected at the next ``stat``.
    """

    def __init__(self, state: MountState) -> None:
        self.state = state

    def attributes(self) -> Attributes:
        state = self.state
        return Attributes(READ_ONLY_MODE, state.mem_size, 1, blocks(state.mem_mapped_bytes),
                          volatile=not state.mem_page_cached)

    def open(self, writing: bool, owner: bool) -> Handle:
        if writing:
            raise Refused(self.inode)
        return MemHandle(self.state, self.state.page_cached_at_open())


class ExtentHandle(Handle):
    """An extent file opened: page-cached (it has no holes, SPEC §4.3)."""

    def __init__(self, state: MountState, start: int, end: int) -> None:
        self._read_extent = state.read_extent
        self.start = start
        self.end = end

    def read(self, offset: int, size: int) -> Buffer:
        return self._read_extent(self.start, self.end, offset, size)


class ExtentFile(Node):
    """One extent ``[start, end)`` as a file."""

    def __init__(self, state: MountState, inode: int, start: int, end: int) -> None:
        self.state = state
        self.inode = inode
        self.start = start
        self.end = end

    def attributes(self) -> Attributes:
        size = min(MAX_FILE_SIZE, self.end - self.start)
        return Attributes(READ_ONLY_MODE, size, 1, blocks(size))

    def open(self, writing: bool, owner: bool) -> Handle:
        if writing:
            raise Refused(self.inode)
        return ExtentHandle(self.state, self.start, self.end)


class ExtentsDirectory(Node, RangeOwner):
    """``extents/``: one file per extent, ascending; children resolved by number."""

    def __init__(self, state: MountState, table: NodeTable) -> None:
        self.state = state
        self._starts = [start for start, _ in state.extents]
        self._ends = [end for _, end in state.extents]
        self.first = table.add_range(len(self._starts), self)

    def attributes(self) -> Attributes:
        return Attributes(DIRECTORY_MODE, nlink=2)

    def child(self, inode: int) -> Node:
        number = inode - self.first
        if not 0 <= number < len(self._starts):
            raise NotFound(inode)
        node = ExtentFile(self.state, inode, self._starts[number], self._ends[number])
        node.parent = self
        return node

    def lookup(self, name: bytes) -> Node:
        match = _EXTENT_NAME.fullmatch(name)
        if match is None:
            raise NotFound(name)
        start = int(match[1], 16)
        number = bisect_right(self._starts, start) - 1
        if number < 0 or self._starts[number] != start or extent_name(
                start, self._ends[number]) != name:
            raise NotFound(name)
        return self.child(self.first + number)

    def entries(self, position: int) -> Iterator[tuple[bytes, Node, int]]:
        starts, ends = self._starts, self._ends
        for number in range(position, len(starts)):
            yield (extent_name(starts[number], ends[number]), self.child(self.first + number),
                   number + 1)


class ControlFile(Node):
    """A read/write ``.ctl/`` value (SPEC §4.4): read gives the value and a newline."""

    def __init__(self, name: str, state: MountState) -> None:
        self.name = name
        self.state = state

    def text(self) -> bytes:
        return ctl.format_value(self.name, self.state.control_value(self.name))

    def attributes(self) -> Attributes:
        size = len(self.text())
        return Attributes(CONTROL_MODE, size, 1, blocks(size), volatile=True)

    def open(self, writing: bool, owner: bool) -> Handle:
        if writing and not owner:
            raise Refused(self.inode)
        return ControlHandle(self)

    def truncate(self, owner: bool) -> None:
        if not owner:
            raise Refused(self.inode)

    def write(self, offset: int, data: bytes) -> int:
        """Set the value from a ``write(2)`` of ``data`` at ``offset``; returns ``len(data)``.

        The write must hold the whole value, at offset 0, with at most one trailing
        newline.  Nothing changes if it is refused.

        :raises ControlValueError: for a non-zero offset or a bad value.
        """
        if offset != 0:
            raise ctl.ControlValueError(
                f"{self.name}: write at offset {offset}: write the whole value at offset 0")
        self.state.set_control(self.name, ctl.parse(self.name, bytes(data)))
        return len(data)


class ControlHandle(Handle):
    """A ``.ctl/`` value opened: reads give the current value, writes set it."""

    direct_io = True
    keep_cache = False

    def __init__(self, control: ControlFile) -> None:
        self.control = control

    def read(self, offset: int, size: int) -> Buffer:
        return self.control.text()[offset:offset + size]

    def write(self, offset: int, data: bytes) -> int:
        return self.control.write(offset, data)


class TextFile(Node):
    """A read-only text (``.ctl/maps``, ``.ctl/vmcoreinfo``), made when first needed."""

    def __init__(self, make: Callable[[], bytes], *, volatile: bool = False) -> None:
        self._make = make
        self._text: bytes | None = None
        self.volatile = volatile

    def text(self) -> bytes:
        if self.volatile:
            return self._make()
        if self._text is None:
            self._text = self._make()
        return self._text

    def attributes(self) -> Attributes:
        size = len(self.text())
        return Attributes(READ_ONLY_MODE, size, 1, blocks(size), volatile=self.volatile)

    def open(self, writing: bool, owner: bool) -> Handle:
        if writing:
            raise Refused(self.inode)
        return BytesHandle(self.text(), direct_io=self.volatile)


def maps_text(state: MountState) -> bytes:
    """The text of ``.ctl/maps``: how the layout was built (``#`` lines, when the map
    says), then one line per mapping, in insertion order."""
    notes = b"".join(b"# " + note.encode("utf-8", "surrogateescape") + b"\n"
                     for note in state.map.notes)
    return notes + b"".join(str(mapping).encode("utf-8", "surrogateescape") + b"\n"
                            for mapping in state.map.mappings)


def cache_text(state: MountState) -> bytes:
    """The text of ``.ctl/cache``: ``page`` or ``direct``, how the next open of ``mem`` is
    served (SPEC §4.2.1), and a newline."""
    return state.cache_mode.encode("ascii") + b"\n"
