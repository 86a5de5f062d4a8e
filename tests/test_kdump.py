"""The kdump-compressed reader (SPEC §3.5) and its block source, on dumps written by
``dumpwriters`` from random sparse maps; the writer itself is checked against real
readers (drgn's libkdumpfile, ``makedumpfile -R``) where they are installed."""

from __future__ import annotations

import logging
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dumpwriters import (
    CODECS,
    KdumpWritten,
    block_warnings_off,
    compare_maps,
    mutated,
    open_and_read_all,
    page_content,
    random_map,
    runs,
    vmcoreinfo_text,
    write_kdump,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmemfs import FormatError, HoleError, MemoryMap
from vmemfs.formats import kdump
from vmemfs.formats.kdump import bitmap_runs, looks_like, open_kdump, vmcoreinfo_value
from vmemfs.sources.blocks import FixedBlockSource

LAYOUTS = [(64, "little"), (64, "big"), (32, "little"), (32, "big")]


def load(path: Path, **options: int) -> tuple[MemoryMap, kdump.Dump]:
    dump = open_kdump(path, **options)
    memmap = MemoryMap()
    dump.add_to(memmap)
    return memmap, dump


def error_of(path: Path) -> str:
    with pytest.raises(FormatError) as info:
        open_kdump(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def excluded_pfns(rng: random.Random, memmap: MemoryMap, share: float = 0.15) -> list[int]:
    frames = sorted({a // 4096 for s, e in memmap.extents() for a in range(s, e, 4096)})
    return [pfn for pfn in frames if rng.random() < share]


# ==================================================================== round trips


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("flattened", [False, True], ids=["standard", "flattened"])
@pytest.mark.parametrize(("wordsize", "endian"), LAYOUTS)
def test_every_byte_and_hole(tmp_path: Path, codec: str, flattened: bool, wordsize: int,
                             endian: str) -> None:
    """Dumped pages read back exactly; excluded pages, RAM holes and non-RAM are holes;
    the layout sets wordsize and endian; VMCOREINFO comes back as bytes."""
    rng = random.Random(f"{codec}{flattened}{wordsize}{endian}")
    original = random_map(rng, pages=150)
    excluded = excluded_pfns(rng, original)
    path = tmp_path / "guest.kdump"
    info = vmcoreinfo_text(release="6.9.0-test")
    written = write_kdump(path, original, compression=codec, flattened=flattened,
                          wordsize=wordsize, endian=endian, excluded=excluded,
                          extra_ram=[70_000, 70_001], vmcoreinfo=info,
                          record_size=rng.choice([None, 777, 4096, 5000]) if flattened else None)
    got, dump = load(path)
    expected = written.expected_map(original)
    compare_maps(got, expected, rng)
    for pfn in [*excluded[:20], 70_000]:
        assert not got.is_mapped(pfn * 4096)
        with pytest.raises(HoleError):
            got.get_bytes(pfn * 4096, 1)
    assert (got.wordsize, got.endian) == (wordsize, endian)
    assert dump.vmcoreinfo == info
    lines = dict(dump.info)
    assert lines["kernel release"] == "6.9.0-test"
    assert lines["layout"].startswith("flattened" if flattened else "standard")
    assert lines["pages dumped"].startswith(f"{len(written.dumped)} ")
    assert lines["pages excluded"].startswith(f"{len(written.excluded)} ")
    assert codec in lines["compression declared"] or codec == "raw"
    assert [m.kind for m in got.mappings[:1]] == ["kdump"]
    assert dump.machine == (62 if wordsize == 64 else 3)
    got.close()


def test_runs_of_pages_are_one_mapping_each(tmp_path: Path) -> None:
    memmap = MemoryMap()
    memmap.add_bytes(os.urandom(5 * 4096), 0x10000)          # pfns 0x10-0x14
    memmap.add_bytes(os.urandom(2 * 4096), 0x16000)          # pfns 0x16-0x17
    write_kdump(tmp_path / "d", memmap, excluded=[0x12])
    dump = open_kdump(tmp_path / "d")
    assert dump.addresses.dtype == np.uint64
    assert list(zip(dump.addresses.tolist(), dump.lengths.tolist(), strict=True)) == [
        (0x10000, 0x2000), (0x13000, 0x2000), (0x16000, 0x2000)]
    # Source offsets: the dumped pages packed together (descriptor k at k * 4096).
    assert dump.offsets.tolist() == [0, 0x2000, 0x4000]
    assert dump.source.size() == 6 * 4096
    dump.close()


def test_mixed_codecs_in_one_dump(tmp_path: Path) -> None:
    rng = random.Random(5)
    original = random_map(rng, pages=200)
    written = write_kdump(tmp_path / "d", original,
                          compression=lambda pfn: CODECS[pfn % len(CODECS)])
    got, dump = load(tmp_path / "d")
    compare_maps(got, written.expected_map(original), rng)
    seen = dict(dump.info)["compression seen"]
    for codec in CODECS:
        assert codec in seen
    assert dict(dump.info)["compression declared"] == "none"


@pytest.mark.parametrize("block_size", [1024, 16384, 65536])
def test_other_page_sizes(tmp_path: Path, block_size: int) -> None:
    rng = random.Random(block_size)
    original = random_map(rng, pages=40, block_size=block_size, top_pfn=4096)
    written = write_kdump(tmp_path / "d", original, block_size=block_size,
                          compression="lzo", machine="ppc64", endian="big")
    got, _ = load(tmp_path / "d")
    compare_maps(got, written.expected_map(original), rng)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5, 6])
def test_header_versions(tmp_path: Path, version: int) -> None:
    """Older headers lack fields: VMCOREINFO from version 3 (sub-header) or 4 (notes),
    max_mapnr_64 from 6 on; every version reads back."""
    rng = random.Random(version)
    original = random_map(rng, pages=30)
    info = vmcoreinfo_text()
    written = write_kdump(tmp_path / "d", original, header_version=version,
                          vmcoreinfo=info, compression="snappy")
    got, dump = load(tmp_path / "d")
    compare_maps(got, written.expected_map(original), rng)
    assert dump.vmcoreinfo == (info if version >= 3 else None)
    assert dict(dump.info)["kernel release"] == "6.1.0-vmemfs"   # utsname without it


@pytest.mark.parametrize("place", ["subheader", "note", "both"])
@pytest.mark.parametrize("sub_header_32", ["packed", "padded"])
def test_vmcoreinfo_places_and_32_bit_sub_headers(tmp_path: Path, place: str,
                                                  sub_header_32: str) -> None:
    original = random_map(random.Random(1), pages=10)
    info = vmcoreinfo_text(extra="CRASHTIME=1700000000\n")
    write_kdump(tmp_path / "d", original, wordsize=32, sub_header_32=sub_header_32,
                machine="armv7l" if sub_header_32 == "padded" else "i686",
                vmcoreinfo=info, vmcoreinfo_place=place)
    dump = open_kdump(tmp_path / "d")
    assert dump.vmcoreinfo == info
    assert vmcoreinfo_value(dump.vmcoreinfo, "CRASHTIME") == "1700000000"
    assert vmcoreinfo_value(dump.vmcoreinfo, "MISSING") is None
    dump.close()


def test_diskdump_signature_and_unaligned_max_mapnr(tmp_path: Path) -> None:
    rng = random.Random(2)
    original = random_map(rng, pages=20, top_pfn=3000)
    written = write_kdump(tmp_path / "d", original, signature=b"DISKDUMP",
                          max_mapnr=100_003)
    got, dump = load(tmp_path / "d")
    compare_maps(got, written.expected_map(original), rng)
    assert dict(dump.info)["max pfn"] == hex(100_003)
    assert dict(dump.info)["format"].startswith("kdump-compressed (DISKDUMP")


@pytest.mark.parametrize("version", [5, 6])
def test_max_mapnr_from_the_sub_header_from_version_6(tmp_path: Path, version: int) -> None:
    """The header's max_mapnr is 32 bits (clipped in a dump of more than 2**32 pages);
    version 6 has the whole value in the sub-header.  Here the header says 0x40 pages:
    version 5 ignores the frames above, version 6 maps them."""
    memmap = MemoryMap()
    memmap.add_bytes(b"low memory" * 100, 0x10000)
    memmap.add_bytes(b"high memory" * 100, 0x80000)
    write_kdump(tmp_path / "d", memmap, compression="zstd", header_version=version,
                header_max_mapnr=0x40)
    got, dump = load(tmp_path / "d")
    assert got.get_bytes(0x10000, 10) == b"low memory"
    assert got.is_mapped(0x80000) == (version == 6)
    assert dict(dump.info)["max pfn"] == ("0x81" if version == 6 else "0x40")


def test_split_part(tmp_path: Path) -> None:
    """One file of a ``makedumpfile --split`` set serves its own page frames only."""
    rng = random.Random(3)
    original = random_map(rng, pages=100, partial=False)
    written = write_kdump(tmp_path / "d", original, split=(20_000, 40_000))
    got, dump = load(tmp_path / "d")
    assert written.dumped and all(20_000 <= pfn < 40_000 for pfn in written.dumped)
    compare_maps(got, written.expected_map(original), rng)
    assert dict(dump.info)["split part"] == f"pfns {20_000:#x}-{40_000:#x}"


@pytest.mark.parametrize("flattened", [False, True], ids=["standard", "flattened"])
def test_incomplete_dump_serves_the_pages_written(tmp_path: Path, flattened: bool) -> None:
    """An incomplete dump (the flag set when the disk filled up) has zero descriptors and
    a short file: those pages are holes, the rest reads; no error."""
    rng = random.Random(4)
    original = random_map(rng, pages=120, partial=False)
    written = write_kdump(tmp_path / "d", original, incomplete_after=70, flattened=flattened)
    got, dump = load(tmp_path / "d")
    assert len(written.dumped) == 70
    compare_maps(got, written.expected_map(original), rng)
    assert dict(dump.info)["incomplete"].startswith("yes: ")


def test_zero_pages_share_one_stored_page(tmp_path: Path) -> None:
    memmap = MemoryMap()
    memmap.add_bytes(bytes(64 * 4096), 0)
    memmap.add_bytes(b"x" * 4096, 64 * 4096)
    written = write_kdump(tmp_path / "d", memmap)
    assert written.image_size < written.data_offset + 3 * 4096
    got, _ = load(tmp_path / "d")
    assert got.get_bytes(0, 64 * 4096) == bytes(64 * 4096)
    assert got.get_bytes(64 * 4096, 4096) == b"x" * 4096


def test_a_map_loaded_from_an_elf_core_converts(tmp_path: Path) -> None:
    """What the writers are for: any map (here one saved and loaded as an ELF core, as
    a QEMU ELF dump loads) written in another format and read back."""
    rng = random.Random(6)
    original = random_map(rng, pages=50, partial=False)
    original.save(tmp_path / "core.elf")
    from_elf = MemoryMap.load(tmp_path / "core.elf")
    written = write_kdump(tmp_path / "d", from_elf, compression="zlib", flattened=True)
    got, _ = load(tmp_path / "d")
    compare_maps(got, written.expected_map(original), rng)


# ==================================================================== flattened layout


def test_flattened_records_out_of_order_and_overridden(tmp_path: Path) -> None:
    """Records may come in any order (disjoint ones) and a later record wins over an
    earlier one at the same offsets."""
    rng = random.Random(7)
    original = random_map(rng, pages=80)
    written = write_kdump(tmp_path / "shuffled", original, flattened=True, record_size=999,
                          shuffle=random.Random(8))
    got, dump = load(tmp_path / "shuffled")
    compare_maps(got, written.expected_map(original), rng)
    assert dict(dump.info)["layout"] == f"flattened ({written.records} records)"
    write_kdump(tmp_path / "decoys", original, flattened=True, record_size=3000,
                decoys=random.Random(9))
    got, _ = load(tmp_path / "decoys")
    compare_maps(got, written.expected_map(original), rng)


@pytest.mark.skipif(shutil.which("makedumpfile") is None, reason="needs makedumpfile")
def test_makedumpfile_rearranges_the_flattened_writer_s_output(tmp_path: Path) -> None:
    """``makedumpfile -R`` turns our flattened file into exactly our standard one, and
    the reader gives the same map from all three."""
    rng = random.Random(10)
    original = random_map(rng, pages=60)
    write_kdump(tmp_path / "standard", original, compression="lzo",
                vmcoreinfo=vmcoreinfo_text())
    write_kdump(tmp_path / "flat", original, compression="lzo", flattened=True,
                record_size=1234, shuffle=random.Random(11), vmcoreinfo=vmcoreinfo_text())
    with open(tmp_path / "flat", "rb") as stream:
        subprocess.run(["makedumpfile", "-R", str(tmp_path / "rearranged")], stdin=stream,
                       check=True, capture_output=True, timeout=60)
    assert (tmp_path / "rearranged").read_bytes() == (tmp_path / "standard").read_bytes()
    maps = [load(tmp_path / name)[0] for name in ("standard", "flat", "rearranged")]
    for memmap in maps[1:]:
        compare_maps(memmap, maps[0], rng, reads=50)


# ==================================================================== real reader: drgn

DRGN_MACHINES = [
    # (wordsize, endian, machine, block size, sub-header, VMCOREINFO extras)
    (64, "little", "x86_64", 4096, "packed", ""),
    (32, "little", "i686", 4096, "packed", ""),
    (32, "little", "armv7l", 4096, "padded", "SYMBOL(_stext)=c0008000\n"),
    (64, "little", "aarch64", 65536, "packed", "NUMBER(VA_BITS)=48\nNUMBER(kimage_voffset)=0\n"),
    (64, "big", "ppc64", 65536, "packed", ""),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("flattened", [False, True], ids=["standard", "flattened"])
@pytest.mark.parametrize(("wordsize", "endian", "machine", "block_size", "sub", "extra"),
                         DRGN_MACHINES, ids=[m[2] for m in DRGN_MACHINES])
def test_drgn_reads_what_the_writer_wrote(tmp_path: Path, codec: str, flattened: bool,
                                          wordsize: int, endian: str, machine: str,
                                          block_size: int, sub: str, extra: str) -> None:
    """libkdumpfile (through drgn) reads every dumped page of our files as our reader
    does: the writer follows the published layout, so the round trips above test the
    reader against it."""
    drgn = pytest.importorskip("drgn")
    rng = random.Random(f"{codec}{machine}{flattened}")
    original = random_map(rng, pages=24, block_size=block_size, top_pfn=2048,
                          partial=False)
    written = write_kdump(tmp_path / "d", original, compression=codec, flattened=flattened,
                          wordsize=wordsize, endian=endian, machine=machine,
                          block_size=block_size, sub_header_32=sub,
                          excluded=[written_pfn for written_pfn in range(0, 2048, 7)],
                          vmcoreinfo=vmcoreinfo_text(page_size=block_size, extra=extra),
                          record_size=3333 if flattened else None)
    program = drgn.Program()
    program.set_core_dump(str(tmp_path / "d"))
    got, _ = load(tmp_path / "d")
    for first, count in runs(written.dumped):
        address, size = first * block_size, count * block_size
        assert program.read(address, size, True) == got.get_bytes(address, size)
    for pfn in written.excluded[:5]:
        with pytest.raises(drgn.FaultError):
            program.read(pfn * block_size, 1, True)
        assert not got.is_mapped(pfn * block_size)


# ==================================================================== the block source


def corrupt_page(path: Path, written_data_offset: int, order: str, table_offset: int,
                 number: int) -> int:
    """Overwrite the stored data of dumped page ``number`` with junk; its data offset."""
    with open(path, "r+b") as stream:
        stream.seek(table_offset + 24 * number)
        offset: int
        size: int
        offset, size, _ = struct.unpack(order + "QII", stream.read(16))
        assert offset >= written_data_offset
        stream.seek(offset)
        stream.write(b"\xde\xad" * (size // 2))
    return offset


@pytest.mark.parametrize("codec", ["zlib", "lzo", "snappy", "zstd"])
def test_a_page_that_fails_to_decompress_is_a_hole_with_one_warning(
        tmp_path: Path, codec: str, caplog: pytest.LogCaptureFixture) -> None:
    memmap = MemoryMap()
    pages = [(b"page %d " % n) * 400 for n in range(8)]
    memmap.add_bytes(b"".join(p.ljust(4096, b"-")[:4096] for p in pages), 0x100000)
    written = write_kdump(tmp_path / "d", memmap, compression=codec)
    corrupt_page(tmp_path / "d", written.data_offset, "<", written.table_offset, 5)
    got, dump = load(tmp_path / "d")
    with caplog.at_level(logging.WARNING, logger="vmemfs.sources.blocks"):
        data = got.read(0x100000, 8 * 4096)
        assert data == memmap.get_bytes(0x100000, 5 * 4096)      # short at page 5
        assert got.read(0x105000, 10) == b""
        with pytest.raises(HoleError) as info:
            got.get_bytes(0x104ff0, 0x20)
        assert info.value.address == 0x105000
        assert got.get_bytes(0x106000, 2 * 4096) == memmap.get_bytes(0x106000, 2 * 4096)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "page 0x105 (physical address 0x105000)" in warnings[0]
    assert warnings[0].startswith(str(dump.source.name))
    assert isinstance(dump.source, FixedBlockSource) and dump.source.failures >= 3


def test_cache_stays_within_its_bound_and_a_tiny_cache_still_reads(tmp_path: Path) -> None:
    rng = random.Random(12)
    original = random_map(rng, pages=600, partial=False)
    written = write_kdump(tmp_path / "d", original)
    expected = written.expected_map(original)
    got, dump = load(tmp_path / "d", cache_bytes=64 << 10)
    source = dump.source
    assert isinstance(source, FixedBlockSource)
    for start, end in got.extents():
        got.read(start, end - start)
        assert source.cached_bytes() <= source.cache_limit == 64 << 10
    tiny, _ = load(tmp_path / "d", cache_bytes=3 * 4096)
    compare_maps(tiny, expected, rng, reads=500)
    none, _ = load(tmp_path / "d", cache_bytes=0)
    compare_maps(none, expected, rng, reads=100)


def test_opening_reads_no_page_data(tmp_path: Path) -> None:
    """Every page's data corrupt: opening still succeeds (it decodes nothing) and each
    read is a hole."""
    memmap = MemoryMap()
    memmap.add_bytes(b"".join((b"%04d" % n) * 1024 for n in range(16)), 0)
    written = write_kdump(tmp_path / "d", memmap)
    assert written.codecs_used == {"zlib": 16}
    with open(tmp_path / "d", "r+b") as stream:
        stream.seek(written.data_offset)
        stream.write(b"\x5a" * (written.image_size - written.data_offset))
    got, _ = load(tmp_path / "d")
    assert got.extents() == [(0, 16 * 4096)]
    with block_warnings_off():
        for pfn in range(16):
            assert got.read(pfn * 4096, 4096) == b""


def test_source_reads_short_past_its_end_and_across_pages(tmp_path: Path) -> None:
    memmap = MemoryMap()
    memmap.add_bytes(bytes(range(256)) * 48, 0x3000)                 # 3 pages
    write_kdump(tmp_path / "d", memmap)
    dump = open_kdump(tmp_path / "d")
    source = dump.source
    buffer = bytearray(5000)
    assert source.read_into(4000, memoryview(buffer)) == 5000
    assert bytes(buffer) == memmap.get_bytes(0x3000 + 4000, 5000)
    assert source.read_into(3 * 4096 - 10, memoryview(buffer)) == 10
    assert source.read_into(3 * 4096, memoryview(buffer)) == 0
    assert source.read_into(10 * 4096, memoryview(buffer)) == 0
    assert source.pread(4090, 12) == memmap.get_bytes(0x3000 + 4090, 12)
    dump.close()


# ==================================================================== detection, add_to


def test_looks_like() -> None:
    assert looks_like(b"KDUMP   \x06\x00\x00\x00")
    assert looks_like(b"DISKDUMP")
    assert looks_like(b"makedumpfile\0\0\0\0")
    assert not looks_like(b"\x7fELF")
    assert not looks_like(b"KDUMP")
    assert not looks_like(b"")


def test_add_to_refuses_a_conflicting_wordsize(tmp_path: Path) -> None:
    memmap = MemoryMap()
    memmap.add_bytes(b"x" * 4096, 0)
    write_kdump(tmp_path / "d", memmap, wordsize=64)
    target = MemoryMap()
    target.wordsize = 32
    dump = open_kdump(tmp_path / "d")
    with pytest.raises(FormatError, match="64-bit dump, but the map's wordsize is already 32"):
        dump.add_to(target)
    assert target.extents() == []
    target.wordsize = None
    target.endian = "big"
    with pytest.raises(FormatError, match="little-endian dump"):
        dump.add_to(target)
    target.endian = None
    dump.add_to(target)
    assert (target.wordsize, target.endian, target.machine) == (64, "little", 62)


def test_bitmap_runs_against_a_naive_scan() -> None:
    rng = np.random.default_rng(13)
    for _ in range(50):
        size = int(rng.integers(1, 400))
        bitmap = (rng.random(size) < rng.random()).astype(np.uint8) * np.uint8(255)
        bitmap &= rng.integers(0, 256, size, dtype=np.uint8)
        first = int(rng.integers(0, size * 8))
        stop = int(rng.integers(first, size * 8 + 1))
        bits = [(int(bitmap[n // 8]) >> (n % 8)) & 1 for n in range(first, stop)]
        naive = [(first + a, c) for a, c in runs(n for n, b in enumerate(bits) if b)]
        starts, lengths = bitmap_runs(bitmap, first, stop)
        assert list(zip(starts.tolist(), lengths.tolist(), strict=True)) == naive


# ==================================================================== corrupt input


def small_dump(tmp_path: Path, **options: Any) -> tuple[Path, KdumpWritten, MemoryMap]:
    memmap = MemoryMap()
    memmap.add_bytes(b"".join(page_content(random.Random(n), 4096) for n in range(24)),
                     0x40000)
    path = tmp_path / "guest.kdump"
    written = write_kdump(path, memmap, **options)
    return path, written, memmap


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        stream.write(data)


def truncate(path: Path, size: int) -> None:
    os.truncate(path, size)


def test_truncated_header(tmp_path: Path) -> None:
    path, _, _ = small_dump(tmp_path)
    truncate(path, 300)
    assert error_of(path) == ("disk_dump_header at offset 0x0: truncated: 300 bytes, a "
                              "64-bit header needs 464")


def test_wrong_signature(tmp_path: Path) -> None:
    path = tmp_path / "guest.kdump"
    path.write_bytes(b"KDUMPX" + bytes(600))
    assert "not a kdump-compressed file" in error_of(path)


def test_implausible_block_size(tmp_path: Path) -> None:
    path, _, _ = small_dump(tmp_path)
    patch(path, 428, struct.pack("<i", 3000))
    patch(path, 416, struct.pack("<i", 3000))       # and in the 32-bit place
    assert "block_size 3000 is not a power of two" in error_of(path)


def test_bitmaps_past_the_end(tmp_path: Path) -> None:
    path, _, _ = small_dump(tmp_path)
    truncate(path, 2 * 4096 + 100)
    message = error_of(path)
    assert message.startswith("disk_dump_header at offset 0x0: the header, sub-header and "
                              "bitmaps")
    assert "pass the end of the file (0x2064 bytes)" in message


def test_absurd_max_mapnr(tmp_path: Path) -> None:
    path, _, _ = small_dump(tmp_path)
    patch(path, 440, struct.pack("<I", 0xFFFFFFF0))
    assert "cannot hold max_mapnr 0xfffffff0" in error_of(path)


def test_descriptor_table_past_the_end(tmp_path: Path) -> None:
    path, written, _ = small_dump(tmp_path, share_zero_page=False)
    cut = written.table_offset + 17 * 24 + 5
    truncate(path, cut)
    assert error_of(path) == (
        f"page descriptor 17 at offset {written.table_offset + 17 * 24:#x}: passes the end "
        f"of the file ({cut:#x} bytes; 24 pages dumped)")


def test_descriptor_data_past_the_end(tmp_path: Path) -> None:
    path, written, _ = small_dump(tmp_path, share_zero_page=False)
    with open(path, "rb") as stream:
        stream.seek(written.table_offset + 20 * 24)
        offset, size = struct.unpack("<QI", stream.read(12))
    truncate(path, offset + 1)
    assert error_of(path) == (
        f"page descriptor 20 at offset {written.table_offset + 20 * 24:#x}: data offset "
        f"{offset:#x} + size {size:#x} passes the end of the file ({offset + 1:#x} bytes)")


@pytest.mark.parametrize(("flags", "size", "problem"), [
    (0x40, 100, "unknown flags 0x40"),
    (0x3, 100, "more than one compression flag (0x3)"),
    (0x0, 100, "an uncompressed page of 0x64 bytes (block size 0x1000)"),
    (0x1, 0, "compressed size 0x0 is not plausible (block size 0x1000)"),
    (0x1, 0x10000, "compressed size 0x10000 is not plausible (block size 0x1000)"),
])
def test_bad_descriptor_fields(tmp_path: Path, flags: int, size: int, problem: str) -> None:
    path, written, _ = small_dump(tmp_path)
    at = written.table_offset + 3 * 24
    patch(path, at + 8, struct.pack("<II", size, flags))
    assert error_of(path) == f"page descriptor 3 at offset {at:#x}: {problem}"


def test_big_endian_descriptor_errors_read_the_dump_s_order(tmp_path: Path) -> None:
    path, written, _ = small_dump(tmp_path, endian="big", wordsize=32)
    at = written.table_offset + 2 * 24
    patch(path, at + 12, struct.pack(">I", 0x80))
    assert error_of(path) == f"page descriptor 2 at offset {at:#x}: unknown flags 0x80"


def test_vmcoreinfo_errors(tmp_path: Path) -> None:
    path, _, _ = small_dump(tmp_path, vmcoreinfo=vmcoreinfo_text())
    patch(path, 4096 + 40, struct.pack("<Q", 1 << 30))          # size_vmcoreinfo
    assert error_of(path) == ("kdump_sub_header at offset 0x1000: VMCOREINFO size "
                              "0x40000000 is not plausible (over 1 MiB)")
    patch(path, 4096 + 32, struct.pack("<QQ", 1 << 40, 100))
    assert error_of(path).startswith("kdump_sub_header at offset 0x1000: VMCOREINFO (0x64 "
                                     "bytes at 0x10000000000) passes the end of the file")


def test_truncated_sub_header_and_inverted_split(tmp_path: Path) -> None:
    path, _, _ = small_dump(tmp_path, split=(0x40, 0x58))
    patch(path, 4096 + 80, struct.pack("<QQ", 0x60, 0x50))
    assert error_of(path) == ("kdump_sub_header at offset 0x1000: split range start_pfn "
                              "0x60 > end_pfn 0x50")


def flattened_dump(tmp_path: Path) -> tuple[Path, list[int]]:
    """A small flattened dump and the file offsets of its record headers."""
    path, _, _ = small_dump(tmp_path, flattened=True, record_size=4096)
    content = path.read_bytes()
    headers = []
    position = 4096
    while True:
        headers.append(position)
        offset, size = struct.unpack_from(">qq", content, position)
        if offset == -1:
            return path, headers
        position += 16 + size


def test_flattened_errors(tmp_path: Path) -> None:
    path, headers = flattened_dump(tmp_path)
    original = path.read_bytes()
    third = headers[3]
    patch(path, third, struct.pack(">q", -5))
    assert error_of(path) == f"flattened record 3 at offset {third:#x}: negative offset -5"
    path.write_bytes(original)
    patch(path, third + 8, struct.pack(">q", -2))
    assert error_of(path) == f"flattened record 3 at offset {third:#x}: negative size -2"
    path.write_bytes(original)
    patch(path, third + 8, struct.pack(">q", 1 << 40))
    assert error_of(path) == (f"flattened record 3 at offset {third:#x}: its 0x10000000000 "
                              f"bytes pass the end of the file ({len(original):#x} bytes)")
    path.write_bytes(original[:headers[-1]])
    assert error_of(path) == (f"flattened record {len(headers) - 1} at offset "
                              f"{headers[-1]:#x}: the file ends at {headers[-1]:#x} before "
                              "the end record")
    path.write_bytes(original)
    patch(path, 16, struct.pack(">q", 2))
    assert error_of(path) == ("flattened header at offset 0x0: type 2 version 1, expected "
                              "type 1 version 1")
    path.write_bytes(original[:20])
    assert error_of(path) == "flattened header at offset 0x0: truncated (20 bytes)"


def test_flattened_elf_is_named(tmp_path: Path) -> None:
    path = tmp_path / "guest.kdump"
    image = b"\x7fELF" + bytes(600)
    path.write_bytes(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)
                     + bytes(4096 - 32) + struct.pack(">qq", 0, len(image)) + image
                     + struct.pack(">qq", -1, -1))
    assert "holds an ELF file" in error_of(path)


def test_page_data_in_a_flattened_gap_is_a_hole(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Image bytes no record covers read as zeros (as after ``makedumpfile -R``): a
    compressed page there fails to decode and reads as a hole."""
    memmap = MemoryMap()
    memmap.add_bytes(b"".join((b"%04d" % n) * 1024 for n in range(6)), 0)
    path = tmp_path / "d"
    written = write_kdump(path, memmap, flattened=True)
    content = bytearray(path.read_bytes())
    # Drop the record holding the data of page 3 (one record per page here).
    position = 4096
    data_records = []
    while True:
        offset, size = struct.unpack_from(">qq", content, position)
        if offset == -1:
            break
        if offset >= written.data_offset:
            data_records.append((position, size))
        position += 16 + size
    assert len(data_records) == 6
    at, size = data_records[3]
    del content[at:at + 16 + size]
    path.write_bytes(bytes(content))
    got, _ = load(path)
    with caplog.at_level(logging.WARNING, logger="vmemfs.sources.blocks"):
        assert got.read(0, 6 * 4096) == memmap.get_bytes(0, 3 * 4096)
        assert got.read(4 * 4096, 2 * 4096) == memmap.get_bytes(4 * 4096, 2 * 4096)
    assert len(caplog.records) == 1
    assert "page 0x3 " in caplog.records[0].getMessage()


FUZZ = settings(derandomize=True, max_examples=200, deadline=20_000, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("bases")
    memmap = random_map(random.Random(14), pages=12)
    bases = []
    for number, (flattened, wordsize, endian, codec) in enumerate([
            (False, 64, "little", "zlib"), (True, 64, "little", "lzo"),
            (False, 32, "big", "snappy"), (True, 32, "little", "zstd")]):
        path = folder / f"base{number}"
        write_kdump(path, memmap, flattened=flattened, wordsize=wordsize, endian=endian,
                    compression=codec, vmcoreinfo=vmcoreinfo_text(), record_size=2000,
                    excluded=[memmap.extents()[0][0] // 4096])
        bases.append(path.read_bytes())
    return bases


@FUZZ
@given(which=st.integers(0, 3), edits=st.lists(
    st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_dumps(tmp_path: Path, fuzz_bases: list[bytes], which: int,
                       edits: list[tuple[int, int]]) -> None:
    with block_warnings_off():
        path = tmp_path / "mutant"
        path.write_bytes(mutated(fuzz_bases[which], edits))
        open_and_read_all(open_kdump, path)


def test_every_truncation(tmp_path: Path, fuzz_bases: list[bytes]) -> None:
    """Each prefix (at a few hundred cut points, every structure boundary among them)
    opens or fails with a one-line FormatError."""
    with block_warnings_off():
        for content in fuzz_bases:
            path = tmp_path / "prefix"
            cuts = sorted(set(range(0, len(content), max(1, len(content) // 150)))
                          | {8, 16, 32, 463, 464, 4095, 4096, 4097, 4112, 8192})
            for cut in cuts:
                path.write_bytes(content[:cut])
                open_and_read_all(open_kdump, path)


def test_incomplete_dump_cut_inside_the_descriptor_table(tmp_path: Path) -> None:
    """Flagged incomplete and cut short inside the descriptors: it opens, and the pages
    whose descriptors or data are missing are holes."""
    path, written, _ = small_dump(tmp_path)
    with open(path, "r+b") as stream:
        stream.seek(424)
        (status,) = struct.unpack("<I", stream.read(4))
        stream.seek(424)
        stream.write(struct.pack("<I", status | 0x8))
    truncate(path, written.table_offset + 10 * 24 + 7)
    got, dump = load(path)
    assert got.extents() == []
    assert dict(dump.info)["incomplete"] == "yes: 24 dumped pages were not written"


def test_flattened_bitmaps_larger_than_the_file(tmp_path: Path) -> None:
    """A flattened image's gaps read as zeros, so a header claiming huge bitmaps (with a
    far record making the image that large) must not make the reader allocate them."""
    path, headers = flattened_dump(tmp_path)
    content = bytearray(path.read_bytes())
    # Records 0 and 1 hold the disk_dump_header and the kdump_sub_header: claim 2**20
    # bitmap blocks (4 GiB) and 2**34 pages.
    assert struct.unpack_from(">qq", content, headers[1]) == (4096, 4096)
    struct.pack_into("<I", content, headers[0] + 16 + 436, 1 << 20)
    struct.pack_into("<Q", content, headers[1] + 16 + 96, 1 << 34)
    far = struct.pack(">qq", 1 << 40, 1) + b"x"
    content[headers[-1]:headers[-1]] = far
    path.write_bytes(bytes(content))
    message = error_of(path)
    assert message.startswith("bitmaps at offset 0x2000 (flattened image")
    assert "more than the file holds" in message


def test_reads_from_several_threads(tmp_path: Path) -> None:
    """Searches read from worker threads: a shared source with a small cache serves
    concurrent readers the right bytes."""
    import threading

    rng = random.Random(15)
    original = random_map(rng, pages=300, partial=False)
    written = write_kdump(tmp_path / "d", original, flattened=True, record_size=5000,
                          compression="snappy")
    expected = written.expected_map(original)
    got, _ = load(tmp_path / "d", cache_bytes=8 * 4096)
    extents = expected.extents()
    failures: list[str] = []

    def reader(seed: int) -> None:
        local = random.Random(seed)
        for _ in range(300):
            start, end = local.choice(extents)
            address = local.randrange(start, end)
            size = local.randrange(1, 20_000)
            if got.read(address, size) != expected.read(address, size):
                failures.append(f"{address:#x}+{size}")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
