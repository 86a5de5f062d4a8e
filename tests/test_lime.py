"""The LiME and AVML readers (SPEC §3.6), on captures written by ``dumpwriters``."""

from __future__ import annotations

import logging
import os
import random
import struct
from pathlib import Path

import cramjam
import numpy as np
import pytest
from dumpwriters import (
    AVML_MAGIC,
    LIME_MAGIC,
    SNAPPY_STREAM_IDENTIFIER,
    block_warnings_off,
    compare_maps,
    lime_header,
    mutated,
    open_and_read_all,
    random_map,
    snappy_chunk,
    snappy_stream,
    write_avml,
    write_lime,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmemfs import FormatError, HoleError, MemoryMap
from vmemfs.formats.dump import Dump
from vmemfs.formats.lime import looks_like, open_lime, sniff
from vmemfs.sources import FileSource
from vmemfs.sources.blocks import VariableBlockSource


def load(path: Path, **options: int) -> tuple[MemoryMap, Dump]:
    dump = open_lime(path, **options)
    memmap = MemoryMap()
    dump.add_to(memmap)
    return memmap, dump


def error_of(path: Path) -> str:
    with pytest.raises(FormatError) as info:
        open_lime(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def avml_range(start: int, data: bytes, body: bytes | None = None,
               declared: int | None = None) -> bytes:
    """One AVML range: header, framed stream (``body`` instead if given), its length."""
    stream = snappy_stream(data) if body is None else body
    return (lime_header(AVML_MAGIC, 2, start, len(data)) + stream
            + struct.pack("<Q", len(stream) if declared is None else declared))


# ==================================================================== LiME


def test_lime_every_byte_and_hole(tmp_path: Path) -> None:
    rng = random.Random(1)
    original = random_map(rng, pages=200)                  # unaligned extents included
    path = tmp_path / "mem.lime"
    ranges = write_lime(path, original)
    got, dump = load(path)
    compare_maps(got, original, rng)
    assert (got.wordsize, got.endian, dump.vmcoreinfo) == (None, None, None)
    assert dump.kind == "lime" and [m.kind for m in got.mappings][:1] == ["lime"]
    assert dict(dump.info)["ranges"] == str(len(ranges))
    got.close()


def test_lime_reads_are_zero_copy_views_of_the_file(tmp_path: Path) -> None:
    memmap = MemoryMap.of_bytes(b"0123456789" * 1000, 0x1234_5678)
    path = tmp_path / "mem.lime"
    write_lime(path, memmap)
    dump = open_lime(path)
    assert isinstance(dump.source, FileSource)
    assert dump.offsets.tolist() == [32]
    view = dump.source.view(32 + 5, 10)
    assert isinstance(view, memoryview) and bytes(view) == b"5678901234"
    dump.close()


def test_lime_odd_ranges_and_later_ranges_win(tmp_path: Path) -> None:
    #   range 0:  AAAAAAAAAAAAAAAAAAAAAAAA    0x1001 .. 0x1019 (25 bytes)
    #   range 1:        BBBBB                 inside: wins there
    #   range 2:                        CCCC  tail and past it
    #   range 3:  one byte at the top of the address space
    path = tmp_path / "mem.lime"
    path.write_bytes(lime_header(LIME_MAGIC, 1, 0x1001, 25) + b"A" * 25
                     + lime_header(LIME_MAGIC, 1, 0x1007, 5) + b"B" * 5
                     + lime_header(LIME_MAGIC, 1, 0x1018, 4) + b"C" * 4
                     + lime_header(LIME_MAGIC, 1, 2**64 - 1, 1) + b"T")
    got, _ = load(path)
    assert got.extents() == [(0x1001, 0x101C), (2**64 - 1, 2**64)]
    assert got.get_bytes(0x1001, 27) == b"A" * 6 + b"B" * 5 + b"A" * 12 + b"C" * 4
    assert got.get_byte(2**64 - 1) == ord("T")
    with pytest.raises(HoleError):
        got.get_bytes(0x1000, 2)


def test_empty_lime_file_is_an_empty_map(tmp_path: Path) -> None:
    path = tmp_path / "mem.lime"
    path.write_bytes(b"")
    assert error_of(path) == "header 0 at offset 0x0: not a LiME or AVML header"


# ==================================================================== AVML


@pytest.mark.parametrize(("max_block", "chunk_size"), [(16 << 20, 1 << 16),
                                                        (10_000, 3000), (1 << 16, 1 << 16)])
def test_avml_every_byte_and_hole(tmp_path: Path, max_block: int, chunk_size: int) -> None:
    """All-zero blocks are left out (holes); the rest reads back exactly, through
    compressed and uncompressed chunks, padding, skippable chunks and repeated stream
    identifiers."""
    rng = random.Random(max_block + chunk_size)
    original = random_map(rng, pages=200)
    path = tmp_path / "mem.avml"
    written = write_avml(path, original, max_block=max_block, chunk_size=chunk_size,
                         uncompressed=lambda n: n % 4 == 1, extras=random.Random(2))
    got, dump = load(path)
    expected = written.expected_map(original)
    compare_maps(got, expected, rng)
    if max_block == 10_000:
        assert written.omitted                # blocks of 2.4 pages: some are all zero
    for start, end in written.omitted[:20]:
        assert not got.is_mapped(start) and not got.is_mapped(end - 1)
    assert (got.wordsize, got.endian) == (None, None)
    assert dump.kind == "avml"
    assert dict(dump.info)["ranges"] == str(len(written.ranges))


def test_avml_streams_are_standard_framed_snappy(tmp_path: Path) -> None:
    """Each range's stream decompresses with cramjam's framed decoder (the Rust snap
    crate that avml itself writes with) to the range's bytes: the writer's framing is
    the real one."""
    rng = random.Random(3)
    original = random_map(rng, pages=30)
    path = tmp_path / "mem.avml"
    written = write_avml(path, original, max_block=20_000, uncompressed=lambda n: n % 2 == 0)
    content = path.read_bytes()
    position = 0
    for start, end in written.ranges:
        magic, version, s_addr, e_addr = struct.unpack_from("<IIQQ", content, position)
        assert (magic, version, s_addr, e_addr) == (AVML_MAGIC, 2, start, end - 1)
        stream_at = position + 32
        # The length comes after the stream: find it by decoding the stream's chunks.
        length = len(snappy_stream(bytes(original.read_zero_filled(start, end - start)),
                                   uncompressed=lambda n: n % 2 == 0))
        stream = content[stream_at:stream_at + length]
        assert bytes(cramjam.snappy.decompress(stream)) == \
            bytes(original.read_zero_filled(start, end - start))
        (declared,) = struct.unpack_from("<Q", content, stream_at + length)
        assert declared == length
        position = stream_at + length + 8
    assert position == len(content)


def test_avml_read_decodes_only_the_chunks_it_touches(tmp_path: Path) -> None:
    data = b"".join(random.Random(n).randbytes(1 << 16) for n in range(64))   # 4 MiB
    path = tmp_path / "mem.avml"
    path.write_bytes(avml_range(0x1000_0000, data))
    got, dump = load(path)
    source = dump.source
    assert isinstance(source, VariableBlockSource) and source.block_count == 64
    assert source.cached_bytes() == 0
    assert got.get_bytes(0x1000_0000 + 40 * (1 << 16) + 5, 10) == data[40 * 65536 + 5:][:10]
    assert source.cached_bytes() == 1 << 16
    assert got.get_bytes(0x1000_0000 + 41 * (1 << 16) - 3, 6) == data[41 * 65536 - 3:][:6]
    assert source.cached_bytes() == 2 << 16


def test_avml_cache_bound(tmp_path: Path) -> None:
    rng = random.Random(4)
    original = random_map(rng, pages=400, partial=False)
    path = tmp_path / "mem.avml"
    written = write_avml(path, original)
    got, dump = load(path, cache_bytes=200_000)
    source = dump.source
    assert isinstance(source, VariableBlockSource)
    for start, end in got.extents():
        got.read(start, end - start)
        assert source.cached_bytes() <= 200_000
    compare_maps(got, written.expected_map(original), rng, reads=300)


def test_avml_corrupt_chunk_is_a_hole_with_one_warning(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    data = b"".join((b"chunk %02d " % n) * 7282 for n in range(4))[:4 << 16]
    body = bytearray(snappy_stream(data))
    # Flip a byte inside the third data chunk's payload (CRC no longer matches).
    position = len(SNAPPY_STREAM_IDENTIFIER)
    for _ in range(2):
        position += 4 + int.from_bytes(body[position + 1:position + 4], "little")
    body[position + 12] ^= 0xFF
    path = tmp_path / "mem.avml"
    path.write_bytes(avml_range(0x100000, data, bytes(body)))
    got, _ = load(path)
    chunk_at = 32 + position
    with caplog.at_level(logging.WARNING, logger="vmemfs.sources.blocks"):
        assert got.read(0x100000, len(data)) == data[:2 << 16]
        assert got.read(0x100000 + (2 << 16) + 100, 10) == b""
        assert got.get_bytes(0x100000 + (3 << 16), 1 << 16) == data[3 << 16:]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert (f"snappy chunk at offset {chunk_at:#x} (physical addresses "
            f"{0x100000 + (2 << 16):#x}-{0x100000 + (3 << 16) - 1:#x})") in warnings[0]


def test_sniff() -> None:
    assert sniff(struct.pack("<II", LIME_MAGIC, 1)) == "lime"
    assert sniff(struct.pack("<II", AVML_MAGIC, 2)) == "avml"
    assert sniff(struct.pack("<II", AVML_MAGIC, 1)) is None
    assert sniff(b"EMiL\x01\x00\x00\x00") == "lime"
    assert looks_like(b"AVML\x02\x00\x00\x00" + bytes(24))
    assert not looks_like(b"AVML") and not looks_like(b"\x7fELF")


# ==================================================================== corrupt input


def test_lime_errors(tmp_path: Path) -> None:
    path = tmp_path / "mem.lime"
    good = lime_header(LIME_MAGIC, 1, 0x1000, 16) + b"x" * 16
    path.write_bytes(good + good[:20])
    assert error_of(path) == "LiME header 1 at offset 0x30: truncated (20 of 32 bytes)"
    path.write_bytes(good + lime_header(LIME_MAGIC, 2, 0, 1) + b"x")
    assert error_of(path) == ("LiME header 1 at offset 0x30: magic 0x4c694d45 version 2, "
                              "expected 0x4c694d45 version 1")
    path.write_bytes(good + struct.pack("<IIQQQ", LIME_MAGIC, 1, 0x2000, 0x1fff, 0))
    assert error_of(path) == ("LiME header 1 at offset 0x30: e_addr 0x1fff is below s_addr "
                              "0x2000")
    path.write_bytes(good + lime_header(LIME_MAGIC, 1, 0, 1 << 40) + b"short")
    assert error_of(path) == ("LiME header 1 at offset 0x30: its 0x10000000000 bytes pass "
                              "the end of the file (0x55 bytes)")
    path.write_bytes(good + avml_range(0, b"mixed"))
    assert error_of(path) == ("LiME header 1 at offset 0x30: magic 0x4c4d5641 version 2, "
                              "expected 0x4c694d45 version 1")


def test_avml_errors(tmp_path: Path) -> None:
    path = tmp_path / "mem.avml"
    data = b"some bytes " * 100
    good = avml_range(0x5000, data)
    first = lime_header(AVML_MAGIC, 2, 0x5000, len(data))

    def second(body: bytes, declared: int | None = None) -> str:
        path.write_bytes(avml_range(0, b"x" * 32) + avml_range(0x5000, data, body, declared))
        return error_of(path)

    header_size = len(avml_range(0, b"x" * 32))
    where = f"AVML header 1 at offset {header_size:#x}"
    chunk_at = header_size + 32 + len(SNAPPY_STREAM_IDENTIFIER)
    chunk = snappy_chunk(data)
    assert second(SNAPPY_STREAM_IDENTIFIER + chunk[:1] + b"\xff\xff\x7f" + chunk[4:]) == (
        f"{where}: snappy chunk at offset {chunk_at:#x}: length 0x7fffff passes the end of "
        f"the file ({header_size + 32 + 10 + len(chunk) + 8:#x} bytes)")
    assert second(SNAPPY_STREAM_IDENTIFIER + b"\x05" + chunk[1:]) == (
        f"{where}: snappy chunk at offset {chunk_at:#x}: reserved unskippable chunk type 0x05")
    assert second(chunk) == (
        f"{where}: snappy chunk at offset {header_size + 32:#x}: type 0x00, expected the "
        "stream identifier")
    assert second(SNAPPY_STREAM_IDENTIFIER + chunk, declared=5) == (
        f"{where}: stream length at offset {chunk_at + len(chunk):#x}: 0x5, but the chunks "
        f"hold {10 + len(chunk):#x} bytes")
    too_long = snappy_chunk(data + b"!")
    assert second(SNAPPY_STREAM_IDENTIFIER + too_long) == (
        f"{where}: snappy chunk at offset {chunk_at:#x}: its {len(data) + 1:#x} bytes pass "
        f"the range's {len(data):#x}")
    big = b"\x01" + (70_000).to_bytes(3, "little") + bytes(70_000)
    assert second(SNAPPY_STREAM_IDENTIFIER + big) == (
        f"{where}: snappy chunk at offset {chunk_at:#x}: {70_000 - 4:#x} bytes of data, "
        "more than 64 KiB")
    assert second(SNAPPY_STREAM_IDENTIFIER + b"\x00\x02\x00\x00ab") == (
        f"{where}: snappy chunk at offset {chunk_at:#x}: length 2 is too short for a "
        "checksum")
    path.write_bytes(good[:-3])
    assert error_of(path) == (f"AVML header 0 at offset 0x0: stream length at offset "
                              f"{len(good) - 8:#x}: truncated")
    path.write_bytes(first + SNAPPY_STREAM_IDENTIFIER + chunk[:len(chunk) // 2])
    assert error_of(path).startswith("AVML header 0 at offset 0x0: snappy chunk at offset "
                                     "0x2a: length ")
    path.write_bytes(first + SNAPPY_STREAM_IDENTIFIER)
    assert error_of(path) == ("AVML header 0 at offset 0x0: snappy chunk at offset 0x2a: the "
                              f"file ends with {len(data):#x} bytes of the range missing")


FUZZ = settings(derandomize=True, max_examples=200, deadline=20_000, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("bases")
    memmap = random_map(random.Random(5), pages=8)
    write_lime(folder / "lime", memmap)
    write_avml(folder / "avml", memmap, max_block=9000, chunk_size=2500,
               uncompressed=lambda n: n % 3 == 0, extras=random.Random(6))
    return [(folder / "lime").read_bytes(), (folder / "avml").read_bytes()]


@FUZZ
@given(which=st.integers(0, 1), edits=st.lists(
    st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_captures(tmp_path: Path, fuzz_bases: list[bytes], which: int,
                          edits: list[tuple[int, int]]) -> None:
    with block_warnings_off():
        path = tmp_path / "mutant"
        path.write_bytes(mutated(fuzz_bases[which], edits))
        open_and_read_all(open_lime, path)


def test_every_truncation(tmp_path: Path, fuzz_bases: list[bytes]) -> None:
    for content in fuzz_bases:
        path = tmp_path / "prefix"
        for cut in sorted(set(range(0, len(content), max(1, len(content) // 300)))
                          | {1, 8, 31, 32, 33, 41, 42, 45}):
            path.write_bytes(content[:cut])
            open_and_read_all(open_lime, path)


def test_dump_arrays_are_uint64(tmp_path: Path) -> None:
    memmap = random_map(random.Random(7), pages=20)
    write_avml(tmp_path / "a", memmap)
    write_lime(tmp_path / "l", memmap)
    for name in ("a", "l"):
        dump = open_lime(tmp_path / name)
        for array in (dump.addresses, dump.offsets, dump.lengths):
            assert array.dtype == np.uint64
        assert dump.mapped_bytes == int(dump.lengths.sum())
        dump.close()
    assert os.path.getsize(tmp_path / "a") < os.path.getsize(tmp_path / "l")
