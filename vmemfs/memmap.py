"""The memory map: mappings of files and bytes at 64-bit addresses, read like memory.

:class:`MemoryMap` offers the whole API of the original virt-mem memory map (create,
add, wordsize/endian, byte/integer/string/pointer accessors, search, save/load) over a
:class:`~vmemfs.index.SegmentIndex` and :mod:`vmemfs.sources`.
"""

from __future__ import annotations

import operator
import os
import re
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Mapping as AbstractMapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vmemfs.errors import HoleError, NoEndianError, NoWordsizeError
from vmemfs.index import ADDRESS_LIMIT, MASK64, Piece, SegmentIndex, check_range
from vmemfs.search import iter_matches
from vmemfs.sources import Buffer, FileSource, Source, SourceSpec, open_file_source

Endian = Literal["little", "big"]

_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\0")
_STRING_STEP = 256


@dataclass(frozen=True)
class Mapping:
    """One added mapping: ``length`` bytes of ``source`` from ``offset``, at ``address``."""

    address: int
    length: int
    source: str
    offset: int
    kind: str
    """``"file"``, ``"bytes"`` or ``"elf"`` (a program header's load)."""

    @property
    def end(self) -> int:
        """One past the last address covered."""
        return self.address + self.length

    def __str__(self) -> str:
        return (f"{self.address:#018x}-{self.end:#018x} {self.kind} {self.source} "
                f"offset={self.offset:#x} length={self.length:#x}")


class MemoryMap:
    """A sparse 64-bit address space assembled from files and byte strings.

    Mappings added later take precedence over earlier ones wherever they overlap; the
    earlier ones stay visible everywhere else.  Addresses that no mapping covers are
    holes: accessors raise :class:`~vmemfs.HoleError` there, searches skip them.

    >>> m = MemoryMap.of_bytes(b"hello, world\\0", 0xffffffff81000000)
    >>> m.add_bytes(b"HELLO", 0xffffffff81000000)
    >>> m.get_string(0xffffffff81000000)
    b'HELLO, world'
    >>> m.endian = "little"
    >>> m.get_int32(0xffffffff81000007)
    1819438967
    """

    def __init__(self) -> None:
        self._index = SegmentIndex()
        self._sources: list[Source] = []
        self._source_ids: dict[tuple[int, int], int] = {}
        # What was added, in order: single mappings, and the regions of bulk adds kept as
        # arrays (an ELF core's 100,000 loads need no 100,000 objects until asked for).
        self._log: list[Mapping | _RegionBatch | _BytesBatch] = []
        self._mapping_count = 0
        self._mappings_cache: tuple[Mapping, ...] | None = ()
        self._used_sources: set[int] = set()
        # Every add_bytes copy, end to end in one source (see add_bytes).
        self._arena: _BytesArena | None = None
        self._arena_id = -1
        self._wordsize: int | None = None
        self._endian: Endian | None = None
        self.machine: int | None = None
        """The ELF ``e_machine`` of a loaded ELF, kept when saving (``None``: unknown)."""
        self.format: str | None = None
        """What :func:`vmemfs.open` found the source to be (``"elf"``, ``"kdump"``, ...)."""
        self.details: list[tuple[str, str]] = []
        """What the format tells about the source, as ``(label, text)`` lines for
        ``vmemfs info`` (compression, pages dumped, kernel release, ...)."""
        self.notes: list[str] = []
        """How the layout was built, when that is more than its mappings say (a kernel
        virtual view's page-table walk): shown by ``vmemfs info`` and ``.ctl/maps``."""
        self.preferred_base: int | None = None
        """The ``base`` a map file asks a mount to use, or ``None``."""
        self.vmcoreinfo: bytes | None = None
        """A kernel dump's VMCOREINFO text (SPEC §3.5), or ``None``."""
        self.requested_view: bool | int | None = None
        """A map file's ``virtual`` key: the kernel's virtual view it asks for."""
        self.kernel_virtual = False
        """Whether this is a kernel's virtual view (``-o virtual``): addresses are
        virtual ones, served through a physical map."""
        self.symbols: AbstractMapping[str, int] | None = None
        """Symbol names to addresses when a symbol table was given (SPEC §3.9)."""

    # ---------------------------------------------------------------- building

    @classmethod
    def of_file(cls, src: SourceSpec, address: int) -> MemoryMap:
        """A new map holding the whole of one file at ``address`` (see :meth:`add_file`)."""
        memmap = cls()
        memmap.add_file(src, address)
        return memmap

    @classmethod
    def of_bytes(cls, data: bytes, address: int) -> MemoryMap:
        """A new map holding ``data`` at ``address`` (see :meth:`add_bytes`)."""
        memmap = cls()
        memmap.add_bytes(data, address)
        return memmap

    def add_file(self, src: SourceSpec, address: int, *, offset: int = 0,
                 length: int | None = None) -> None:
        """Map ``length`` bytes of a file from ``offset`` at ``address`` (default: to its end).

        The new mapping takes precedence over earlier ones wherever they overlap.  The
        file stays open for as long as the map lives.

        Runtime complexity: amortised ``O(log n)``.

        :raises ValueError: if ``offset + length`` passes the end of the file (the message
            names the file), or the range passes ``2**64``.
        :raises OSError: if the file cannot be opened.
        """
        source, source_id = self._file_source(src)
        size = source.size()
        offset = _index(offset, "offset")
        if length is None:
            length = size - offset
        length = _index(length, "length")
        if offset < 0 or length < 0 or offset + length > size:
            self._forget_unused(source_id)
            raise ValueError(
                f"{source.name}: offset {offset:#x} + length {length:#x} passes the end of "
                f"the file ({size:#x} bytes)")
        self._add(source_id, address, offset, length, "file")

    def add_file_regions(self, src: SourceSpec, regions: Iterable[tuple[int, int, int]],
                         *, kind: str = "file") -> None:
        """Map many regions ``(address, file_offset, length)`` of one file, in order.

        The same result as one :meth:`add_file` per region (later regions win), with the
        file opened once; see :meth:`add_file_arrays`.

        :raises ValueError: naming the file and the region's position, if a region passes
            the end of the file or ``2**64``; nothing is added then.
        """
        rows = [(int(a), int(o), int(n)) for a, o, n in regions]
        self.add_file_arrays(src, [a for a, _, _ in rows], [o for _, o, _ in rows],
                             [n for _, _, n in rows], kind=kind)

    def add_file_arrays(self, src: SourceSpec, addresses: Sequence[int] | np.ndarray,
                        offsets: Sequence[int] | np.ndarray,
                        lengths: Sequence[int] | np.ndarray, *, kind: str = "file") -> None:
        """Map regions ``[offsets[i], offsets[i] + lengths[i])`` of one file at ``addresses[i]``.

        Regions apply in order (later ones win); every region is checked before any is
        added, with numpy, and ascending, disjoint regions are inserted in one vectorised
        merge, so 100,000 regions take milliseconds.

        :raises ValueError: naming the file and the first bad region's position, if a
            region is negative, passes the end of the file or passes ``2**64``; nothing is
            added then.
        """
        source, source_id = self._file_source(src)
        self._add_regions(source, source_id, addresses, offsets, lengths, kind)

    def add_source(self, source: Source, address: int, *, offset: int = 0,
                   length: int | None = None, kind: str = "source") -> None:
        """Map ``length`` bytes of any :class:`~vmemfs.sources.Source` from ``offset``.

        The new mapping takes precedence over earlier ones wherever they overlap (as
        drgn's ``add_memory_segment``).  Bytes the source cannot serve read as holes.
        ``length`` defaults to the rest of the source.

        Runtime complexity: amortised ``O(log n)``.

        :raises ValueError: if ``offset + length`` passes ``source.size()`` (the message
            names the source) or the range passes ``2**64``; nothing is added then.
        """
        size = source.size()
        offset = _index(offset, "offset")
        length = size - offset if length is None else _index(length, "length")
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(
                f"{source.name}: offset {offset:#x} + length {length:#x} passes the end of "
                f"the source ({size:#x} bytes)")
        self._sources.append(source)
        self._add(len(self._sources) - 1, address, offset, length, kind)

    def add_source_arrays(self, source: Source, addresses: Sequence[int] | np.ndarray,
                          offsets: Sequence[int] | np.ndarray,
                          lengths: Sequence[int] | np.ndarray, *,
                          kind: str = "source") -> None:
        """Map many regions of one source at once, as :meth:`add_file_arrays` does.

        :raises ValueError: naming the source and the first bad region; nothing is added.
        """
        self._sources.append(source)
        self._add_regions(source, len(self._sources) - 1, addresses, offsets, lengths, kind)

    def _add_regions(self, source: Source, source_id: int,
                     addresses: Sequence[int] | np.ndarray, offsets: Sequence[int] | np.ndarray,
                     lengths: Sequence[int] | np.ndarray, kind: str) -> None:
        try:
            size = source.size()
            address_array = _as_u64(addresses, source.name, "address")
            offset_array = _as_u64(offsets, source.name, "offset")
            length_array = _as_u64(lengths, source.name, "length")
            if not len(address_array) == len(offset_array) == len(length_array):
                raise ValueError(f"{source.name}: regions need addresses, offsets and lengths "
                                 "of one count")
            source_size = np.uint64(size)
            past_source = (offset_array > source_size) | (
                length_array > source_size - np.minimum(offset_array, source_size))
            past_top = (length_array > 0) & (
                length_array - np.uint64(1) > np.uint64(MASK64) - address_array)
            noun = "file" if isinstance(source, FileSource) else "source"
            for bad, what in ((past_source, f"the end of the {noun}"), (past_top, "2**64")):
                if bool(bad.any()):
                    number = int(np.flatnonzero(bad)[0])
                    raise ValueError(
                        f"{source.name}: region {number}: [{int(address_array[number]):#x}, "
                        f"+{int(length_array[number]):#x}) from offset "
                        f"{int(offset_array[number]):#x} passes {what} (the {noun} has "
                        f"{size:#x} bytes)")
        except ValueError:
            self._forget_unused(source_id)
            raise
        if len(address_array) == 0:
            self._forget_unused(source_id)
            return
        nonempty = length_array > 0
        starts = address_array[nonempty]
        self._index.insert_runs(
            starts,
            starts + (length_array[nonempty] - np.uint64(1)),
            np.full(len(starts), source_id, dtype=np.int32),
            offset_array[nonempty] - starts,
        )
        self._used_sources.add(source_id)
        self._record(_RegionBatch(source.name, kind, address_array, offset_array,
                                  length_array))

    def add_bytes(self, data: bytes | bytearray | memoryview, address: int) -> None:
        """Map a copy of ``data`` at ``address``; it takes precedence where it overlaps.

        Runtime complexity: amortised ``O(log n)``, plus copying ``data`` (a ``bytes``
        object is kept as it is: it cannot change).  The copies of all calls are kept end
        to end in one source, and consecutive calls are recorded in arrays, so a call
        makes no Python object that the garbage collector would have to visit.

        :raises ValueError: if the range passes ``2**64`` (or ``address`` is negative).
        :raises TypeError: if ``address`` is not an integer.
        """
        data = bytes(data)
        address = _index(address, "address")
        length = len(data)
        end = address + length
        if address < 0 or end > ADDRESS_LIMIT:
            check_range(address, end)
        arena = self._arena
        if arena is None:
            arena = self._arena = _BytesArena()
            self._sources.append(arena)
            self._arena_id = len(self._sources) - 1
            self._used_sources.add(self._arena_id)
        if length:
            offset = arena.append(data)
            self._index.insert(address, end, self._arena_id, (offset - address) & MASK64)
        if address > MASK64:                 # an empty mapping at 2**64: no array holds it
            self._record(Mapping(address, 0, arena.name, 0, "bytes"))
            return
        log = self._log
        batch = log[-1] if log else None
        if type(batch) is not _BytesBatch:
            batch = _BytesBatch()
            log.append(batch)
        batch.addresses.append(address)
        batch.lengths.append(length)
        self._mapping_count += 1
        self._mappings_cache = None

    def _add(self, source_id: int, address: int, offset: int, length: int,
             kind: str) -> None:
        address = _index(address, "address")
        try:
            check_range(address, address + length)
        except ValueError:
            self._forget_unused(source_id)
            raise
        self._index.insert(address, address + length, source_id, (offset - address) & MASK64)
        self._used_sources.add(source_id)
        self._record(Mapping(address, length, self._sources[source_id].name, offset, kind))

    def _record(self, entry: Mapping | _RegionBatch | _BytesBatch) -> None:
        self._log.append(entry)
        self._mapping_count += 1 if isinstance(entry, Mapping) else len(entry.addresses)
        self._mappings_cache = None

    def _file_source(self, src: SourceSpec) -> tuple[Source, int]:
        source = open_file_source(src)
        if isinstance(source, FileSource):
            known = self._source_ids.get(source.identity)
            if known is not None:
                source.close()
                return self._sources[known], known
            self._source_ids[source.identity] = len(self._sources)
        self._sources.append(source)
        return source, len(self._sources) - 1

    def _forget_unused(self, source_id: int) -> None:
        """Drop a just-opened source again if no mapping uses it (after a failed add)."""
        if source_id != len(self._sources) - 1 or source_id in self._used_sources:
            return
        source = self._sources.pop()
        if isinstance(source, FileSource):
            self._source_ids.pop(source.identity, None)
        source.close()

    def add_elf(self, path: str | os.PathLike[str], *, physical: bool = False) -> None:
        """Add every ``PT_LOAD`` of an ELF file (see :mod:`vmemfs.formats.elf`).

        :raises vmemfs.FormatError: if the file is not a well-formed ELF.
        """
        from vmemfs.formats.elf import add_elf

        add_elf(self, path, physical=physical)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, physical: bool = False) -> MemoryMap:
        """A new map from any ELF file, including one written by :meth:`save`.

        :raises vmemfs.FormatError: if the file is not a well-formed ELF.
        :raises OSError: if it cannot be read.
        """
        memmap = cls()
        try:
            memmap.add_elf(path, physical=physical)
        except BaseException:
            memmap.close()
            raise
        return memmap

    def save(self, path: str | os.PathLike[str],
             progress: Callable[[int, int], None] | None = None) -> None:
        """Write the map as an ELF core file (one ``PT_LOAD`` per extent), atomically.

        ``progress``, if given, is called with ``(bytes done, bytes in all)``.

        :raises OSError: if the file cannot be written; nothing is left at ``path`` then.
        """
        from vmemfs.formats.save import save

        save(self, path, progress=progress)

    @property
    def volatile(self) -> bool:
        """Whether any mapped source can change under the reader (live memory)."""
        return any(self._sources[number].volatile for number in self._used_sources)

    def close(self) -> None:
        """Close every backing file.  The map must not be read afterwards."""
        for source in self._sources:
            source.close()

    # ---------------------------------------------------------------- wordsize, endian

    @property
    def wordsize(self) -> int | None:
        """The word size in bits (32 or 64), or ``None`` while unset.

        :raises ValueError: on assigning anything but 32, 64 or ``None``.
        """
        return self._wordsize

    @wordsize.setter
    def wordsize(self, value: int | None) -> None:
        if value is not None and value not in (32, 64):
            raise ValueError(f"word size must be 32, 64 or None, not {value!r}")
        self._wordsize = value

    @property
    def endian(self) -> Endian | None:
        """The byte order, ``"little"`` or ``"big"``, or ``None`` while unset.

        :raises ValueError: on assigning anything else.
        """
        return self._endian

    @endian.setter
    def endian(self, value: Endian | None) -> None:
        if value is not None and value not in ("little", "big"):
            raise ValueError(f"endian must be 'little', 'big' or None, not {value!r}")
        self._endian = value

    def _word_bytes(self, operation: str) -> int:
        if self._wordsize is None:
            raise NoWordsizeError(operation)
        return self._wordsize // 8

    def _byteorder(self, operation: str) -> Endian:
        if self._endian is None:
            raise NoEndianError(operation)
        return self._endian

    # ---------------------------------------------------------------- reading

    def read_into(self, address: int, buffer: memoryview | bytearray) -> int:
        """Copy bytes from ``address`` into ``buffer`` up to the first hole or lost byte.

        Returns how many bytes were copied (0 if ``address`` is a hole).

        Runtime complexity: ``O(log n + k)`` for ``k`` pieces, plus the copy.

        :raises ValueError: if ``address`` is outside ``[0, 2**64)``.
        """
        view = memoryview(buffer).cast("B")
        want = min(len(view), ADDRESS_LIMIT - _check_address(address))
        if want == 0:
            return 0
        piece = self._index.lookup(address)
        if piece is None:
            return 0
        sources = self._sources
        if address + want <= piece.end:
            return sources[piece.source].read_into(piece.offset + address - piece.start,
                                                   view[:want])
        done = 0
        for piece in self._index.resolve(address, address + want):
            if piece.start != address + done:
                break
            length = piece.end - piece.start
            count = sources[piece.source].read_into(piece.offset, view[done:done + length])
            done += count
            if count < length:
                break
        return done

    def read(self, address: int, size: int) -> bytes:
        """The bytes from ``address`` up to the first hole, at most ``size`` of them.

        A hole at ``address`` gives ``b""``; a read that meets a hole is short.  This is
        the primitive a filesystem read needs.

        :raises ValueError: if ``address`` is outside ``[0, 2**64)`` or ``size < 0``.
        """
        size = _check_size(size)
        buffer = bytearray(min(size, ADDRESS_LIMIT - _check_address(address)))
        count = self.read_into(address, buffer)
        del buffer[count:]
        return bytes(buffer)

    def get_bytes(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes from ``address``.

        :raises HoleError: at the first unmapped address in ``[address, address + size)``.
        :raises ValueError: if the range is not inside ``[0, 2**64]`` or ``size < 0``.
        """
        size = _check_size(size)
        check_range(_check_address(address), address + size)
        data = self.read(address, size)
        if len(data) < size:
            raise HoleError(address + len(data))
        return data

    def get_byte(self, address: int) -> int:
        """The byte at ``address``.

        :raises HoleError: if ``address`` is unmapped.
        """
        return self.get_bytes(address, 1)[0]

    def view(self, address: int, size: int) -> memoryview | bytes | bytearray:
        """Up to ``size`` bytes from ``address`` to the first hole, without copying if can be.

        Within one piece this is a zero-copy view of the source (an ``mmap`` slice for a
        file), meant only to be handed to the kernel as a FUSE reply payload: reading a view
        of a file that shrank from Python would raise ``SIGBUS``.  Across pieces the bytes
        are copied.

        :raises HoleError: if ``address`` is unmapped or its byte was lost from a file.
        """
        piece = self._index.lookup(address)
        if piece is None:
            raise HoleError(address)
        start, piece_end, source, offset = piece
        end = address + size
        if end <= piece_end:
            result = self._sources[source].view(offset + address - start, size)
        elif self._index.lookup(piece_end) is None:
            result = self._sources[source].view(offset + address - start, piece_end - address)
        else:
            buffer = bytearray(min(size, ADDRESS_LIMIT - address))
            count = self.read_into(address, buffer)
            del buffer[count:]
            result = buffer
        if not len(result):
            raise HoleError(address)
        return result

    def read_zero_filled(self, address: int, size: int) -> bytearray:
        """``size`` bytes from ``address``, with holes read as zero bytes.

        :raises HoleError: at the first byte lost from a backing file that shrank.
        :raises ValueError: if the range is not inside ``[0, 2**64]``.
        """
        size = _check_size(size)
        check_range(_check_address(address), address + size)
        buffer = bytearray(size)
        view = memoryview(buffer)
        sources = self._sources
        for piece in self._index.resolve(address, address + size):
            length = piece.end - piece.start
            at = piece.start - address
            count = sources[piece.source].read_into(piece.offset, view[at:at + length])
            if count < length:
                raise HoleError(piece.start + count)
        return buffer

    def lost_bytes_end(self, address: int) -> int:
        """The end of the piece that serves ``address`` (``address + 1`` for a hole)."""
        piece = self._index.lookup(address)
        return address + 1 if piece is None else piece.end

    def is_mapped(self, address: int) -> bool:
        """Whether ``address`` is covered by a mapping.  Runtime complexity: ``O(log n)``."""
        return self._index.lookup(address) is not None

    # ---------------------------------------------------------------- integers

    def _get_int(self, address: int, size: int, signed: bool, operation: str) -> int:
        byteorder = self._byteorder(operation)
        return int.from_bytes(self.get_bytes(address, size), byteorder, signed=signed)

    def get_int32(self, address: int) -> int:
        """The signed 32-bit integer at ``address``, in the map's byte order.

        :raises NoEndianError: if the endian is unset.
        :raises HoleError: at the first unmapped byte.
        """
        return self._get_int(address, 4, True, "get_int32")

    def get_int64(self, address: int) -> int:
        """The signed 64-bit integer at ``address``, in the map's byte order.

        :raises NoEndianError: if the endian is unset.
        :raises HoleError: at the first unmapped byte.
        """
        return self._get_int(address, 8, True, "get_int64")

    def get_c_int(self, address: int) -> int:
        """The signed C ``int`` (32 bits on every Linux ABI) at ``address``.

        Like the original, it needs the word size set, although an ``int`` does not
        depend on it.

        :raises NoWordsizeError: if the word size is unset.
        :raises NoEndianError: if the endian is unset.
        :raises HoleError: at the first unmapped byte.
        """
        self._word_bytes("get_c_int")
        return self._get_int(address, 4, True, "get_c_int")

    def get_c_long(self, address: int) -> int:
        """The signed C ``long`` (the word size) at ``address``.

        :raises NoWordsizeError: if the word size is unset.
        :raises NoEndianError: if the endian is unset.
        :raises HoleError: at the first unmapped byte.
        """
        return self._get_int(address, self._word_bytes("get_c_long"), True, "get_c_long")

    def follow_pointer(self, address: int) -> int:
        """The address stored at ``address``: an unsigned word in the map's byte order.

        :raises NoWordsizeError: if the word size is unset.
        :raises NoEndianError: if the endian is unset.
        :raises HoleError: at the first unmapped byte.
        """
        return self._get_int(address, self._word_bytes("follow_pointer"), False,
                             "follow_pointer")

    def succ_long(self, address: int) -> int:
        """``address`` plus one word, modulo ``2**64``.

        :raises NoWordsizeError: if the word size is unset.
        """
        return (address + self._word_bytes("succ_long")) & MASK64

    def pred_long(self, address: int) -> int:
        """``address`` minus one word, modulo ``2**64``.

        :raises NoWordsizeError: if the word size is unset.
        """
        return (address - self._word_bytes("pred_long")) & MASK64

    def align(self, address: int) -> int:
        """``address`` rounded up to a multiple of the word size (unchanged if aligned).

        :raises NoWordsizeError: if the word size is unset.
        :raises ValueError: if the rounded address would pass ``2**64``.
        """
        word = self._word_bytes("align")
        aligned = (_check_address(address) + word - 1) // word * word
        if aligned >= ADDRESS_LIMIT:
            raise ValueError(f"aligning {address:#x} passes 2**64")
        return aligned

    # ---------------------------------------------------------------- strings

    def get_string(self, address: int) -> bytes:
        """The bytes from ``address`` up to, not including, the first NUL.

        Runtime complexity: ``O(length)``, read in growing chunks.

        :raises HoleError: at the first unmapped address met before a NUL.
        """
        parts: list[bytes] = []
        cursor = _check_address(address)
        step = _STRING_STEP
        while True:
            chunk = self.read(cursor, step)
            nul = chunk.find(b"\0")
            if nul >= 0:
                parts.append(chunk[:nul])
                return b"".join(parts)
            parts.append(chunk)
            cursor += len(chunk)
            if len(chunk) < step:
                raise HoleError(cursor)
            step = min(step * 4, 1 << 20)

    def is_string(self, address: int) -> bool:
        """Whether 7-bit ASCII bytes followed by a NUL start at ``address``.

        Never raises for a hole: an unterminated run ends in ``False``.
        """
        try:
            text = self.get_string(address)
        except (HoleError, ValueError):
            return False
        return text.isascii()

    def is_c_identifier(self, address: int) -> bool:
        """Whether ``[A-Za-z_][A-Za-z0-9_]*`` followed by a NUL starts at ``address``."""
        try:
            text = self.get_string(address)
        except (HoleError, ValueError):
            return False
        return _IDENTIFIER.fullmatch(text + b"\0") is not None

    # ---------------------------------------------------------------- search

    def find(self, pattern: bytes, start: int | None = None) -> int | None:
        """The lowest address ``>= start`` where ``pattern`` lies in mapped memory.

        ``start=None`` means the lowest mapped address.  Holes are skipped; a match may
        straddle adjacent or overlapping mappings (it lies inside one extent) but never a
        hole.

        :raises ValueError: if ``pattern`` is empty.
        """
        return next(iter_matches(self, pattern, start), None)

    def find_align(self, pattern: bytes, start: int | None = None) -> int | None:
        """Like :meth:`find`, for matches at multiples of the word size only.

        :raises NoWordsizeError: if the word size is unset.
        """
        return next(iter_matches(self, pattern, start, align=self._word_bytes("find_align")),
                    None)

    def find_all(self, pattern: bytes, start: int | None = None) -> list[int]:
        """Every address ``>= start`` where ``pattern`` lies in mapped memory, ascending.

        Matches may overlap one another.

        :raises ValueError: if ``pattern`` is empty.
        """
        return list(iter_matches(self, pattern, start))

    def find_all_align(self, pattern: bytes, start: int | None = None) -> list[int]:
        """Like :meth:`find_all`, for matches at multiples of the word size only.

        :raises NoWordsizeError: if the word size is unset.
        """
        return list(iter_matches(self, pattern, start, align=self._word_bytes("find_all_align")))

    def _pointer_bytes(self, pointer: int, operation: str) -> tuple[bytes, int]:
        word = self._word_bytes(operation)
        byteorder = self._byteorder(operation)
        if not 0 <= pointer < 1 << (8 * word):
            raise ValueError(f"pointer {pointer:#x} does not fit in {8 * word} bits")
        return pointer.to_bytes(word, byteorder), word

    def find_pointer(self, pointer: int, start: int | None = None) -> int | None:
        """The lowest word-aligned address ``>= start`` that holds ``pointer``.

        :raises NoWordsizeError: if the word size is unset.
        :raises NoEndianError: if the endian is unset.
        :raises ValueError: if ``pointer`` does not fit in a word.
        """
        pattern, word = self._pointer_bytes(pointer, "find_pointer")
        return next(iter_matches(self, pattern, start, align=word), None)

    def find_pointer_all(self, pointer: int, start: int | None = None) -> list[int]:
        """Every word-aligned address ``>= start`` that holds ``pointer``, ascending.

        :raises NoWordsizeError: if the word size is unset.
        :raises NoEndianError: if the endian is unset.
        :raises ValueError: if ``pointer`` does not fit in a word.
        """
        pattern, word = self._pointer_bytes(pointer, "find_pointer_all")
        return list(iter_matches(self, pattern, start, align=word))

    # ---------------------------------------------------------------- layout

    @property
    def mappings(self) -> tuple[Mapping, ...]:
        """Every mapping added, in insertion order (including overridden ones).

        Runtime complexity: ``O(m)`` the first time after a change, then cached.
        """
        if self._mappings_cache is None:
            built: list[Mapping] = []
            for entry in self._log:
                if isinstance(entry, Mapping):
                    built.append(entry)
                else:
                    built.extend(entry.mappings())
            self._mappings_cache = tuple(built)
        return self._mappings_cache

    def file_names(self) -> list[str]:
        """The names of the files that mappings were added from, in the order opened."""
        return [source.name for number, source in enumerate(self._sources)
                if number in self._used_sources and isinstance(source, FileSource)]

    def file_sources(self) -> list[Source]:
        """The files that mappings were added from, each once, in the order opened.

        Runtime complexity: ``O(s)`` for ``s`` sources.
        """
        return [source for number, source in enumerate(self._sources)
                if number in self._used_sources and isinstance(source, FileSource)]

    def extents(self) -> list[tuple[int, int]]:
        """Maximal runs ``(start, end)`` of mapped addresses, ascending.

        Runtime complexity: ``O(n)`` after a change, then cached.
        """
        return self._index.extents()

    def extent_at(self, address: int) -> tuple[int, int] | None:
        """The extent containing ``address``, or ``None`` for a hole."""
        return self._index.extent_at(address)

    def next_data(self, address: int) -> int | None:
        """The lowest mapped address ``>= address``, or ``None``."""
        return self._index.next_data(address)

    def mapped_bytes(self, start: int = 0, end: int = ADDRESS_LIMIT) -> int:
        """How many addresses in ``[start, end)`` are mapped."""
        if start <= 0 and end >= ADDRESS_LIMIT:
            return self._index.mapped_bytes()
        total = 0
        for extent_start, extent_end in self._index.extents():
            low, high = max(start, extent_start), min(end, extent_end)
            if low < high:
                total += high - low
        return total

    def pieces(self, start: int = 0, end: int = ADDRESS_LIMIT) -> list[Piece]:
        """What the index resolves ``[start, end)`` to: pieces with their source's name.

        Each :class:`~vmemfs.index.Piece` has ``source`` replaced by the source's name
        (a path or ``"<bytes>"``) and ``offset`` the offset in that source (for bytes, in
        the bytes given to that :meth:`add_bytes` call).
        """
        names = [source.name for source in self._sources]
        arena, arena_id = self._arena, self._arena_id
        return [Piece(p.start, p.end, names[p.source],  # type: ignore[arg-type]
                      arena.local_offset(p.offset) if p.source == arena_id and arena
                      else p.offset)
                for p in self._index.resolve(start, end)]

    def source_pieces(self, start: int, end: int) -> list[tuple[int, int, Source, int]]:
        """``(start, end, source, source offset)`` of each piece serving ``[start, end)``.

        Gaps between consecutive pieces are holes.  Runtime complexity: ``O(log n + k)``.
        """
        sources = self._sources
        return [(p.start, p.end, sources[p.source], p.offset)
                for p in self._index.resolve(start, end)]

    def __repr__(self) -> str:
        return (f"<MemoryMap {self._mapping_count} mappings, "
                f"{len(self._index.extents())} extents, wordsize={self._wordsize}, "
                f"endian={self._endian}>")


@dataclass(frozen=True)
class _RegionBatch:
    """The regions of one bulk add, as arrays; expanded to mappings only on demand."""

    source: str
    kind: str
    addresses: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def mappings(self) -> list[Mapping]:
        return [Mapping(a, n, self.source, o, self.kind) for a, o, n in zip(
            self.addresses.tolist(), self.offsets.tolist(), self.lengths.tolist(),
            strict=True)]


class _BytesBatch:
    """Consecutive :meth:`MemoryMap.add_bytes` calls, as arrays; mappings on demand."""

    __slots__ = ("addresses", "lengths")

    def __init__(self) -> None:
        self.addresses = array("Q")
        self.lengths = array("Q")

    def mappings(self) -> list[Mapping]:
        return [Mapping(a, n, _BytesArena.name, 0, "bytes")
                for a, n in zip(self.addresses, self.lengths, strict=True)]


class _BytesArena(Source):
    """The bytes of every :meth:`MemoryMap.add_bytes` call of one map, end to end.

    Each call's bytes are one chunk at the next offsets, so one source serves all of
    them; a read may cross from one chunk into the next (adjacent calls can form one
    piece).  Runtime complexity: :meth:`append` ``O(1)``, reads ``O(log c)`` for ``c``
    chunks plus the copy.
    """

    name = "<bytes>"

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []
        self._size = 0

    def append(self, data: bytes) -> int:
        """Keep ``data`` (non-empty) after the others; returns its first offset."""
        offset = self._size
        self._chunks.append(data)
        self._starts.append(offset)
        self._size = offset + len(data)
        return offset

    def size(self) -> int:
        return self._size

    def local_offset(self, offset: int) -> int:
        """``offset`` as an offset in the bytes of the call that added it."""
        return offset - self._starts[bisect_right(self._starts, offset) - 1]

    def read_into(self, offset: int, buffer: memoryview) -> int:
        total = max(0, min(len(buffer), self._size - offset))
        done = 0
        number = bisect_right(self._starts, offset) - 1
        while done < total:
            chunk = self._chunks[number]
            at = offset + done - self._starts[number]
            count = min(len(chunk) - at, total - done)
            buffer[done:done + count] = chunk[at:at + count]
            done += count
            number += 1
        return done

    def view(self, offset: int, length: int) -> Buffer:
        number = bisect_right(self._starts, offset) - 1
        if number >= 0:
            chunk = self._chunks[number]
            at = offset - self._starts[number]
            if at + length <= len(chunk):
                return memoryview(chunk)[at:at + length]
        return super().view(offset, length)


def _as_u64(values: Sequence[int] | np.ndarray, name: str, what: str) -> np.ndarray:
    """``values`` as a ``uint64`` array, or ``ValueError`` for negative or too large ones."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "u":
            return values.astype(np.uint64, copy=False)
        if values.dtype.kind == "i":
            if bool((values < 0).any()):
                raise ValueError(f"{name}: a region's {what} is negative")
            return values.astype(np.uint64)
        values = values.tolist()
    # Never through np.asarray: a list with ints past 2**63 would become float64.
    try:
        return np.array([operator.index(v) for v in values], dtype=np.uint64)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{name}: a region's {what} is negative, past 2**64 or not an "
                         "integer") from None


def _index(value: int, what: str) -> int:
    try:
        return int(value.__index__())
    except AttributeError:
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}") from None


def _check_address(address: int) -> int:
    address = _index(address, "address")
    if not 0 <= address < ADDRESS_LIMIT:
        raise ValueError(f"address {address:#x} is outside [0, 2**64)")
    return address


def _check_size(size: int) -> int:
    size = _index(size, "size")
    if size < 0:
        raise ValueError(f"size must not be negative, not {size}")
    return size
