"""MemoryMap: every function of the original interface, its errors, and file sources."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vmemfs
from vmemfs import HoleError, MemoryMap, NoEndianError, NoWordsizeError

TOP = 1 << 64


@pytest.fixture
def words() -> MemoryMap:
    """Little-endian 64-bit words at 0x1000: 1, -2, a pointer to 0x1000, and text."""
    m = MemoryMap()
    m.add_bytes((1).to_bytes(8, "little") + (-2).to_bytes(8, "little", signed=True)
                + (0x1000).to_bytes(8, "little") + b"hello_world9\0caf\xe9\0", 0x1000)
    return m


def test_create_and_add() -> None:
    m = MemoryMap()
    assert m.extents() == [] and m.mappings == ()
    m = MemoryMap.of_bytes(b"abc", 5)
    assert m.get_bytes(5, 3) == b"abc"
    assert [str(x) for x in m.mappings] == [
        "0x0000000000000005-0x0000000000000008 bytes <bytes> offset=0x0 length=0x3"]


def test_get_byte_and_holes(words: MemoryMap) -> None:
    assert words.get_byte(0x1000) == 1
    with pytest.raises(HoleError) as caught:
        words.get_byte(0xFFF)
    assert caught.value.address == 0xFFF
    assert isinstance(caught.value, LookupError)
    with pytest.raises(HoleError) as caught:
        words.get_bytes(0x1010, 0x100)
    assert caught.value.address == 0x1000 + len(words.read(0x1000, 0x1000))


def test_read_is_short_at_a_hole() -> None:
    m = MemoryMap.of_bytes(b"abcd", 10)
    m.add_bytes(b"XY", 14)
    m.add_bytes(b"far", 100)
    assert m.read(10, 50) == b"abcdXY"
    assert m.read(16, 5) == b""
    assert m.read(11, 2) == b"bc"
    assert m.get_bytes(12, 0) == b""


def test_unset_wordsize_and_endian_raise(words: MemoryMap) -> None:
    for call in (words.get_int32, words.get_int64):
        with pytest.raises(NoEndianError):
            call(0x1000)
    for call in (words.get_c_long, words.follow_pointer, words.succ_long, words.pred_long,
                 words.align, words.get_c_int):
        with pytest.raises(NoWordsizeError):
            call(0x1000)
    with pytest.raises(NoWordsizeError):
        words.find_all_align(b"h")
    words.wordsize = 64
    with pytest.raises(NoEndianError):
        words.follow_pointer(0x1000)
    with pytest.raises(NoEndianError):
        words.find_pointer(0x1000)


def test_integers_little_endian_64(words: MemoryMap) -> None:
    words.wordsize = 64
    words.endian = "little"
    assert words.get_int64(0x1000) == 1
    assert words.get_int64(0x1008) == -2
    assert words.get_int32(0x1008) == -2
    assert words.get_c_int(0x1008) == -2
    assert words.get_c_long(0x1008) == -2
    assert words.follow_pointer(0x1008) == TOP - 2  # unsigned
    assert words.follow_pointer(0x1010) == 0x1000
    assert words.find_pointer(0x1000) == 0x1010
    assert words.find_pointer_all(0x1000) == [0x1010]


def test_integers_big_endian_32() -> None:
    m = MemoryMap.of_bytes(bytes.fromhex("80000000 00001000 fffffffe"), 0x2000)
    m.wordsize = 32
    m.endian = "big"
    assert m.get_int32(0x2000) == -(2**31)
    assert m.get_c_long(0x2000) == -(2**31)
    assert m.follow_pointer(0x2000) == 0x8000_0000
    assert m.follow_pointer(0x2004) == 0x1000
    assert m.get_int64(0x2000) == int.from_bytes(bytes.fromhex("8000000000001000"), "big",
                                                  signed=True)
    assert m.find_pointer(0x1000) == 0x2004
    assert m.find_pointer(0xFFFFFFFE) == 0x2008
    with pytest.raises(ValueError, match="does not fit"):
        m.find_pointer(1 << 32)


def test_word_arithmetic_wraps(words: MemoryMap) -> None:
    words.wordsize = 32
    assert words.succ_long(TOP - 2) == 2
    assert words.pred_long(2) == TOP - 2
    assert words.align(0x1001) == 0x1004
    assert words.align(0x1004) == 0x1004
    words.wordsize = 64
    assert words.succ_long(0x1000) == 0x1008
    assert words.align(0x1001) == 0x1008
    with pytest.raises(ValueError):
        words.align(TOP - 1)


def test_wordsize_and_endian_can_change_and_unset(words: MemoryMap) -> None:
    words.wordsize = 32
    words.wordsize = 64
    words.wordsize = None
    assert words.wordsize is None
    words.endian = "big"
    words.endian = None
    with pytest.raises(ValueError):
        words.wordsize = 16
    with pytest.raises(ValueError):
        words.endian = "middle"  # type: ignore[assignment]


def test_strings(words: MemoryMap) -> None:
    assert words.get_string(0x1018) == b"hello_world9"
    assert words.is_string(0x1018)
    assert words.is_c_identifier(0x1018)
    assert not words.is_c_identifier(0x1018 + 11)  # "9" cannot start an identifier
    assert words.get_string(0x1018 + 13) == b"caf\xe9"
    assert not words.is_string(0x1018 + 13)  # not 7-bit
    assert not words.is_c_identifier(0x1018 + 13)
    m = MemoryMap.of_bytes(b"no terminator", 0)
    with pytest.raises(HoleError) as caught:
        m.get_string(0)
    assert caught.value.address == 13
    assert not m.is_string(0)
    assert not m.is_string(100)


def test_long_string_across_mappings() -> None:
    m = MemoryMap.of_bytes(b"a" * 5000, 0)
    m.add_bytes(b"b" * 3000 + b"\0", 5000)
    assert m.get_string(0) == b"a" * 5000 + b"b" * 3000


def test_is_mapped(words: MemoryMap) -> None:
    assert words.is_mapped(0x1000)
    assert not words.is_mapped(0xFFF)
    assert not words.is_mapped(TOP - 1)


def test_find_straddles_mappings_not_holes() -> None:
    m = MemoryMap.of_bytes(b"xxxxab", 0x100)
    m.add_bytes(b"cdxx", 0x106)  # adjacent: "abcd" straddles the boundary
    m.add_bytes(b"zzcd", 0x200)  # after a hole: "ab" + hole + "cd" is no match
    m.add_bytes(b"ab", 0x1FE)
    assert m.find(b"abcd") == 0x104
    assert m.find_all(b"abcd") == [0x104]
    assert m.find(b"abcd", 0x105) is None
    assert m.find_all(b"x") == [0x100, 0x101, 0x102, 0x103, 0x108, 0x109]
    assert m.find_all(b"x", 0x103) == [0x103, 0x108, 0x109]
    with pytest.raises(ValueError):
        m.find(b"")


def test_find_overlapping_matches_and_alignment() -> None:
    m = MemoryMap.of_bytes(b"aaaaaaaaaa", 0x10)
    assert m.find_all(b"aa") == list(range(0x10, 0x19))
    m.wordsize = 32
    assert m.find_all_align(b"aa") == [0x10, 0x14, 0x18]
    assert m.find_align(b"aa", 0x11) == 0x14


def test_find_across_chunk_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmemfs.search, "CHUNK", 16)
    data = bytes(range(256)) * 4
    m = MemoryMap.of_bytes(data, 0)
    for width in (1, 2, 5, 16, 17):
        pattern = data[100:100 + width]
        expected = [i for i in range(len(data) - width + 1) if data[i:i + width] == pattern]
        assert m.find_all(pattern) == expected


def test_file_sources(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    path.write_bytes(bytes(range(256)))
    m = MemoryMap()
    m.add_file(path, 0x1000, offset=0x10, length=0x20)
    with open(path, "rb") as handle:
        m.add_file(handle, 0x2000)
        fd = os.open(path, os.O_RDONLY)
        try:
            m.add_file(fd, 0x3000, offset=0xF0)
        finally:
            os.close(fd)
    m.add_file(io.BytesIO(b"in memory"), 0x4000)
    assert m.get_bytes(0x1000, 0x20) == bytes(range(0x10, 0x30))
    assert m.get_bytes(0x2000, 256) == bytes(range(256))
    assert m.get_bytes(0x3000, 0x10) == bytes(range(0xF0, 0x100))
    assert m.get_bytes(0x4000, 9) == b"in memory"
    assert m.extents() == [(0x1000, 0x1020), (0x2000, 0x2100), (0x3000, 0x3010),
                           (0x4000, 0x4009)]
    assert m.mappings[0].source == str(path)


def test_file_bounds_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"12345678")
    m = MemoryMap()
    with pytest.raises(ValueError, match="small"):
        m.add_file(path, 0, offset=4, length=5)
    with pytest.raises(ValueError, match="passes 2"):
        m.add_file(path, TOP - 4)
    with pytest.raises(FileNotFoundError):
        m.add_file(tmp_path / "missing", 0)
    assert m.mappings == () and m.extents() == []
    m.add_file(path, 0, offset=8)  # an empty mapping is allowed and covers nothing
    assert m.extents() == []


def test_add_file_regions(tmp_path: Path) -> None:
    path = tmp_path / "core"
    path.write_bytes(bytes(range(100)))
    m = MemoryMap()
    m.add_file_regions(path, [(0x1000, 0, 10), (0x2000, 10, 10), (0x1005, 50, 10)],
                       kind="elf")
    assert m.get_bytes(0x1000, 15) == bytes(range(5)) + bytes(range(50, 60))
    assert m.get_bytes(0x2000, 10) == bytes(range(10, 20))
    assert [x.kind for x in m.mappings] == ["elf"] * 3
    with pytest.raises(ValueError, match="region 1"):
        m.add_file_regions(path, [(0, 0, 10), (0x10, 95, 10)])
    assert len(m.mappings) == 3


def test_truncated_backing_file_reads_as_holes(tmp_path: Path) -> None:
    path = tmp_path / "shrinks"
    path.write_bytes(b"A" * 8192)
    m = MemoryMap.of_file(path, 0x10000)
    assert bytes(m.view(0x10000, 16)) == b"A" * 16
    os.truncate(path, 4096)
    assert m.read(0x10000, 8192) == b"A" * 4096
    with pytest.raises(HoleError) as caught:
        m.get_bytes(0x10000, 8192)
    assert caught.value.address == 0x11000
    with pytest.raises(HoleError):
        m.view(0x11000, 16)
    with pytest.raises(HoleError):
        m.read_zero_filled(0x10000, 8192)
    assert m.find_all(b"AAAA") == list(range(0x10000, 0x11000 - 3))
    assert m.extents() == [(0x10000, 0x12000)]  # the layout stays (SPEC 4.7)


def test_reads_leave_the_callers_file_offset_alone(tmp_path: Path) -> None:
    # A descriptor handed to add_file is duplicated: the duplicate shares the caller's
    # file offset, so the size of the file must be asked without seeking.  The same
    # reads, on the source opened from the path, may seek their own descriptor.
    path = tmp_path / "dump"
    path.write_bytes(bytes(range(256)) * 32)
    with open(path, "rb") as handle:
        handle.seek(1234)
        given = MemoryMap()
        given.add_file(handle.fileno(), 0x1000)
        given.add_file(handle, 0x10000)
        for address in (0x1000, 0x10000):
            assert bytes(given.view(address + 5, 4)) == bytes(range(5, 9))
            assert given.read(address, 8192) == path.read_bytes()
        assert os.lseek(handle.fileno(), 0, os.SEEK_CUR) == 1234
        opened = MemoryMap.of_file(path, 0)
        assert bytes(opened.view(300, 4)) == bytes(range(44, 48))
        os.truncate(path, 4096)
        for memory_map, address in ((given, 0x1000), (given, 0x10000), (opened, 0)):
            assert memory_map.read(address, 8192) == bytes(range(256)) * 16
            with pytest.raises(HoleError):
                memory_map.view(address + 4096, 1)
        assert os.lseek(handle.fileno(), 0, os.SEEK_CUR) == 1234


def test_view_of_a_shrunk_file_never_kills_the_process(tmp_path: Path) -> None:
    # A child process maps a file, the file shrinks, and the child reads through every
    # public path: it must end normally, not by SIGBUS.
    path = tmp_path / "victim"
    path.write_bytes(b"B" * 65536)
    script = f"""
import os, vmemfs
m = vmemfs.MemoryMap.of_file({str(path)!r}, 0)
first = m.view(0, 65536)
os.truncate({str(path)!r}, 100)
assert m.read(0, 65536) == b"B" * 100
assert bytes(m.view(0, 100)) == b"B" * 100
try:
    m.view(4096, 10)
except vmemfs.HoleError as error:
    print("hole", hex(error.address))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != -signal.SIGBUS
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hole 0x1000"


def test_read_zero_filled() -> None:
    m = MemoryMap.of_bytes(b"ab", 2)
    m.add_bytes(b"c", 6)
    assert bytes(m.read_zero_filled(0, 8)) == b"\0\0ab\0\0c\0"


def test_view_joins_adjacent_pieces() -> None:
    m = MemoryMap.of_bytes(b"abcd", 0)
    m.add_bytes(b"ef", 4)
    m.add_bytes(b"zz", 10)
    assert bytes(m.view(1, 100)) == b"bcdef"
    assert bytes(m.view(10, 100)) == b"zz"
    with pytest.raises(HoleError):
        m.view(6, 1)


def test_addresses_outside_the_space() -> None:
    m = MemoryMap.of_bytes(b"top", TOP - 3)
    assert m.get_bytes(TOP - 3, 3) == b"top"
    assert m.read(TOP - 1, 100) == b"p"
    for bad in (-1, TOP):
        with pytest.raises(ValueError):
            m.get_byte(bad)
    with pytest.raises(ValueError):
        m.add_bytes(b"xy", TOP - 1)
    with pytest.raises(ValueError):
        m.get_bytes(TOP - 1, 2)


def test_pieces_and_mapped_bytes() -> None:
    m = MemoryMap.of_bytes(b"aaaa", 0)
    m.add_bytes(b"b", 1)
    assert [(p.start, p.end, p.source, p.offset) for p in m.pieces(0, 10)] == [
        (0, 1, "<bytes>", 0), (1, 2, "<bytes>", 0), (2, 4, "<bytes>", 2)]
    assert m.mapped_bytes() == 4
    assert m.mapped_bytes(1, 3) == 2
