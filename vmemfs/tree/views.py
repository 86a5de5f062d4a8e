"""``views/``: the map in other tools' formats, served on the fly (SPEC §4.11).

::

    views/          VIEWS (18)
      core.elf      VIEW_CORE (19)   the ELF core `vmemfs save` would write now
      lime          VIEW_LIME (20)   LiME, one record per extent

Each file is a :class:`Splice`: fixed bytes (headers, padding) and runs of the map's
bytes, in file order.  The headers come from the one description of each format —
:func:`vmemfs.formats.save.core_layout` and :func:`vmemfs.formats.limelayout.lime_layout`
— computed at open from the current layout, word size and byte order, and fixed for that
open; the data is read through the map at each request, never copied ahead.

Neither file has a hole, so both go through the page cache (no ``direct_io``): a read the
map cannot serve in full (a page of a live process that went away, a corrupt compressed
page) fails with ``EIO`` (:class:`~vmemfs.errors.HoleError`), never short, so the kernel
retries page by page and a reader gets every byte before the bad page.  Pages cached by an
earlier open are kept when the headers are the same as at that open and no source is
volatile; otherwise they are dropped at open.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from vmemfs.errors import HoleError
from vmemfs.formats.limelayout import HEADER_SIZE, lime_layout
from vmemfs.formats.save import core_layout, kernel_note
from vmemfs.memmap import MemoryMap
from vmemfs.sources import Buffer
from vmemfs.tree.files import VIEW_CORE, VIEW_LIME, VIEWS, Directory
from vmemfs.tree.nodes import (
    READ_ONLY_MODE,
    Attributes,
    Handle,
    Node,
    NodeTable,
    Refused,
    blocks,
)
from vmemfs.tree.state import MAX_FILE_SIZE, MountState

LayoutKey = tuple[int | None, str | None]
"""What the headers of ``core.elf`` depend on besides the layout: word size, byte order."""


class Splice:
    """A read-only file made of segments: fixed bytes, or a run of the map's bytes.

    Segment ``k`` covers file offsets ``[offsets[k], offsets[k + 1])``.  A data segment
    starts at map address ``origins[k]``; a fixed one at offset ``origins[k]`` of
    ``fixed``.  Segments are never empty.

    Runtime complexity of :meth:`read`: ``O(log s)`` for ``s`` segments (a bisection),
    plus ``O(k)`` for the ``k`` segments one read spans, plus the map's read.
    """

    __slots__ = ("_fixed", "_is_data", "_offsets", "_origins", "_read_into", "_view", "size")

    def __init__(self, memory_map: MemoryMap, fixed: bytes, offsets: list[int],
                 origins: list[int], is_data: list[bool], size: int) -> None:
        self.size = min(size, MAX_FILE_SIZE)
        self._fixed = memoryview(fixed)
        self._offsets = [*offsets, size]
        self._origins = origins
        self._is_data = is_data
        self._view = memory_map.view
        self._read_into = memory_map.read_into

    def read(self, offset: int, size: int) -> Buffer:
        """The bytes at ``[offset, offset + size)``, short only at the end of the file.

        Within one data segment the map's own buffer (zero copy where the source allows);
        across segments a new ``bytearray``.

        :raises HoleError: at the address of the first byte in the range that the map
            cannot serve.
        """
        end = offset + size
        if end > self.size:
            end = self.size
        if offset >= end:
            return b""
        offsets = self._offsets
        number = bisect_right(offsets, offset) - 1
        if end <= offsets[number + 1]:
            origin = self._origins[number] + offset - offsets[number]
            length = end - offset
            if not self._is_data[number]:
                return self._fixed[origin:origin + length]
            buffer = self._view(origin, length)
            if len(buffer) < length:
                raise HoleError(origin + len(buffer))
            return buffer
        return self._assemble(number, offset, end)

    def _assemble(self, number: int, offset: int, end: int) -> bytearray:
        """``[offset, end)`` across segments, from segment ``number`` on, into one buffer."""
        result = bytearray(end - offset)
        out = memoryview(result)
        offsets, origins, is_data = self._offsets, self._origins, self._is_data
        fixed, read_into = self._fixed, self._read_into
        position = offset
        while position < end:
            segment_end = min(offsets[number + 1], end)
            origin = origins[number] + position - offsets[number]
            length = segment_end - position
            at = position - offset
            if is_data[number]:
                count = read_into(origin, out[at:at + length])
                if count < length:
                    raise HoleError(origin + count)
            else:
                out[at:at + length] = fixed[origin:origin + length]
            position = segment_end
            number += 1
        return result


def core_splice(state: MountState) -> Splice:
    """``core.elf`` for the map's current word size and byte order: the head, then each
    extent's data where :func:`~vmemfs.formats.save.core_layout` puts it.

    Runtime complexity: ``O(n)`` for ``n`` extents.
    """
    memory_map = state.map
    layout = core_layout(state.extents, memory_map.wordsize, memory_map.endian,
                         memory_map.machine, kernel_note(memory_map))
    count = len(state.extents)
    offsets = [0, *layout.offsets.tolist()]
    origins = [0, *layout.starts.tolist()]
    is_data = [False, *([True] * count)]
    return Splice(memory_map, layout.head, offsets, origins, is_data, layout.size)


def lime_splice(state: MountState) -> Splice:
    """``lime``: each extent's record header, then its data
    (:func:`~vmemfs.formats.limelayout.lime_layout`).

    Runtime complexity: ``O(n)`` for ``n`` extents.
    """
    layout = lime_layout(state.extents)
    count = len(state.extents)
    offsets = np.empty(2 * count, dtype=np.uint64)
    offsets[0::2] = layout.header_offsets
    offsets[1::2] = layout.header_offsets + np.uint64(HEADER_SIZE)
    origins = np.empty(2 * count, dtype=np.uint64)
    origins[0::2] = np.arange(count, dtype=np.uint64) * np.uint64(HEADER_SIZE)
    origins[1::2] = layout.starts
    return Splice(state.map, layout.headers, offsets.tolist(), origins.tolist(),
                  [False, True] * count, layout.size)


class ViewHandle(Handle):
    """A view opened: its :class:`Splice`, fixed for this open, through the page cache."""

    direct_io = False

    def __init__(self, splice: Splice, *, keep_cache: bool) -> None:
        self.splice = splice
        self.keep_cache = keep_cache
        self.read = splice.read  # type: ignore[method-assign]  # the hot path, bound once


class CoreFile(Node):
    """``views/core.elf``: its headers follow ``.ctl/wordsize`` and ``.ctl/endian``.

    The splice for the current settings is cached (one entry), so ``stat`` after
    ``stat`` costs a comparison; a change of settings costs ``O(n)`` once.
    """

    def __init__(self, state: MountState) -> None:
        self.state = state
        self.volatile = state.map.volatile
        self._key: LayoutKey | None = None
        self._splice: Splice | None = None
        self._opened: LayoutKey | None = None

    def _current(self) -> tuple[LayoutKey, Splice]:
        memory_map = self.state.map
        key = (memory_map.wordsize, memory_map.endian)
        if self._splice is None or key != self._key:
            self._splice = core_splice(self.state)
            self._key = key
        return key, self._splice

    def attributes(self) -> Attributes:
        # Cacheable: a change of word size or endian makes the adapter drop the kernel's
        # copy (MountState.settings_listeners), so warm reads need no daemon round trip.
        size = self._current()[1].size
        return Attributes(READ_ONLY_MODE, size, 1, blocks(size))

    def open(self, writing: bool, owner: bool) -> Handle:
        if writing:
            raise Refused(self.inode)
        key, splice = self._current()
        keep_cache = not self.volatile and key == self._opened
        self._opened = key
        return ViewHandle(splice, keep_cache=keep_cache)


class LimeFile(Node):
    """``views/lime``: depends on the layout only, so it is made once, when first needed."""

    def __init__(self, state: MountState) -> None:
        self.state = state
        self.volatile = state.map.volatile
        self._splice: Splice | None = None

    def _current(self) -> Splice:
        if self._splice is None:
            self._splice = lime_splice(self.state)
        return self._splice

    def attributes(self) -> Attributes:
        size = self._current().size
        return Attributes(READ_ONLY_MODE, size, 1, blocks(size))

    def open(self, writing: bool, owner: bool) -> Handle:
        if writing:
            raise Refused(self.inode)
        return ViewHandle(self._current(), keep_cache=not self.volatile)


def add_views(state: MountState, table: NodeTable) -> Directory:
    """The ``views/`` directory over ``state``, its nodes given their fixed numbers.

    Runtime complexity: ``O(1)``; each file's layout is computed when first asked for.
    """
    views = Directory()
    views.add(b"core.elf", table.add_fixed(VIEW_CORE, CoreFile(state)))
    views.add(b"lime", table.add_fixed(VIEW_LIME, LimeFile(state)))
    table.add_fixed(VIEWS, views)
    return views
