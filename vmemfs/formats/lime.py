"""LiME and AVML memory captures as mappings (SPEC §3.6).

Both are a sequence of ranges, each behind a 32-byte little-endian header::

    u32 magic      0x4C694D45 ("EMiL": LiME) or 0x4C4D5641 ("AVML")
    u32 version    1 (LiME) or 2 (AVML)
    u64 s_addr     first physical address of the range
    u64 e_addr     last physical address of the range (inclusive)
    u8  reserved[8]

In LiME the ``e_addr - s_addr + 1`` bytes follow the header as they are: each range is
mapped straight from the file (a :class:`~vmemfs.sources.FileSource`, so reads are
zero-copy ``mmap`` views).

In AVML they follow as one *framed snappy* stream (a stream identifier chunk, then
chunks of at most 64 KiB of data each, compressed or not, each with a CRC-32C of its
data), then a u64 little-endian length of that stream.  AVML cuts ranges into blocks of
at most 16 MiB and leaves out blocks that are all zero: those addresses are holes.
Opening walks every chunk header once (no decompression) and indexes the chunks, so a
read decompresses only the 64 KiB chunks it touches, through a
:class:`~vmemfs.sources.blocks.VariableBlockSource`.  Its source offsets are the ranges'
bytes one after the other, in file order; overlapping ranges are left to the memory map
(later ranges win).

Neither format says the dumped machine's word size or byte order: both stay unset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from vmemfs.errors import FormatError
from vmemfs.formats.dump import Dump
from vmemfs.sources import FileSource
from vmemfs.sources.blocks import (
    DEFAULT_CACHE_BYTES,
    SNAPPY_CHUNK,
    SNAPPY_STREAM_IDENTIFIER,
    FileBytes,
    VariableBlockSource,
    require_codecs,
)

LIME_MAGIC = 0x4C694D45
LIME_VERSION = 1
AVML_MAGIC = 0x4C4D5641
AVML_VERSION = 2
HEADER = struct.Struct("<IIQQ8s")
"""magic, version, s_addr, e_addr (inclusive), reserved."""
STREAM_LENGTH = struct.Struct("<Q")

CHUNK_COMPRESSED = 0x00
CHUNK_UNCOMPRESSED = 0x01
CHUNK_PADDING = 0xFE
CHUNK_STREAM_IDENTIFIER = 0xFF
MAX_CHUNK_DATA = 1 << 16
"""A framed snappy chunk holds at most 64 KiB of data."""
_WINDOW = 1 << 12


def sniff(head: bytes) -> str | None:
    """``"lime"`` or ``"avml"`` if ``head`` starts with that format's first header, else
    ``None`` (magic and version are checked)."""
    if len(head) < 8:
        return None
    magic, version = struct.unpack_from("<II", head)
    if magic == LIME_MAGIC and version == LIME_VERSION:
        return "lime"
    if magic == AVML_MAGIC and version == AVML_VERSION:
        return "avml"
    return None


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a LiME or AVML capture."""
    return sniff(head) is not None


@dataclass(frozen=True)
class Range:
    """One range of a capture: ``length`` bytes at ``address``; its header at
    ``header_offset``; for LiME its bytes at ``data_offset`` of the file, for AVML its
    framed stream there."""

    address: int
    length: int
    header_offset: int
    data_offset: int


class _Window:
    """Small reads at increasing offsets of a file, served from 4 KiB reads."""

    def __init__(self, file: FileBytes) -> None:
        self._file = file
        self._data = b""
        self._at = 0

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` (at most 4 KiB) bytes from ``offset``; short at the end."""
        if offset < self._at or offset + size > self._at + len(self._data):
            self._data = self._file.pread(offset, max(size, _WINDOW))
            self._at = offset
        start = offset - self._at
        return self._data[start:start + size]


def _read_headers(file: FileBytes, name: str, kind: str,
                  walk: _StreamWalk | None) -> list[Range]:
    """Every range header from offset 0 to the end of the file, checked."""
    file_size = file.size()
    expected = (LIME_MAGIC, LIME_VERSION) if kind == "lime" else (AVML_MAGIC, AVML_VERSION)
    label = "LiME" if kind == "lime" else "AVML"
    window = _Window(file)
    ranges: list[Range] = []
    position = 0
    while position < file_size:
        number = len(ranges)
        where = f"{name}: {label} header {number} at offset {position:#x}"
        raw = window.read(position, HEADER.size)
        if len(raw) < HEADER.size:
            raise FormatError(f"{where}: truncated ({len(raw)} of {HEADER.size} bytes)")
        magic, version, start, last, _ = HEADER.unpack(raw)
        if (magic, version) != expected:
            raise FormatError(f"{where}: magic {magic:#x} version {version}, expected "
                              f"{expected[0]:#x} version {expected[1]}")
        if last < start:
            raise FormatError(f"{where}: e_addr {last:#x} is below s_addr {start:#x}")
        length = last - start + 1
        data_at = position + HEADER.size
        if walk is None:
            if length > file_size - data_at:
                raise FormatError(f"{where}: its {length:#x} bytes pass the end of the file "
                                  f"({file_size:#x} bytes)")
            end = data_at + length
        else:
            end = walk.stream(window, where, data_at, length, file_size)
        ranges.append(Range(start, length, position, data_at))
        position = end
    return ranges


class _StreamWalk:
    """Indexes the chunks of AVML ranges' framed snappy streams."""

    def __init__(self) -> None:
        self.lengths: list[int] = []
        """Decoded length of each data chunk."""
        self.offsets: list[int] = []
        """File offset of each data chunk (its 4-byte header)."""
        self.sizes: list[int] = []
        """Stored size of each data chunk, header included."""
        self.chunk_counts: list[int] = []
        """Data chunks per range."""

    def stream(self, window: _Window, where: str, at: int, length: int,
               file_size: int) -> int:
        """Walk the stream of one range (``length`` decoded bytes) starting at ``at`` and
        its u64 length; return the offset of the next header.

        :raises FormatError: naming the chunk, for a chunk that passes the end of the
            file, an unknown unskippable type, a bad length, data that does not add up to
            the range, or a stream length field that disagrees with the chunks.
        """
        position = at
        total = 0
        chunks = 0
        while True:
            if total == length and position > at:
                break
            header = window.read(position, 16)
            if len(header) < 4:
                raise FormatError(f"{where}: snappy chunk at offset {position:#x}: the file "
                                  f"ends with {length - total:#x} bytes of the range missing")
            kind = header[0]
            size = int.from_bytes(header[1:4], "little")
            chunk = f"{where}: snappy chunk at offset {position:#x}"
            if size > file_size - position - 4:
                raise FormatError(f"{chunk}: length {size:#x} passes the end of the file "
                                  f"({file_size:#x} bytes)")
            if position == at and kind != CHUNK_STREAM_IDENTIFIER:
                raise FormatError(f"{chunk}: type {kind:#04x}, expected the stream "
                                  "identifier")
            if kind == CHUNK_STREAM_IDENTIFIER:
                if header[:10] != SNAPPY_STREAM_IDENTIFIER:
                    raise FormatError(f"{chunk}: a bad stream identifier")
            elif kind in (CHUNK_COMPRESSED, CHUNK_UNCOMPRESSED):
                if size < 4:
                    raise FormatError(f"{chunk}: length {size} is too short for a checksum")
                data = size - 4 if kind == CHUNK_UNCOMPRESSED else \
                    _varint(header[8:min(16, 4 + size)], chunk)
                if data > MAX_CHUNK_DATA:
                    raise FormatError(f"{chunk}: {data:#x} bytes of data, more than 64 KiB")
                if data > length - total:
                    raise FormatError(f"{chunk}: its {data:#x} bytes pass the range's "
                                      f"{length:#x}")
                if data:
                    self.lengths.append(data)
                    self.offsets.append(position)
                    self.sizes.append(size + 4)
                    chunks += 1
                total += data
            elif kind < 0x80:
                raise FormatError(f"{chunk}: reserved unskippable chunk type {kind:#04x}")
            position += 4 + size
        trailer = window.read(position, STREAM_LENGTH.size)
        if len(trailer) < STREAM_LENGTH.size:
            raise FormatError(f"{where}: stream length at offset {position:#x}: truncated")
        (declared,) = STREAM_LENGTH.unpack(trailer)
        if declared != position - at:
            raise FormatError(f"{where}: stream length at offset {position:#x}: "
                              f"{declared:#x}, but the chunks hold {position - at:#x} bytes")
        self.chunk_counts.append(chunks)
        return position + STREAM_LENGTH.size


def _varint(data: bytes, where: str) -> int:
    """The leading varint of a raw snappy block: its decoded length."""
    value = shift = 0
    for byte in data[:5]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    raise FormatError(f"{where}: a bad decoded-length header")


def open_lime(path: str | os.PathLike[str], *,
              cache_bytes: int = DEFAULT_CACHE_BYTES) -> Dump:
    """Open a LiME or AVML capture (by its first header's magic) as a :class:`Dump`.

    LiME ranges map straight from the file (kind ``"lime"``); AVML ranges map from a
    source that decompresses 64 KiB chunks on demand into an LRU cache of
    ``cache_bytes`` decoded bytes (kind ``"avml"``).  Word size and byte order stay
    unset.

    Cost: one small read per range header (LiME) or per snappy chunk (AVML); no data is
    read or decompressed.

    :raises FormatError: one line naming the file, the header or chunk and its offset,
        for a truncated or corrupt file (e.g. ``mem.avml: AVML header 2 at offset
        0x1f0040: snappy chunk at offset 0x1f0060: length 0xfff000 passes the end of the
        file (0x200000 bytes)``).
    :raises OSError: if the file cannot be opened or read.
    """
    name = os.fsdecode(path)
    file = FileBytes.open(path)
    try:
        kind = sniff(file.pread(0, 8))
        if kind is None:
            raise FormatError(f"{name}: header 0 at offset 0x0: not a LiME or AVML header")
        if kind == "lime":
            return _open_lime(file, name)
        return _open_avml(file, name, cache_bytes)
    except BaseException:
        file.close()
        raise


def _open_lime(file: FileBytes, name: str) -> Dump:
    ranges = _read_headers(file, name, "lime", None)
    # The reader's descriptor is closed at once: the duplicate's offset is the source's own.
    source = FileSource(os.dup(file.fd), file.name, private_offset=True)
    file.close()
    addresses = np.array([r.address for r in ranges], dtype=np.uint64)
    offsets = np.array([r.data_offset for r in ranges], dtype=np.uint64)
    lengths = np.array([r.length for r in ranges], dtype=np.uint64)
    info = [("format", "LiME (version 1)"), ("ranges", str(len(ranges))),
            ("bytes", f"{int(lengths.sum(dtype=np.uint64))}")]
    return Dump(source=source, addresses=addresses, offsets=offsets, lengths=lengths,
                wordsize=None, endian=None, vmcoreinfo=None, kind="lime", info=info)


def _open_avml(file: FileBytes, name: str, cache_bytes: int) -> Dump:
    walk = _StreamWalk()
    ranges = _read_headers(file, name, "avml", walk)
    require_codecs([SNAPPY_CHUNK], name)
    chunk_lengths = np.array(walk.lengths, dtype=np.uint64)
    chunk_offsets = np.array(walk.offsets, dtype=np.uint64)
    chunk_sizes = np.array(walk.sizes, dtype=np.uint32)
    range_lengths = np.array([r.length for r in ranges], dtype=np.uint64)
    range_offsets = np.cumsum(range_lengths, dtype=np.uint64) - range_lengths
    first_chunks = np.cumsum(walk.chunk_counts, dtype=np.int64) - np.array(
        walk.chunk_counts, dtype=np.int64)
    chunk_starts = np.cumsum(chunk_lengths, dtype=np.uint64) - chunk_lengths

    def describe(index: int) -> str:
        owner = int(np.searchsorted(first_chunks, index, side="right")) - 1
        owned = ranges[owner]
        address = owned.address + int(chunk_starts[index]) - int(range_offsets[owner])
        return (f"snappy chunk at offset {int(chunk_offsets[index]):#x} (physical addresses "
                f"{address:#x}-{address + int(chunk_lengths[index]) - 1:#x})")

    source = VariableBlockSource(file, chunk_lengths, chunk_offsets, chunk_sizes,
                                 np.full(len(chunk_lengths), SNAPPY_CHUNK, dtype=np.uint8),
                                 name=file.name, cache_bytes=cache_bytes, describe=describe)
    total = int(range_lengths.sum(dtype=np.uint64))
    info = [("format", "AVML (version 2, framed snappy)"), ("ranges", str(len(ranges))),
            ("bytes", str(total)), ("snappy chunks", str(len(chunk_lengths))),
            ("compressed size", str(file.size()))]
    return Dump(source=source, addresses=np.array([r.address for r in ranges],
                                                  dtype=np.uint64),
                offsets=range_offsets, lengths=range_lengths, wordsize=None, endian=None,
                vmcoreinfo=None, kind="avml", info=info)
