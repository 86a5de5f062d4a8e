"""Writers of memory dumps for the tests, by the formats' published layouts.

* :func:`write_kdump`: makedumpfile's kdump-compressed format, standard or flattened
  layout, 32- or 64-bit headers of either byte order, pages compressed with zlib, LZO,
  snappy or zstd or stored raw, pages left out through the second bitmap;
* :func:`write_lime`: LiME (one range per extent);
* :func:`write_avml`: AVML version 2 (framed snappy streams, blocks of at most 16 MiB,
  all-zero blocks left out).

Each takes any :class:`vmemfs.MemoryMap` (built in a test, or loaded from a QEMU ELF dump
with ``MemoryMap.load``) and returns what it wrote, so that a test can build the map it
expects back (:meth:`KdumpWritten.expected_map` and friends).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import random
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cramjam

from vmemfs import FormatError, MemoryMap
from vmemfs.formats.dump import Dump

# ---------------------------------------------------------------------- codecs

DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_COMPRESSED_ZSTD = 0x20
CODEC_FLAGS = {"raw": 0, "zlib": DUMP_DH_COMPRESSED_ZLIB, "lzo": DUMP_DH_COMPRESSED_LZO,
               "snappy": DUMP_DH_COMPRESSED_SNAPPY, "zstd": DUMP_DH_COMPRESSED_ZSTD}
CODECS = tuple(CODEC_FLAGS)


class _LzoCompressor:
    """``lzo1x_1_compress`` from liblzo2 (what makedumpfile and QEMU write with)."""

    def __init__(self) -> None:
        library = ctypes.CDLL(ctypes.util.find_library("lzo2") or "liblzo2.so.2")
        self._compress = library.lzo1x_1_compress
        self._compress.restype = ctypes.c_int
        self._compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                   ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
        self._work = ctypes.create_string_buffer(1 << 18)  # LZO1X_1_MEM_COMPRESS and more

    def __call__(self, data: bytes) -> bytes:
        out = ctypes.create_string_buffer(len(data) + len(data) // 16 + 64 + 3)
        produced = ctypes.c_size_t(0)
        code = self._compress(data, len(data), out, ctypes.byref(produced), self._work)
        assert code == 0, f"lzo1x_1_compress: {code}"
        return out.raw[:produced.value]


_lzo: _LzoCompressor | None = None


def compress(codec: str, page: bytes) -> bytes:
    """``page`` compressed with ``codec`` (as the kdump writers do), or as is for raw."""
    global _lzo
    if codec == "raw":
        return page
    if codec == "zlib":
        return zlib.compress(page, 1)
    if codec == "lzo":
        if _lzo is None:
            _lzo = _LzoCompressor()
        return _lzo(page)
    if codec == "snappy":
        return bytes(cramjam.snappy.compress_raw(page))
    if codec == "zstd":
        return bytes(cramjam.zstd.compress(page, 1))
    raise ValueError(f"unknown codec {codec!r}")


# ---------------------------------------------------------------------- pages of a map


def page_numbers(memmap: MemoryMap, block_size: int) -> list[int]:
    """Every page frame that a mapped byte of ``memmap`` falls in, ascending."""
    frames: list[int] = []
    for start, end in memmap.extents():
        first, stop = start // block_size, (end + block_size - 1) // block_size
        if frames and frames[-1] >= first:
            first = frames[-1] + 1
        frames.extend(range(first, stop))
    return frames


def page_bytes(memmap: MemoryMap, pfn: int, block_size: int) -> bytes:
    """Page ``pfn`` of ``memmap``, its unmapped bytes read as zeros."""
    return bytes(memmap.read_zero_filled(pfn * block_size, block_size))


def runs(numbers: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Runs ``(first, count)`` of consecutive integers in an ascending sequence."""
    first = previous = None
    for number in numbers:
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if first is not None and previous is not None:
            yield first, previous - first + 1
        first = previous = number
    if first is not None and previous is not None:
        yield first, previous - first + 1


# ---------------------------------------------------------------------- kdump


KDUMP_SIGNATURE = b"KDUMP   "
FLAT_SIGNATURE = b"makedumpfile"
PAGE_DESC_SIZE = 24
SUB_HEADER_LAYOUTS = {
    64: "QiiQQQQQQQQQQQ",
    "packed": "IiiIIQIQIQIQQQ",
    "padded": "IiiII4xQI4xQI4xQI4xQQQ",
}


def vmcoreinfo_text(release: str = "6.1.0-vmemfs", page_size: int = 4096,
                    extra: str = "") -> bytes:
    """A small VMCOREINFO of the fields drgn and the kernel view look at."""
    return (f"OSRELEASE={release}\nPAGESIZE={page_size}\n"
            "SYMBOL(swapper_pg_dir)=ffffffff82a0c000\nSYMBOL(init_top_pgt)=ffffffff82a0c000\n"
            "NUMBER(phys_base)=0\nKERNELOFFSET=0\nNUMBER(pgtable_l5_enabled)=0\n"
            f"{extra}").encode()


def elf_note(name: bytes, note_type: int, desc: bytes, order: str) -> bytes:
    """One ELF note (name and descriptor padded to 4 bytes) in byte order ``order``."""
    padded_name = (name + b"\0").ljust((len(name) + 4) // 4 * 4, b"\0")
    return (struct.pack(order + "III", len(name) + 1, len(desc), note_type) + padded_name
            + desc.ljust((len(desc) + 3) // 4 * 4, b"\0"))


@dataclass
class KdumpWritten:
    """What :func:`write_kdump` wrote."""

    path: Path
    block_size: int
    dumped: list[int]
    """Page frames whose data was written (and can be read back), ascending."""
    excluded: list[int]
    """Page frames in RAM (first bitmap) but not dumped (second bitmap clear)."""
    ram: list[int]
    max_mapnr: int
    codecs_used: dict[str, int] = field(default_factory=dict)
    records: int = 0
    """Flattened records written (0 for the standard layout)."""
    table_offset: int = 0
    """Offset of the page descriptor table in the (rearranged) image."""
    data_offset: int = 0
    image_size: int = 0

    def expected_map(self, memmap: MemoryMap) -> MemoryMap:
        """The map a reader should give back: the dumped pages of ``memmap`` only (pages
        only partly mapped in ``memmap`` read back with zeros where it had holes)."""
        expected = MemoryMap()
        size = self.block_size
        for first, count in runs(self.dumped):
            expected.add_bytes(b"".join(page_bytes(memmap, pfn, size)
                                        for pfn in range(first, first + count)), first * size)
        return expected


class _Sink:
    """Where the image's pieces go: at their offsets (standard), or as flattened records
    (each piece cut in records of ``record_size`` bytes, optionally after a decoy record
    with the same offset that the real one must override)."""

    def __init__(self, stream: BinaryIO, flattened: bool, record_size: int | None,
                 decoys: random.Random | None, shuffle: random.Random | None) -> None:
        self.stream = stream
        self.flattened = flattened
        self.record_size = record_size
        self.decoys = decoys
        self.shuffle = shuffle
        self.records = 0
        self.held: list[bytes] = []
        self.image_size = 0
        if flattened:
            head = FLAT_SIGNATURE.ljust(16, b"\0") + struct.pack(">qq", 1, 1)
            stream.write(head.ljust(4096, b"\0"))

    def write(self, offset: int, data: bytes) -> None:
        self.image_size = max(self.image_size, offset + len(data))
        if not self.flattened:
            self.stream.seek(offset)
            self.stream.write(data)
            return
        step = self.record_size or max(len(data), 1)
        for at in range(0, len(data), step):
            piece = data[at:at + step]
            if self.decoys is not None and self.decoys.random() < 0.2:
                self._record(offset + at, bytes(len(piece)).replace(b"\0", b"\xa5"))
            self._record(offset + at, piece)

    def _record(self, offset: int, piece: bytes) -> None:
        record = struct.pack(">qq", offset, len(piece)) + piece
        self.records += 1
        if self.shuffle is not None:
            self.held.append(record)
        else:
            self.stream.write(record)

    def close(self) -> None:
        if not self.flattened:
            self.stream.truncate(self.image_size)
            return
        if self.shuffle is not None:
            # Only disjoint records may change places; decoys are not used with shuffling.
            self.shuffle.shuffle(self.held)
            for record in self.held:
                self.stream.write(record)
        self.stream.write(struct.pack(">qq", -1, -1))


def write_kdump(path: str | os.PathLike[str], memmap: MemoryMap, *,
                block_size: int = 4096,
                compression: str | Callable[[int], str] = "zlib",
                flattened: bool = False,
                wordsize: int = 64,
                endian: str = "little",
                excluded: Iterable[int] = (),
                extra_ram: Iterable[int] = (),
                vmcoreinfo: bytes | None = None,
                vmcoreinfo_place: str = "both",
                header_version: int = 6,
                signature: bytes = KDUMP_SIGNATURE,
                machine: str | None = None,
                release: str = "6.1.0-vmemfs",
                dump_level: int = 31,
                sub_header_32: str = "packed",
                max_mapnr: int | None = None,
                header_max_mapnr: int | None = None,
                share_zero_page: bool = True,
                split: tuple[int, int] | None = None,
                incomplete_after: int | None = None,
                record_size: int | None = None,
                decoys: random.Random | None = None,
                shuffle: random.Random | None = None,
                descriptors_per_write: int = 128,
                timestamp: tuple[int, int] = (1_700_000_000, 250_000)) -> KdumpWritten:
    """Write the pages of ``memmap`` as a kdump-compressed file at ``path``.

    Every page frame a mapped byte of ``memmap`` falls in is RAM (first bitmap); those
    not in ``excluded`` are dumped (second bitmap).  ``extra_ram`` adds RAM frames holding
    nothing that are excluded too.  ``compression`` names a codec (``raw``, ``zlib``,
    ``lzo``, ``snappy``, ``zstd``) or maps a page frame to one; a page that does not
    shrink is stored raw, as makedumpfile does.  All-zero pages share one stored page
    (``share_zero_page``, as QEMU and makedumpfile do).

    Layout knobs: ``flattened`` (records of ``record_size`` bytes, ``decoys`` records
    overridden by later ones, or ``shuffle``\\ d records), ``wordsize``/``endian`` of the
    headers, ``sub_header_32`` (``"packed"`` as i386, ``"padded"`` as ARM),
    ``vmcoreinfo_place`` (``"subheader"``, ``"note"``, ``"both"``), ``max_mapnr`` (a larger
    one than the highest frame; ``header_max_mapnr`` writes another value in the 32-bit
    header field, as a dump of more than 2**32 pages must), ``split`` (this file holds
    frames ``[first, stop)``
    only), ``incomplete_after`` (only that many pages written, the rest of the descriptor
    table zero and the file cut short, with the incomplete flag set).
    """
    order = "<" if endian == "little" else ">"
    machine = machine or ("x86_64" if wordsize == 64 else "i686")
    excluded_set = set(excluded)
    frames = page_numbers(memmap, block_size)
    ram = sorted(set(frames) | set(extra_ram))
    dumped = [pfn for pfn in frames if pfn not in excluded_set]
    if split is not None:
        dumped = [pfn for pfn in dumped if split[0] <= pfn < split[1]]
    dumped_set = set(dumped)
    top = (ram[-1] + 1) if ram else 0
    max_mapnr = max(top, max_mapnr or 0)

    # Sub-header area: the structure, then VMCOREINFO, then the ELF notes.
    sub_layout = SUB_HEADER_LAYOUTS[64 if wordsize == 64 else sub_header_32]
    sub_size = struct.calcsize("<" + sub_layout)
    vmci_at = vmci_size = note_at = note_size = 0
    area = b""
    if vmcoreinfo is not None and header_version >= 3:
        if vmcoreinfo_place in ("subheader", "both"):
            vmci_at, vmci_size = block_size + sub_size, len(vmcoreinfo)
            area += vmcoreinfo
        if vmcoreinfo_place in ("note", "both") and header_version >= 4:
            notes = elf_note(b"VMEMFS-TEST", 0x100, bytes(40), order) + elf_note(
                b"VMCOREINFO", 0, vmcoreinfo, order)
            note_at, note_size = block_size + sub_size + len(area), len(notes)
            area += notes
    sub_hdr_size = (sub_size + len(area) + block_size - 1) // block_size
    bitmap_len = max(1, (max_mapnr + 7) // 8)
    half_blocks = (bitmap_len + block_size - 1) // block_size
    bitmap_blocks = 2 * half_blocks
    bitmap_at = (1 + sub_hdr_size) * block_size
    table_at = bitmap_at + bitmap_blocks * block_size
    data_at = table_at + len(dumped) * PAGE_DESC_SIZE

    status = 0
    chosen = compression if isinstance(compression, str) else None
    if chosen is not None:
        status |= CODEC_FLAGS[chosen]
    written = len(dumped) if incomplete_after is None else min(incomplete_after, len(dumped))
    if incomplete_after is not None:
        status |= DUMP_DH_COMPRESSED_INCOMPLETE

    with open(path, "wb") as stream:
        sink = _Sink(stream, flattened, record_size, decoys, shuffle)
        # disk_dump_header
        uts = b"".join(text.encode().ljust(65, b"\0") for text in
                       ("Linux", "vmemfs-test", release, "#1 SMP", machine, "(none)"))
        head = signature + struct.pack(order + "i", header_version) + uts
        if wordsize == 64:
            head += bytes(6) + struct.pack(order + "qq", *timestamp)
        else:
            head += bytes(2) + struct.pack(order + "ii", *timestamp)
        head += struct.pack(order + "IiiIIIIIIi", status, block_size, sub_hdr_size,
                            bitmap_blocks,
                            min(max_mapnr, 0xFFFFFFFF) if header_max_mapnr is None
                            else header_max_mapnr, len(ram), len(ram),
                            written, 0, 1)
        sink.write(0, head.ljust(block_size, b"\0"))
        # kdump_sub_header and what follows it
        if header_version >= 1:
            first, stop = split if split is not None else (0, 0)
            sub = struct.pack(order + sub_layout, 0, dump_level, int(split is not None),
                              first & 0xFFFFFFFF if wordsize == 32 else first,
                              stop & 0xFFFFFFFF if wordsize == 32 else stop,
                              vmci_at, vmci_size, note_at, note_size, 0, 0, first, stop,
                              max_mapnr)
            sink.write(block_size, (sub + area).ljust(sub_hdr_size * block_size, b"\0"))
        # bitmaps
        ram_bits = bytearray(half_blocks * block_size)
        dumped_bits = bytearray(half_blocks * block_size)
        for pfn in ram:
            ram_bits[pfn // 8] |= 1 << (pfn % 8)
        for pfn in dumped:
            dumped_bits[pfn // 8] |= 1 << (pfn % 8)
        sink.write(bitmap_at, bytes(ram_bits))
        sink.write(bitmap_at + len(ram_bits), bytes(dumped_bits))
        # page data and descriptors, in pfn order
        codecs_used: dict[str, int] = {}
        data_cursor = data_at
        zero_page_at: int | None = None
        zero = bytes(block_size)
        pending: list[bytes] = []
        pending_at = table_at
        for number, pfn in enumerate(dumped[:written]):
            page = page_bytes(memmap, pfn, block_size)
            if share_zero_page and page == zero:
                if zero_page_at is None:
                    zero_page_at = data_cursor
                    sink.write(data_cursor, zero)
                    data_cursor += block_size
                descriptor = (zero_page_at, block_size, 0)
                used = "raw"
            else:
                used = chosen if chosen is not None else compression(pfn)  # type: ignore[operator]
                packed = compress(used, page)
                if len(packed) >= block_size:
                    packed, used = page, "raw"
                sink.write(data_cursor, packed)
                descriptor = (data_cursor, len(packed), CODEC_FLAGS[used])
                data_cursor += len(packed)
            codecs_used[used] = codecs_used.get(used, 0) + 1
            pending.append(struct.pack(order + "QIIQ", *descriptor, 0))
            if len(pending) == descriptors_per_write or number == written - 1:
                sink.write(pending_at, b"".join(pending))
                pending_at += sum(len(p) for p in pending)
                pending = []
        if written < len(dumped) and not flattened:
            sink.image_size = max(sink.image_size, data_at)
        sink.close()
    return KdumpWritten(Path(path), block_size, sorted(dumped_set)[:written]
                        if incomplete_after is not None else dumped,
                        sorted(set(ram) - dumped_set), ram, max_mapnr, codecs_used,
                        sink.records, table_at, data_at, sink.image_size)


# ---------------------------------------------------------------------- LiME and AVML


LIME_MAGIC = 0x4C694D45
AVML_MAGIC = 0x4C4D5641
SNAPPY_STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"


def lime_header(magic: int, version: int, start: int, length: int) -> bytes:
    """A 32-byte LiME/AVML range header (``e_addr`` inclusive)."""
    return struct.pack("<IIQQQ", magic, version, start, start + length - 1, 0)


def write_lime(path: str | os.PathLike[str], memmap: MemoryMap,
               ranges: Iterable[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Write ``memmap`` as LiME: one range per extent (or per ``(start, end)`` given,
    whose holes read as zeros).  Returns the ranges written."""
    chosen = list(ranges) if ranges is not None else memmap.extents()
    with open(path, "wb") as stream:
        for start, end in chosen:
            stream.write(lime_header(LIME_MAGIC, 1, start, end - start))
            for at in range(start, end, 1 << 20):
                stream.write(memmap.read_zero_filled(at, min(1 << 20, end - at)))
    return chosen


def snappy_chunk(data: bytes, *, compressed: bool = True) -> bytes:
    """One framed-snappy chunk holding ``data`` (at most 64 KiB), compressed or not;
    the CRC-32C comes from cramjam's framing of the same bytes."""
    framed = bytes(cramjam.snappy.compress(data))
    assert framed.startswith(SNAPPY_STREAM_IDENTIFIER)
    chunk = framed[len(SNAPPY_STREAM_IDENTIFIER):]
    length = int.from_bytes(chunk[1:4], "little")
    assert len(chunk) == 4 + length, "one chunk per 64 KiB"
    if compressed and chunk[0] == 0:
        return chunk
    checksum = chunk[4:8]
    return b"\x01" + (len(data) + 4).to_bytes(3, "little") + checksum + data


def snappy_stream(data: bytes, *, chunk_size: int = 1 << 16,
                  uncompressed: Callable[[int], bool] | None = None,
                  extras: random.Random | None = None) -> bytes:
    """A framed snappy stream of ``data`` in chunks of ``chunk_size`` bytes.

    ``uncompressed(n)`` stores chunk ``n`` uncompressed; ``extras`` inserts padding,
    skippable chunks and repeated stream identifiers between chunks at random."""
    parts = [SNAPPY_STREAM_IDENTIFIER]
    for number, at in enumerate(range(0, len(data), chunk_size)):
        if extras is not None and extras.random() < 0.3:
            parts.append(extras.choice([
                b"\xfe\x03\x00\x00\x00\x00\x00",
                b"\x80\x02\x00\x00ab",
                SNAPPY_STREAM_IDENTIFIER,
            ]))
        force = uncompressed is not None and uncompressed(number)
        parts.append(snappy_chunk(data[at:at + chunk_size], compressed=not force))
    return b"".join(parts)


@dataclass
class AvmlWritten:
    """What :func:`write_avml` wrote: the ranges ``(start, end)`` with data (all-zero
    blocks left out)."""

    path: Path
    ranges: list[tuple[int, int]]
    omitted: list[tuple[int, int]]

    def expected_map(self, memmap: MemoryMap) -> MemoryMap:
        """``memmap`` restricted to the ranges written (their holes read as zeros)."""
        expected = MemoryMap()
        for start, end in self.ranges:
            expected.add_bytes(bytes(memmap.read_zero_filled(start, end - start)), start)
        return expected


def write_avml(path: str | os.PathLike[str], memmap: MemoryMap, *,
               max_block: int = 16 << 20, chunk_size: int = 1 << 16,
               uncompressed: Callable[[int], bool] | None = None,
               extras: random.Random | None = None,
               omit_zero_blocks: bool = True) -> AvmlWritten:
    """Write ``memmap`` as AVML version 2, as avml does: each extent cut into blocks of
    at most ``max_block`` bytes, each block's bytes a framed snappy stream followed by
    its u64 length, and blocks that are all zero left out."""
    written: list[tuple[int, int]] = []
    omitted: list[tuple[int, int]] = []
    with open(path, "wb") as stream:
        for start, end in memmap.extents():
            for at in range(start, end, max_block):
                stop = min(at + max_block, end)
                block = bytes(memmap.read_zero_filled(at, stop - at))
                if omit_zero_blocks and not any(block):
                    omitted.append((at, stop))
                    continue
                body = snappy_stream(block, chunk_size=chunk_size, uncompressed=uncompressed,
                                     extras=extras)
                stream.write(lime_header(AVML_MAGIC, 2, at, stop - at))
                stream.write(body)
                stream.write(struct.pack("<Q", len(body)))
                written.append((at, stop))
    return AvmlWritten(Path(path), written, omitted)


# ---------------------------------------------------------------------- test maps


def page_content(rng: random.Random, size: int) -> bytes:
    """A page as dumps hold them: zeros, text-like repeats, sparse words or noise."""
    kind = rng.random()
    if kind < 0.2:
        return bytes(size)
    if kind < 0.5:
        word = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(3, 40)))
        return (word * (size // len(word) + 1))[:size]
    if kind < 0.8:
        page = bytearray(size)
        for _ in range(rng.randrange(1, 40)):
            at = rng.randrange(0, size - 8) & ~7
            page[at:at + 8] = rng.randbytes(8)
        return bytes(page)
    return rng.randbytes(size)


def random_map(rng: random.Random, *, pages: int = 200, block_size: int = 4096,
               partial: bool = True, top_pfn: int = 1 << 16) -> MemoryMap:
    """A sparse map of about ``pages`` pages in runs of 1 to 12 pages below page
    ``top_pfn``, with holes between runs; with ``partial``, some runs start or end
    inside a page (unaligned extents)."""
    memmap = MemoryMap()
    placed = 0
    taken: set[int] = set()
    while placed < pages:
        count = rng.randrange(1, 13)
        first = rng.randrange(0, top_pfn - count)
        if any(pfn in taken for pfn in range(first - 1, first + count + 1)):
            continue
        taken.update(range(first, first + count))
        data = b"".join(page_content(rng, block_size) for _ in range(count))
        start = first * block_size
        if partial and rng.random() < 0.2:
            cut = rng.randrange(1, block_size)
            data, start = data[cut:], start + cut
        if partial and rng.random() < 0.2:
            data = data[:len(data) - rng.randrange(1, block_size)]
        memmap.add_bytes(data, start)
        placed += count
    return memmap


def compare_maps(got: MemoryMap, expected: MemoryMap, rng: random.Random,
                 reads: int = 300) -> None:
    """Assert that ``got`` holds exactly ``expected``: the same extents, every byte, and
    ``reads`` random unaligned reads (inside, across and outside extents) alike."""
    assert got.extents() == expected.extents()
    for start, end in expected.extents():
        for at in range(start, end, 1 << 20):
            size = min(1 << 20, end - at)
            assert got.get_bytes(at, size) == expected.get_bytes(at, size), hex(at)
    extents = expected.extents()
    if not extents:
        return
    for _ in range(reads):
        start, end = rng.choice(extents)
        address = max(0, rng.randrange(start - 3 * 4096, end + 4096))
        size = rng.choice([1, 2, 7, 100, 4095, 4096, 4097, 10_000, 70_000])
        assert got.read(address, size) == expected.read(address, size), (hex(address), size)


@contextlib.contextmanager
def block_warnings_off() -> Iterator[None]:
    """Silence the block sources' warnings about pages that fail to decode, for tests
    that read many corrupt pages on purpose."""
    logger = logging.getLogger("vmemfs.sources.blocks")
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


def open_and_read_all(open_dump: Callable[[Path], Dump], path: Path) -> None:
    """Open ``path`` with ``open_dump``: a one-line FormatError naming it, or a dump whose
    every region reads (short reads allowed, exceptions not)."""
    try:
        dump = open_dump(path)
    except FormatError as error:
        assert "\n" not in str(error) and str(error).startswith(f"{path}: ")
        return
    try:
        buffer = bytearray(1 << 16)
        for offset, length in zip(dump.offsets.tolist(), dump.lengths.tolist(), strict=True):
            for at in range(offset, offset + length, len(buffer)):
                dump.source.read_into(at, memoryview(buffer)[:min(len(buffer),
                                                                  offset + length - at)])
    finally:
        dump.close()


def mutated(base: bytes, edits: list[tuple[int, int]]) -> bytes:
    """``base`` with byte ``position % len(base)`` set to ``value`` for each edit."""
    content = bytearray(base)
    for position, value in edits:
        content[position % len(content)] = value
    return bytes(content)
