"""Large reads of block sources (kdump pages, AVML chunks): the whole blocks a read covers
are decoded straight into the caller's buffer, on several threads for zlib, without the
cache.  Checked against the bytes the dumps were written from, at unaligned offsets and
sizes on both sides of :data:`~vmemfs.sources.blocks.BULK_BYTES`, and with corrupt and
missing stored bytes."""

from __future__ import annotations

import logging
import os
import random
import struct
from pathlib import Path

import pytest
from dumpwriters import CODECS, page_content, write_avml, write_kdump

from vmemfs import HoleError, MemoryMap
from vmemfs.formats.kdump import open_kdump
from vmemfs.formats.lime import open_lime
from vmemfs.sources import blocks
from vmemfs.sources.blocks import BULK_BYTES, BlockSource

PAGE = 4096


def dense_map(rng: random.Random, pages: int, start_pfn: int = 0x100) -> tuple[MemoryMap, bytes]:
    """One extent of ``pages`` pages of mixed content (zero pages shared in the dump, noise
    stored raw, text compressed) and the bytes it holds."""
    data = b"".join(page_content(rng, PAGE) for _ in range(pages))
    memmap = MemoryMap()
    memmap.add_bytes(data, start_pfn * PAGE)
    return memmap, data


def kdump_of(tmp_path: Path, codec: str, flattened: bool, pages: int = 700,
             seed: str = "") -> tuple[MemoryMap, BlockSource, bytes, int]:
    memmap, data = dense_map(random.Random(f"{codec}{flattened}{seed}"), pages)
    path = tmp_path / "d"
    write_kdump(path, memmap, compression=codec, flattened=flattened,
                record_size=5000 if flattened else None)
    dump = open_kdump(path)
    got = MemoryMap()
    dump.add_to(got)
    assert isinstance(dump.source, BlockSource)
    return got, dump.source, data, 0x100 * PAGE


def random_reads(rng: random.Random, got: MemoryMap, data: bytes, start: int,
                 count: int) -> None:
    """``count`` reads of random sizes (mostly large) at random offsets inside the extent
    and across its end, each equal to the reference bytes."""
    for _ in range(count):
        size = rng.choice([BULK_BYTES - 1, BULK_BYTES, BULK_BYTES + 1, 100_000, 1 << 20,
                           (1 << 20) + 4095, 3 << 20, rng.randrange(1, 4 << 20)])
        offset = rng.randrange(0, len(data))
        if rng.random() < 0.3:
            offset &= ~(PAGE - 1)
        expected = data[offset:offset + size]
        assert got.read(start + offset, size) == expected, (hex(offset), size)


@pytest.mark.parametrize("parallel", [False, True], ids=["one-thread", "threads"])
@pytest.mark.parametrize("flattened", [False, True], ids=["standard", "flattened"])
@pytest.mark.parametrize("codec", CODECS)
def test_large_reads_equal_the_written_bytes(tmp_path: Path, codec: str, flattened: bool,
                                             parallel: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "PARALLEL_BLOCKS", 2 if parallel else 1 << 30)
    monkeypatch.setattr(blocks, "DECODE_THREADS", 3 if parallel else 1)
    got, source, data, start = kdump_of(tmp_path, codec, flattened)
    assert got.read(start, len(data)) == data
    random_reads(random.Random(codec), got, data, start, 60)
    assert source.failures == 0


def test_a_large_aligned_read_leaves_the_cache_alone(tmp_path: Path) -> None:
    got, source, data, start = kdump_of(tmp_path, "zlib", False)
    assert got.read(start, 1 << 20) == data[:1 << 20]
    assert source.cached_bytes() == 0
    # Unaligned: only the partial pages at either end go through the cache.
    assert got.read(start + 100, 1 << 20) == data[100:100 + (1 << 20)]
    assert 0 < source.cached_bytes() <= blocks.BATCH_BYTES * 2


def test_shared_zero_page_is_served_everywhere(tmp_path: Path) -> None:
    """Pages that all point at one stored zero page, interleaved with others."""
    rng = random.Random(3)
    pages = [bytes(PAGE) if n % 3 else rng.randbytes(PAGE) if n % 2 else b"ab" * 2048
             for n in range(600)]
    data = b"".join(pages)
    memmap = MemoryMap()
    memmap.add_bytes(data, 0x200000)
    write_kdump(tmp_path / "d", memmap, compression="zlib", share_zero_page=True)
    dump = open_kdump(tmp_path / "d")
    got = MemoryMap()
    dump.add_to(got)
    for offset in (0, PAGE, 5 * PAGE + 7):
        assert got.read(0x200000 + offset, 2 << 20) == data[offset:offset + (2 << 20)]


@pytest.mark.parametrize("parallel", [False, True], ids=["one-thread", "threads"])
@pytest.mark.parametrize("codec", ["zlib", "lzo", "snappy", "zstd"])
def test_a_corrupt_page_inside_a_large_read_ends_it_there(
        tmp_path: Path, codec: str, parallel: bool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Pages 60 and 200 corrupt: with two threads, each half of a 1 MiB read has one; the
    read ends at the earlier, and each is warned about once."""
    monkeypatch.setattr(blocks, "PARALLEL_BLOCKS", 2 if parallel else 1 << 30)
    monkeypatch.setattr(blocks, "DECODE_THREADS", 2 if parallel else 1)
    pages = [(b"page %d " % n) * 500 for n in range(400)]
    data = b"".join(page.ljust(PAGE, b"-")[:PAGE] for page in pages)
    memmap = MemoryMap()
    memmap.add_bytes(data, 0x100000)
    written = write_kdump(tmp_path / "d", memmap, compression=codec)
    with open(tmp_path / "d", "r+b") as stream:
        for number in (60, 200):
            stream.seek(written.table_offset + 24 * number)
            offset, size, _ = struct.unpack("<QII", stream.read(16))
            stream.seek(offset)
            stream.write(b"\xde\xad" * (size // 2))
    dump = open_kdump(tmp_path / "d")
    got = MemoryMap()
    dump.add_to(got)
    with caplog.at_level(logging.WARNING, logger="vmemfs.sources.blocks"):
        assert got.read(0x100000, 1 << 20) == data[:60 * PAGE]
        assert got.read(0x100000 + 61 * PAGE, 1 << 20) == data[61 * PAGE:200 * PAGE]
        with pytest.raises(HoleError) as info:
            got.get_bytes(0x100000 + 150 * PAGE, 100 * PAGE)
        assert info.value.address == 0x100000 + 200 * PAGE
        assert got.read(0x100000 + 201 * PAGE, 1 << 20) == data[201 * PAGE:][:1 << 20]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "page 0x13c " in warnings[0] and "page 0x1c8 " in warnings[1]


@pytest.mark.parametrize("page", [100, 200], ids=["uncompressed", "compressed"])
def test_stored_bytes_cut_short_end_a_large_read(tmp_path: Path, page: int,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The file shrinks under an open dump, to end inside the page data (in a run of
    uncompressed or of compressed pages): a read stops at the first page whose stored
    bytes are missing."""
    rng = random.Random(9)
    data = b"".join(rng.randbytes(PAGE) if n < 150 else (b"x%d" % n) * 1500
                    for n in range(300))
    data = b"".join(page[:PAGE] for page in (data[i:i + PAGE]
                                             for i in range(0, len(data), PAGE)))
    memmap = MemoryMap()
    memmap.add_bytes(data, 0)
    written = write_kdump(tmp_path / "d", memmap, compression="zlib",
                          share_zero_page=False)
    with open(tmp_path / "d", "rb") as stream:
        stream.seek(written.table_offset + 24 * page)
        cut, size = struct.unpack("<QI", stream.read(12))
    dump = open_kdump(tmp_path / "d")
    got = MemoryMap()
    dump.add_to(got)
    os.truncate(tmp_path / "d", cut + size // 2)
    with caplog.at_level(logging.WARNING, logger="vmemfs.sources.blocks"):
        assert got.read(0, 2 << 20) == data[:page * PAGE]
    assert any("pass the end" in r.getMessage() and f"page {page:#x} " in r.getMessage()
               for r in caplog.records)


def test_avml_large_reads(tmp_path: Path) -> None:
    """64 KiB chunks, every fifth stored uncompressed, with padding and skippable chunks
    between them; reads of any offset and size."""
    rng = random.Random(5)
    memmap, data = dense_map(rng, 900, start_pfn=0x1000)
    write_avml(tmp_path / "m.avml", memmap, uncompressed=lambda n: n % 5 == 0,
               extras=random.Random(6))
    dump = open_lime(tmp_path / "m.avml")
    got = MemoryMap()
    dump.add_to(got)
    start = 0x1000 * PAGE
    assert got.read(start, len(data)) == data
    random_reads(rng, got, data, start, 60)
