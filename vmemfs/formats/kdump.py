"""kdump-compressed dumps (makedumpfile's format, QEMU's ``dump-guest-memory -z/-l/-s``):
page frames as mappings of a source that decompresses pages on demand (SPEC §3.5).

The layout, in blocks of ``block_size`` bytes (the dumped machine's page size)::

    block 0                      disk_dump_header: signature "KDUMP   " (or "DISKDUMP"),
                                 utsname, block_size, sub_hdr_size, bitmap_blocks, max_mapnr
    block 1 .. sub_hdr_size      kdump_sub_header (phys_base, dump_level, split range,
                                 VMCOREINFO and ELF notes offsets, max_mapnr_64), then the
                                 VMCOREINFO text and the notes
    bitmap_blocks blocks         first bitmap (page frames that are RAM), then the second
                                 (page frames dumped); bit ``pfn % 8`` of byte ``pfn // 8``
    page descriptors             one per set bit of the second bitmap, in pfn order:
                                 {u64 offset, u32 size, u32 flags, u64 page_flags}
    page data                    each page compressed (zlib, LZO, snappy, zstd) or raw

Integers are in the dumped machine's byte order; the header's ``timeval`` makes it 452
bytes on 32-bit machines and 464 on 64-bit ones, so the layout (word size and byte order)
is found by trying all four and keeping the one whose fields are consistent with the file
(see :func:`_read_header`).

The *flattened* layout (``makedumpfile -F``, QEMU's ``kdump-zlib`` etc. without ``-raw``)
is the same image cut into records: a 4 KiB header ``makedumpfile``, then records of a
big-endian ``{i64 offset, i64 size}`` followed by ``size`` bytes that belong at ``offset``
of the image, until an offset of -1.  It is read in place through an index of the records
(a :class:`~vmemfs.index.SegmentIndex`, later records winning) built once at open.

Opening reads the headers, both bitmaps and the page descriptors (never page data) and
checks them with numpy.  The source's offsets are the dumped pages packed together: the
``k``-th page of the second bitmap (its descriptor ``k``, the prefix count of set bits
before it) is at source offset ``k * block_size``.  Each run of consecutive dumped page
frames becomes one region, at physical address ``pfn * block_size``.  Pages that are RAM
but were left out (first bitmap, not second) and frames that are not RAM are holes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from vmemfs.errors import FormatError
from vmemfs.formats.dump import Dump, Endian, machine_number
from vmemfs.formats.elf import iter_notes
from vmemfs.index import SegmentIndex
from vmemfs.sources.blocks import (
    CODEC_NAMES,
    DEFAULT_CACHE_BYTES,
    LZO,
    RAW,
    SNAPPY,
    ZLIB,
    ZSTD,
    FileBytes,
    FixedBlockSource,
    require_codecs,
)

KDUMP_SIGNATURE = b"KDUMP   "
DISKDUMP_SIGNATURE = b"DISKDUMP"
FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096
"""The flattened header block; records start after it."""
FLAT_RECORD_HEADER = struct.Struct(">qq")
FLAT_END = -1
"""The offset of the record that ends a flattened file."""

DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20
PAGE_COMPRESSION_FLAGS = (DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO
                          | DUMP_DH_COMPRESSED_SNAPPY | DUMP_DH_COMPRESSED_ZSTD)
"""The only flags a page descriptor may carry (none: the page is stored raw)."""
_CODEC_OF_FLAG = {0: RAW, DUMP_DH_COMPRESSED_ZLIB: ZLIB, DUMP_DH_COMPRESSED_LZO: LZO,
                  DUMP_DH_COMPRESSED_SNAPPY: SNAPPY, DUMP_DH_COMPRESSED_ZSTD: ZSTD}

UTSNAME_OFFSET = 12
UTSNAME_FIELD = 65
HEADER_SIZE = {32: 452, 64: 464}
_HEADER_TAIL_OFFSET = {32: 412, 64: 424}
_HEADER_TAIL = "IiiIIIIIIi"
"""status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr, total_ram_blocks,
device_blocks, written_blocks, current_cpu, nr_cpus."""

SUB_HEADER_64 = "QiiQQQQQQQQQQQ"
"""kdump_sub_header on 64-bit machines (104 bytes)."""
SUB_HEADER_32_PACKED = "IiiIIQIQIQIQQQ"
"""kdump_sub_header on 32-bit machines that align 64-bit fields to 4 bytes (i386, 80)."""
SUB_HEADER_32_PADDED = "IiiII4xQI4xQI4xQI4xQQQ"
"""kdump_sub_header on 32-bit machines that align 64-bit fields to 8 bytes (ARM, 96)."""
_SUB_HEADER_FIELDS = ("phys_base", "dump_level", "split", "start_pfn", "end_pfn",
                      "offset_vmcoreinfo", "size_vmcoreinfo", "offset_note", "size_note",
                      "offset_eraseinfo", "size_eraseinfo", "start_pfn_64", "end_pfn_64",
                      "max_mapnr_64")

PAGE_DESC_SIZE = 24
MIN_BLOCK_SIZE = 1 << 9
MAX_BLOCK_SIZE = 1 << 20
MAX_VMCOREINFO = 1 << 20
"""A VMCOREINFO larger than this is corrupt (the kernel's holds one page)."""
MAX_NOTES = 16 << 20
"""ELF notes larger than this are not searched for VMCOREINFO."""
_DESCRIPTOR_CHUNK = 1 << 20
"""Page descriptors are read and checked this many at a time (24 MiB)."""
_BITMAP_CHUNK_BYTES = 1 << 21
_FLAT_WINDOW = 1 << 12
"""Record headers are read 4 KiB at a time (several small records per read)."""

_MACHINES_32 = ("i386", "i486", "i586", "i686", "ppc", "s390", "mips", "riscv32", "sh",
                "m68k", "sparc", "parisc", "xtensa", "microblaze", "or1k", "csky", "arc")
_MACHINES_64 = ("x86_64", "aarch64", "arm64", "ppc64", "ppc64le", "s390x", "riscv64",
                "mips64", "sparc64", "loongarch64", "ia64", "alpha", "parisc64")

_ENDIANS: tuple[Endian, Endian] = ("little", "big")

_PAGE_DESC_DTYPES = {
    order: np.dtype([("offset", f"{order}u8"), ("size", f"{order}u4"),
                     ("flags", f"{order}u4"), ("page_flags", f"{order}u8")])
    for order in "<>"
}


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a kdump-compressed dump: the
    signature ``KDUMP   `` or ``DISKDUMP``, or the flattened header ``makedumpfile``."""
    return head.startswith((KDUMP_SIGNATURE, DISKDUMP_SIGNATURE, FLAT_SIGNATURE))


# ---------------------------------------------------------------------- flattened layout


class FlattenedBytes:
    """The image a flattened file describes, read in place through its record index.

    Image offsets that no record covers read as zeros, as in the file ``makedumpfile -R``
    rearranges (where they are holes of a sparse file).
    """

    def __init__(self, file: FileBytes, records: SegmentIndex, size: int,
                 record_count: int) -> None:
        self.name = file.name
        self._file = file
        self._records = records
        self._size = size
        self.record_count = record_count

    def size(self) -> int:
        return self._size

    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` image bytes from ``offset``: short only at the end of the image
        or where the file cannot be read.

        Runtime complexity: ``O(log r + k)`` for ``r`` records, ``k`` of them read.
        """
        end = min(offset + size, self._size)
        if end <= offset:
            return b""
        parts: list[bytes] = []
        position = offset
        for piece in self._records.resolve(offset, end):
            if piece.start > position:
                parts.append(bytes(piece.start - position))
            want = piece.end - piece.start
            data = self._file.pread(piece.offset, want)
            parts.append(data)
            position = piece.start + len(data)
            if len(data) < want:
                return b"".join(parts)
        if position < end:
            parts.append(bytes(end - position))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def file_offset(self, offset: int) -> int | None:
        """Where image offset ``offset`` is stored in the file, or ``None``."""
        piece = self._records.lookup(offset)
        return None if piece is None else piece.offset

    def close(self) -> None:
        self._file.close()


def _index_flattened(file: FileBytes, name: str) -> FlattenedBytes:
    """Walk the records of a flattened file once; check and index them.

    Cost: one small read per record (records of up to 64 KiB are read from one window).

    :raises FormatError: for an unknown header, a record with a negative offset or size,
        data that passes the end of the file, or a file that ends with no end record.
    """
    file_size = file.size()
    head = file.pread(0, 32)
    if len(head) < 32:
        raise FormatError(f"{name}: flattened header at offset 0x0: truncated "
                          f"({len(head)} bytes)")
    kind, version = struct.unpack_from(">qq", head, 16)
    if kind != 1 or version != 1:
        raise FormatError(f"{name}: flattened header at offset 0x0: type {kind} version "
                          f"{version}, expected type 1 version 1")
    logicals: list[int] = []
    sizes: list[int] = []
    positions: list[int] = []
    position = FLAT_HEADER_SIZE
    window, window_at = b"", 0
    while True:
        number = len(logicals)
        if position + 16 > file_size:
            raise FormatError(f"{name}: flattened record {number} at offset {position:#x}: "
                              f"the file ends at {file_size:#x} before the end record")
        if position < window_at or position + 16 > window_at + len(window):
            window, window_at = file.pread(position, _FLAT_WINDOW), position
            if len(window) < 16:
                raise FormatError(f"{name}: flattened record {number} at offset "
                                  f"{position:#x}: cannot be read")
        logical, size = FLAT_RECORD_HEADER.unpack_from(window, position - window_at)
        if logical == FLAT_END:
            break
        where = f"{name}: flattened record {number} at offset {position:#x}"
        if logical < 0:
            raise FormatError(f"{where}: negative offset {logical}")
        if size < 0:
            raise FormatError(f"{where}: negative size {size}")
        data_at = position + 16
        if size > file_size - data_at:
            raise FormatError(f"{where}: its {size:#x} bytes pass the end of the file "
                              f"({file_size:#x} bytes)")
        if logical + size > 1 << 63:
            raise FormatError(f"{where}: offset {logical:#x} + size {size:#x} passes 2**63")
        logicals.append(logical)
        sizes.append(size)
        positions.append(data_at)
        position = data_at + size
    starts = np.array(logicals, dtype=np.uint64)
    lengths = np.array(sizes, dtype=np.uint64)
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    stored_at = np.array(positions, dtype=np.uint64)[keep]
    # Writers interleave records of two areas (descriptors, data); disjoint records may
    # go in sorted, only overlapping ones need the file's order (later records win).
    order = np.argsort(starts, kind="stable")
    if len(order) > 1 and bool(np.all(starts[order][1:] >= (starts + lengths)[order][:-1])):
        starts, lengths, stored_at = starts[order], lengths[order], stored_at[order]
    records = SegmentIndex()
    records.insert_runs(starts, starts + lengths - np.uint64(1),
                        np.zeros(len(starts), dtype=np.int32), stored_at - starts)
    records.flush()  # lookups then never modify the index: safe from several threads
    image_size = int((starts + lengths).max()) if len(starts) else 0
    return FlattenedBytes(file, records, image_size, len(logicals))


# ---------------------------------------------------------------------- headers


@dataclass(frozen=True)
class DiskDumpHeader:
    """The fields of ``disk_dump_header`` that vmemfs uses, and the layout found."""

    signature: bytes
    header_version: int
    wordsize: int
    endian: Endian
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    nr_cpus: int
    release: str
    machine: str

    @property
    def order(self) -> str:
        """The ``struct`` byte-order character of the dump."""
        return "<" if self.endian == "little" else ">"


def _uts_field(raw: bytes, number: int) -> str:
    at = UTSNAME_OFFSET + number * UTSNAME_FIELD
    return raw[at:at + UTSNAME_FIELD].split(b"\0", 1)[0].decode("ascii", "replace")


def machine_wordsize(machine: str) -> int | None:
    """The word size of a ``uname -m`` machine name, or ``None`` if not known."""
    if machine.startswith(_MACHINES_64):
        return 64
    if machine.startswith(_MACHINES_32) or machine.startswith("arm"):
        return 32
    return None


def _try_layout(raw: bytes, wordsize: int, endian: Endian,
                image_size: int) -> tuple[DiskDumpHeader, str | None]:
    """The header read as ``wordsize``/``endian``, and what is implausible about it."""
    order = "<" if endian == "little" else ">"
    need = HEADER_SIZE[wordsize]
    padded = raw.ljust(need, b"\0")
    (version,) = struct.unpack_from(order + "i", padded, 8)
    (status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr, _, _, _, _,
     nr_cpus) = struct.unpack_from(order + _HEADER_TAIL, padded, _HEADER_TAIL_OFFSET[wordsize])
    header = DiskDumpHeader(raw[:8], version, wordsize, endian, status, block_size,
                            sub_hdr_size, bitmap_blocks, max_mapnr, nr_cpus,
                            _uts_field(raw, 2), _uts_field(raw, 4))
    problem: str | None = None
    if len(raw) < need:
        problem = (f"truncated: {len(raw)} bytes, a {wordsize}-bit header needs {need}")
    elif not 0 <= version < 0x10000:
        problem = f"header_version {version} is not plausible"
    elif not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE
              and block_size & (block_size - 1) == 0):
        problem = f"block_size {block_size} is not a power of two from 512 to 1 MiB"
    elif sub_hdr_size < 0:
        problem = f"sub_hdr_size {sub_hdr_size} is negative"
    elif (1 + sub_hdr_size + bitmap_blocks) * block_size > image_size:
        problem = (f"the header, sub-header and bitmaps ({1 + sub_hdr_size + bitmap_blocks} "
                   f"blocks of {block_size:#x}) pass the end of the file "
                   f"({image_size:#x} bytes)")
    elif 8 * bitmap_blocks * block_size < max_mapnr:
        problem = (f"bitmaps of {bitmap_blocks} blocks cannot hold max_mapnr "
                   f"{max_mapnr:#x}")
    return header, problem


def _read_header(stored: FileBytes | FlattenedBytes, name: str) -> DiskDumpHeader:
    """Read ``disk_dump_header`` and find its layout (word size and byte order).

    All four layouts are tried; those whose fields are consistent (plausible version, a
    power-of-two block size, bitmaps that fit the file and cover ``max_mapnr``) remain.
    Ties go to the layout whose header version is small in that byte order, then whose
    word size matches ``utsname.machine``, then to 64-bit and little-endian.

    :raises FormatError: naming the problem of the most plausible layout if none fits.
    """
    raw = stored.pread(0, HEADER_SIZE[64])
    if not raw.startswith((KDUMP_SIGNATURE, DISKDUMP_SIGNATURE)):
        if raw.startswith(b"\x7fELF"):
            raise FormatError(f"{name}: the flattened image holds an ELF file, not a "
                              "kdump-compressed dump (rearrange it: makedumpfile -R OUT < "
                              "FILE)")
        raise FormatError(f"{name}: disk_dump_header at offset 0x0: no KDUMP or DISKDUMP "
                          f"signature ({raw[:8]!r})")
    hint = machine_wordsize(_uts_field(raw, 4))
    image_size = stored.size()
    ranked = []
    for wordsize in (64, 32):
        for endian in _ENDIANS:
            header, problem = _try_layout(raw, wordsize, endian, image_size)
            rank = (problem is None, 0 <= header.header_version <= 100,
                    hint in (None, wordsize), wordsize == 64, endian == "little")
            ranked.append((rank, header, problem))
    ranked.sort(key=lambda entry: entry[0], reverse=True)
    _, header, problem = ranked[0]
    if problem is not None:
        raise FormatError(f"{name}: disk_dump_header at offset 0x0: {problem}")
    return header


@dataclass(frozen=True)
class SubHeader:
    """The fields of ``kdump_sub_header`` present in the dump's header version."""

    phys_base: int = 0
    dump_level: int | None = None
    split: bool = False
    start_pfn: int = 0
    end_pfn: int = 0
    offset_vmcoreinfo: int = 0
    size_vmcoreinfo: int = 0
    offset_note: int = 0
    size_note: int = 0
    max_mapnr_64: int | None = None


def _sub_header_candidates(header: DiskDumpHeader) -> list[str]:
    if header.wordsize == 64:
        return [SUB_HEADER_64]
    if header.machine.startswith("arm"):
        return [SUB_HEADER_32_PADDED, SUB_HEADER_32_PACKED]
    return [SUB_HEADER_32_PACKED, SUB_HEADER_32_PADDED]


def _read_sub_header(stored: FileBytes | FlattenedBytes, name: str,
                     header: DiskDumpHeader) -> SubHeader:
    """Read ``kdump_sub_header`` (header version 1 and later, block 1).

    On 32-bit machines the structure has two layouts (64-bit fields aligned to 4 or 8
    bytes); the one whose VMCOREINFO and notes lie inside the sub-header blocks wins.

    :raises FormatError: if it is truncated, or its split range is inverted.
    """
    if header.header_version < 1 or header.sub_hdr_size < 1 \
            or header.signature != KDUMP_SIGNATURE:
        return SubHeader()
    at = header.block_size
    area_end = (1 + header.sub_hdr_size) * header.block_size
    raw = stored.pread(at, struct.calcsize("<" + SUB_HEADER_64))
    chosen: dict[str, int] | None = None
    for layout in _sub_header_candidates(header):
        need = struct.calcsize("<" + layout)
        if len(raw) < need:
            raise FormatError(f"{name}: kdump_sub_header at offset {at:#x}: truncated "
                              f"({len(raw)} bytes, needs {need})")
        fields = dict(zip(_SUB_HEADER_FIELDS, struct.unpack_from(header.order + layout, raw),
                          strict=True))
        if chosen is None:
            chosen = fields
        inside = all(size == 0 or (at < offset and offset + size <= area_end)
                     for offset, size in ((fields["offset_vmcoreinfo"],
                                           fields["size_vmcoreinfo"]),
                                          (fields["offset_note"], fields["size_note"])))
        if inside:
            chosen = fields
            break
    assert chosen is not None
    version = header.header_version
    split = version >= 2 and chosen["split"] != 0
    start_pfn, end_pfn = (chosen["start_pfn_64"], chosen["end_pfn_64"]) if version >= 6 \
        else (chosen["start_pfn"], chosen["end_pfn"])
    if split and start_pfn > end_pfn:
        raise FormatError(f"{name}: kdump_sub_header at offset {at:#x}: split range "
                          f"start_pfn {start_pfn:#x} > end_pfn {end_pfn:#x}")
    return SubHeader(
        phys_base=chosen["phys_base"],
        dump_level=chosen["dump_level"],
        split=split,
        start_pfn=start_pfn if split else 0,
        end_pfn=end_pfn if split else 0,
        offset_vmcoreinfo=chosen["offset_vmcoreinfo"] if version >= 3 else 0,
        size_vmcoreinfo=chosen["size_vmcoreinfo"] if version >= 3 else 0,
        offset_note=chosen["offset_note"] if version >= 4 else 0,
        size_note=chosen["size_note"] if version >= 4 else 0,
        max_mapnr_64=chosen["max_mapnr_64"] if version >= 6 else None,
    )


def _read_vmcoreinfo(stored: FileBytes | FlattenedBytes, name: str, header: DiskDumpHeader,
                     sub: SubHeader) -> bytes | None:
    """The VMCOREINFO text (trailing NULs removed): from the sub-header's offset and size,
    else from a ``VMCOREINFO`` ELF note among the dump's notes; ``None`` if neither.

    :raises FormatError: if the VMCOREINFO the sub-header names is absurdly large or
        passes the end of the file.
    """
    image_size = stored.size()
    at = header.block_size
    if sub.size_vmcoreinfo:
        offset, size = sub.offset_vmcoreinfo, sub.size_vmcoreinfo
        if size > MAX_VMCOREINFO:
            raise FormatError(f"{name}: kdump_sub_header at offset {at:#x}: VMCOREINFO size "
                              f"{size:#x} is not plausible (over 1 MiB)")
        if offset > image_size or size > image_size - offset:
            raise FormatError(f"{name}: kdump_sub_header at offset {at:#x}: VMCOREINFO "
                              f"({size:#x} bytes at {offset:#x}) passes the end of the file "
                              f"({image_size:#x} bytes)")
        text = stored.pread(offset, size)
        if len(text) < size:
            raise FormatError(f"{name}: VMCOREINFO at offset {offset:#x}: cannot be read")
        return text.rstrip(b"\0")
    offset, size = sub.offset_note, sub.size_note
    if size and size <= MAX_NOTES and offset <= image_size and size <= image_size - offset:
        for note_name, _, desc in iter_notes(stored.pread(offset, size), header.order):
            if note_name == b"VMCOREINFO":
                return desc.rstrip(b"\0")
    return None


def vmcoreinfo_value(vmcoreinfo: bytes | None, key: str) -> str | None:
    """The value of ``KEY=value`` in VMCOREINFO text (e.g. ``OSRELEASE``), or ``None``."""
    if not vmcoreinfo:
        return None
    prefix = key.encode("ascii") + b"="
    for line in vmcoreinfo.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].decode("utf-8", "replace")
    return None


# ---------------------------------------------------------------------- bitmaps


def _bit_chunks(bitmap: np.ndarray, first: int,
                stop: int) -> list[tuple[int, np.ndarray]]:
    """``(bit number of the first bit, bits as uint8 0/1)`` covering bits ``[first, stop)``,
    a few MiB of bitmap at a time (bit ``n`` is bit ``n % 8`` of byte ``n // 8``)."""
    chunks = []
    byte = first // 8
    while byte * 8 < stop:
        bits = np.unpackbits(bitmap[byte:byte + _BITMAP_CHUNK_BYTES], bitorder="little")
        low = max(first - byte * 8, 0)
        high = min(stop - byte * 8, len(bits))
        chunks.append((byte * 8 + low, bits[low:high]))
        byte += _BITMAP_CHUNK_BYTES
    return chunks


def bitmap_runs(bitmap: np.ndarray, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of set bits among bits ``[first, stop)`` of ``bitmap`` (``uint8`` array):
    ``(starts, lengths)`` as ``uint64`` arrays, ascending.

    Runtime complexity: ``O(stop - first)`` vectorised, in chunks of 16 Mi bits.
    """
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    previous = 0
    for base, bits in _bit_chunks(bitmap, first, stop):
        if not len(bits):
            continue
        steps = np.diff(bits.astype(np.int8), prepend=np.int8(previous))
        starts.append(np.flatnonzero(steps == 1).astype(np.uint64) + np.uint64(base))
        ends.append(np.flatnonzero(steps == -1).astype(np.uint64) + np.uint64(base))
        previous = int(bits[-1])
    if previous:
        ends.append(np.array([stop], dtype=np.uint64))
    start_array = np.concatenate(starts) if starts else np.zeros(0, dtype=np.uint64)
    end_array = np.concatenate(ends) if ends else np.zeros(0, dtype=np.uint64)
    return start_array, end_array - start_array


def _count_excluded(ram: np.ndarray, dumped: np.ndarray, first: int, stop: int) -> int:
    """Bits set in ``ram`` and clear in ``dumped`` among ``[first, stop)``."""
    total = 0
    for (_, ram_bits), (_, dumped_bits) in zip(_bit_chunks(ram, first, stop),
                                               _bit_chunks(dumped, first, stop), strict=True):
        total += int(np.count_nonzero(ram_bits & (dumped_bits ^ 1)))
    return total


def _split_runs(pfns: np.ndarray, lengths: np.ndarray,
                valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut runs of pages at pages whose descriptor is not valid (an incomplete dump).

    ``pfns``/``lengths`` are runs of the second bitmap, whose pages have descriptors
    ``0, 1, ...`` in order; returns ``(pfns, lengths, first descriptors)`` of the runs of
    valid pages.
    """
    count = len(valid)
    firsts = np.cumsum(lengths, dtype=np.uint64) - lengths
    run_start = np.zeros(count, dtype=bool)
    run_start[firsts.astype(np.int64)] = True
    run_last = np.zeros(count, dtype=bool)
    run_last[(firsts + lengths - np.uint64(1)).astype(np.int64)] = True
    previous_valid = np.concatenate(([False], valid[:-1]))
    next_valid = np.concatenate((valid[1:], [False]))
    new_starts = np.flatnonzero(valid & (run_start | ~previous_valid)).astype(np.uint64)
    new_ends = np.flatnonzero(valid & (run_last | ~next_valid)).astype(np.uint64) + np.uint64(1)
    owner = np.searchsorted(firsts, new_starts, side="right") - 1
    new_pfns = pfns[owner] + (new_starts - firsts[owner])
    return new_pfns, new_ends - new_starts, new_starts


# ---------------------------------------------------------------------- opening


def open_kdump(path: str | os.PathLike[str], *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Dump:
    """Open a kdump-compressed dump (standard or flattened layout) as a :class:`Dump`.

    Reads the headers, both bitmaps and every page descriptor (no page data), checks
    them, and returns one region per run of consecutive dumped page frames, at physical
    address ``pfn * block_size``.  The dump's source decompresses pages on demand into an
    LRU cache of ``cache_bytes`` decoded bytes; a page that fails to decompress reads as
    a hole, with one logged warning naming it.

    Cost: ``O(r)`` small reads for a flattened file of ``r`` records; then reading the
    bitmaps (``max_mapnr / 4`` bytes) and descriptors (24 bytes per dumped page), each
    checked with vectorised numpy.

    :raises FormatError: one line naming the file, the structure and its offset, for a
        truncated or corrupt header, sub-header, bitmap, descriptor or flattened record
        (e.g. ``guest.kdump: page descriptor 17 at offset 0x5198: data offset 0x9000 +
        size 0x800 passes the end of the file (0x9400 bytes)``), and when a library for
        the pages' compression is missing.
    :raises OSError: if the file cannot be opened or read.
    """
    name = os.fsdecode(path)
    file = FileBytes.open(path)
    try:
        return _open(file, name, cache_bytes)
    except BaseException:
        file.close()
        raise


class _Image:
    """The dump image being opened: the standard file or a flattened file's image."""

    def __init__(self, file: FileBytes, name: str) -> None:
        self.file = file
        self.name = name
        head = file.pread(0, len(FLAT_SIGNATURE))
        if not looks_like(head):
            raise FormatError(f"{name}: not a kdump-compressed file (no KDUMP, DISKDUMP or "
                              f"makedumpfile signature)")
        self.flattened = _index_flattened(file, name) if head.startswith(FLAT_SIGNATURE) \
            else None
        self.stored: FileBytes | FlattenedBytes = self.flattened or file
        self.size = self.stored.size()
        self.backing = file.size()
        """What the file holds: a flattened image's gaps read as zeros, so no structure
        read at open may be larger than the file itself."""

    def where(self, offset: int) -> str:
        """How errors name image offset ``offset``."""
        if self.flattened is None:
            return f"offset {offset:#x}"
        at = self.flattened.file_offset(offset)
        stored_at = "" if at is None else f", file offset {at:#x}"
        return f"offset {offset:#x} (flattened image{stored_at})"

    def error(self, structure: str, offset: int, problem: str) -> FormatError:
        return FormatError(f"{self.name}: {structure} at {self.where(offset)}: {problem}")


@dataclass
class _Bitmaps:
    """The page frames the bitmaps describe, as runs of dumped frames."""

    max_mapnr: int
    pfns: np.ndarray
    """First page frame of each run of dumped frames (``uint64``)."""
    lengths: np.ndarray
    """Frames in each run (``uint64``)."""
    excluded: int
    """Frames in RAM (first bitmap) left out (second bitmap clear)."""
    table_at: int
    """Image offset of the page descriptors."""


def _read_bitmaps(image: _Image, header: DiskDumpHeader, sub: SubHeader) -> _Bitmaps:
    """Read both bitmaps and turn the second into runs of dumped page frames.

    The bitmap blocks hold two halves (RAM, dumped) when ``max_mapnr`` fits in half of
    them, else one bitmap that serves as both.  In one part of a split dump only the
    frames of its range count.

    :raises FormatError: if ``max_mapnr`` pages pass 2**64, or a bitmap cannot be read.
    """
    block_size = header.block_size
    bitmap_at = (1 + header.sub_hdr_size) * block_size
    bitmap_bytes = header.bitmap_blocks * block_size
    max_mapnr = sub.max_mapnr_64 if sub.max_mapnr_64 else header.max_mapnr
    if max_mapnr <= bitmap_bytes * 8 // 2:
        dumped_at = bitmap_at + bitmap_bytes // 2
    else:
        dumped_at = bitmap_at
        max_mapnr = min(max_mapnr, bitmap_bytes * 8)
    if max_mapnr * block_size > 1 << 64:
        raise image.error("disk_dump_header", 0, f"max_mapnr {max_mapnr:#x} pages of "
                          f"{block_size:#x} bytes pass 2**64")
    needed = (max_mapnr + 7) // 8
    if image.flattened is not None and 2 * needed > image.backing:
        raise image.error("bitmaps", bitmap_at, f"{needed:#x} bytes each, more than the "
                          f"file holds ({image.backing:#x} bytes)")
    ram = _read_bitmap(image, "first bitmap", bitmap_at, needed)
    dumped = ram if dumped_at == bitmap_at else \
        _read_bitmap(image, "second bitmap", dumped_at, needed)
    first_pfn, stop_pfn = 0, max_mapnr
    if sub.split:
        first_pfn, stop_pfn = min(sub.start_pfn, max_mapnr), min(sub.end_pfn, max_mapnr)
    pfns, lengths = bitmap_runs(dumped, first_pfn, stop_pfn)
    return _Bitmaps(max_mapnr, pfns, lengths,
                    _count_excluded(ram, dumped, first_pfn, stop_pfn),
                    bitmap_at + bitmap_bytes)


def _read_bitmap(image: _Image, what: str, at: int, size: int) -> np.ndarray:
    data = image.stored.pread(at, size)
    if len(data) < size:
        raise image.error(what, at, f"{size:#x} bytes cannot be read (only {len(data):#x})")
    return np.frombuffer(data, dtype=np.uint8)


@dataclass
class _Descriptors:
    """The page descriptors, checked: where each dumped page is stored and how."""

    offsets: np.ndarray
    sizes: np.ndarray
    codecs: np.ndarray
    valid: np.ndarray
    """False for a page an incomplete dump did not write (it is a hole)."""


def _read_descriptors(image: _Image, header: DiskDumpHeader, count: int, table_at: int,
                      incomplete: bool) -> _Descriptors:
    """Read and check ``count`` page descriptors from ``table_at``, a chunk at a time.

    In an ``incomplete`` dump, descriptors missing or wrong mark pages not written;
    otherwise the first wrong one is an error.

    :raises FormatError: naming the descriptor's number and offset and what is wrong.
    """
    block_size = header.block_size
    offsets = np.zeros(count, dtype=np.uint64)
    sizes = np.zeros(count, dtype=np.uint32)
    codecs = np.zeros(count, dtype=np.uint8)
    valid = np.zeros(count, dtype=bool)
    limit = np.uint64(image.size)
    codec_of_flags = np.zeros(PAGE_COMPRESSION_FLAGS + 1, dtype=np.uint8)
    for flag, codec in _CODEC_OF_FLAG.items():
        codec_of_flags[flag] = codec
    dtype = _PAGE_DESC_DTYPES[header.order]
    for first in range(0, count, _DESCRIPTOR_CHUNK):
        number = min(_DESCRIPTOR_CHUNK, count - first)
        at = table_at + first * PAGE_DESC_SIZE
        raw = image.stored.pread(at, number * PAGE_DESC_SIZE)
        if len(raw) < number * PAGE_DESC_SIZE:
            bad = first + len(raw) // PAGE_DESC_SIZE
            raise image.error(f"page descriptor {bad}", table_at + bad * PAGE_DESC_SIZE,
                              "cannot be read")
        table = np.frombuffer(raw, dtype=dtype)
        stored_at = table["offset"].astype(np.uint64)
        stored_size = table["size"].astype(np.uint64)
        flags = table["flags"].astype(np.uint32)
        unknown = (flags & np.uint32(~PAGE_COMPRESSION_FLAGS & 0xFFFFFFFF)) != 0
        several = (flags & (flags - np.uint32(1))) != 0
        raw_page = flags == 0
        bad_raw = raw_page & (stored_size != block_size)
        bad_packed = ~raw_page & ((stored_size == 0) | (stored_size > 2 * block_size))
        past_end = (stored_at > limit) | (stored_size > limit - np.minimum(stored_at, limit))
        bad = unknown | several | bad_raw | bad_packed | past_end
        if bool(bad.any()) and not incomplete:
            i = int(np.flatnonzero(bad)[0])
            problem = _descriptor_problem(int(stored_at[i]), int(stored_size[i]),
                                          int(flags[i]), block_size, image.size)
            raise image.error(f"page descriptor {first + i}", at + i * PAGE_DESC_SIZE,
                              problem)
        good = ~bad
        chunk = slice(first, first + number)
        valid[chunk] = good
        offsets[chunk] = np.where(good, stored_at, 0)
        sizes[chunk] = np.where(good, stored_size, 0)
        codecs[chunk] = codec_of_flags[np.where(good, flags, 0)]
    return _Descriptors(offsets, sizes, codecs, valid)


def _descriptors_present(image: _Image, count: int, table_at: int, incomplete: bool) -> int:
    """How many of ``count`` descriptors the image holds (all, unless ``incomplete``).

    :raises FormatError: if the table passes the end of the file, in a complete dump.
    """
    present = count
    if table_at + count * PAGE_DESC_SIZE > image.size:
        present = max(0, (image.size - table_at) // PAGE_DESC_SIZE)
        if not incomplete:
            raise image.error(f"page descriptor {present}", table_at + present * PAGE_DESC_SIZE,
                              f"passes the end of the file ({image.size:#x} bytes; {count} "
                              "pages dumped)")
    if image.flattened is not None and present * PAGE_DESC_SIZE > image.backing:
        if not incomplete:
            raise image.error("page descriptors", table_at, f"{count} of them are more than "
                              f"the file holds ({image.backing:#x} bytes)")
        present = image.backing // PAGE_DESC_SIZE
    return present


def _clip_runs(pfns: np.ndarray, lengths: np.ndarray,
               count: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs of the first ``count`` dumped pages only."""
    starts = np.cumsum(lengths, dtype=np.uint64) - lengths
    keep = starts < np.uint64(count)
    pfns, lengths, starts = pfns[keep], lengths[keep].copy(), starts[keep]
    if len(lengths):
        lengths[-1] = min(int(lengths[-1]), count - int(starts[-1]))
    return pfns, lengths


def _open(file: FileBytes, name: str, cache_bytes: int) -> Dump:
    image = _Image(file, name)
    header = _read_header(image.stored, name)
    sub = _read_sub_header(image.stored, name, header)
    vmcoreinfo = _read_vmcoreinfo(image.stored, name, header, sub)
    block_size = header.block_size
    bitmaps = _read_bitmaps(image, header, sub)
    pfns, run_lengths = bitmaps.pfns, bitmaps.lengths
    count = int(run_lengths.sum(dtype=np.uint64))
    ram_pages = bitmaps.excluded + count
    incomplete = bool(header.status & DUMP_DH_COMPRESSED_INCOMPLETE)
    present = _descriptors_present(image, count, bitmaps.table_at, incomplete)
    dropped = count - present
    if dropped:
        # Pages past the last descriptor an incomplete dump holds are holes.
        pfns, run_lengths = _clip_runs(pfns, run_lengths, present)
        count = present
    descriptors = _read_descriptors(image, header, count, bitmaps.table_at, incomplete)
    not_written = count - int(np.count_nonzero(descriptors.valid))
    if not_written:
        pfns, run_lengths, firsts = _split_runs(pfns, run_lengths, descriptors.valid)
    else:
        firsts = np.cumsum(run_lengths, dtype=np.uint64) - run_lengths
    seen = np.bincount(descriptors.codecs[descriptors.valid], minlength=len(CODEC_NAMES))
    require_codecs([codec for codec, number in enumerate(seen.tolist()) if number], name)

    def describe(index: int) -> str:
        owner = int(np.searchsorted(firsts, np.uint64(index), side="right")) - 1
        pfn = int(pfns[owner]) + index - int(firsts[owner])
        return f"page {pfn:#x} (physical address {pfn * block_size:#x})"

    source = FixedBlockSource(image.stored, block_size, descriptors.offsets,
                              descriptors.sizes, descriptors.codecs, name=file.name,
                              cache_bytes=cache_bytes, describe=describe)
    release = vmcoreinfo_value(vmcoreinfo, "OSRELEASE") or header.release
    info = _info(header, sub, image.flattened, seen, count - not_written, bitmaps.excluded,
                 ram_pages, bitmaps.max_mapnr, release, not_written + dropped, incomplete)
    size = np.uint64(block_size)
    return Dump(source=source, addresses=pfns * size, offsets=firsts * size,
                lengths=run_lengths * size, wordsize=header.wordsize, endian=header.endian,
                vmcoreinfo=vmcoreinfo, kind="kdump", info=info,
                machine=machine_number(header.machine))


def _descriptor_problem(offset: int, size: int, flags: int, block_size: int,
                        image_size: int) -> str:
    if flags & ~PAGE_COMPRESSION_FLAGS:
        return f"unknown flags {flags:#x}"
    if flags & (flags - 1):
        return f"more than one compression flag ({flags:#x})"
    if flags == 0 and size != block_size:
        return f"an uncompressed page of {size:#x} bytes (block size {block_size:#x})"
    if flags and not 0 < size <= 2 * block_size:
        return f"compressed size {size:#x} is not plausible (block size {block_size:#x})"
    return (f"data offset {offset:#x} + size {size:#x} passes the end of the file "
            f"({image_size:#x} bytes)")


def _info(header: DiskDumpHeader, sub: SubHeader, flattened: FlattenedBytes | None,
          seen: np.ndarray, dumped: int, excluded: int, ram_pages: int, max_mapnr: int,
          release: str, not_written: int, incomplete: bool) -> list[tuple[str, str]]:
    signature = header.signature.decode("ascii", "replace").strip()
    declared = [name for flag, name in ((DUMP_DH_COMPRESSED_ZLIB, "zlib"),
                                        (DUMP_DH_COMPRESSED_LZO, "lzo"),
                                        (DUMP_DH_COMPRESSED_SNAPPY, "snappy"),
                                        (DUMP_DH_COMPRESSED_ZSTD, "zstd"))
                if header.status & flag]
    used = [f"{CODEC_NAMES[codec]} {number} pages" for codec, number in enumerate(seen.tolist())
            if number]
    mib = dumped * header.block_size / (1 << 20)
    lines = [
        ("format", f"kdump-compressed ({signature}, header version {header.header_version})"),
        ("layout", "standard" if flattened is None
         else f"flattened ({flattened.record_count} records)"),
        ("block size", str(header.block_size)),
        ("compression declared", ", ".join(declared) or "none"),
        ("compression seen", ", ".join(used) or "none"),
        ("pages dumped", f"{dumped} ({mib:.1f} MiB)"),
        ("pages excluded", f"{excluded} (RAM left out of the dump)"),
        ("pages of RAM", str(ram_pages)),
        ("max pfn", f"{max_mapnr:#x}"),
    ]
    if sub.dump_level is not None:
        lines.append(("dump level", str(sub.dump_level)))
    if sub.split:
        lines.append(("split part", f"pfns {sub.start_pfn:#x}-{sub.end_pfn:#x}"))
    if incomplete or not_written:
        lines.append(("incomplete", f"yes: {not_written} dumped pages were not written"))
    if release:
        lines.append(("kernel release", release))
    if header.machine:
        lines.append(("machine", header.machine))
    return lines
