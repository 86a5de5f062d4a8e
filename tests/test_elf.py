"""The ELF reader (SPEC §3.2), on ELF files built byte by byte."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from artifacts.craft import EM_PPC, PT_LOAD, PT_NOTE, Segment, build_elf, note
from elftools import format_error

from vmemfs import FormatError, HoleError, MemoryMap
from vmemfs.formats.elf import add_elf, read_layout

CLASSES = [(32, "little"), (32, "big"), (64, "little"), (64, "big")]


def put(tmp_path: Path, content: bytes, name: str = "test.elf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def error_of(path: Path, **options: bool) -> str:
    return format_error(MemoryMap.load, path, **options)


@pytest.mark.parametrize(("elfclass", "endian"), CLASSES)
def test_loads_of_every_class_and_order(tmp_path: Path, elfclass: int, endian: str) -> None:
    path = put(tmp_path, build_elf([
        Segment(0x1000, b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        Segment(0x3000, b"", memsz=0x100),                  # no file bytes: not mapped
        Segment(0x2000, b"note!", type=PT_NOTE),            # not a load
        Segment(0x8000, b"abcd", memsz=0x1000),             # tail is a hole
    ], elfclass=elfclass, endian=endian, machine=EM_PPC))
    m = MemoryMap.load(path)
    assert (m.wordsize, m.endian, m.machine) == (elfclass, endian, EM_PPC)
    assert m.extents() == [(0x1000, 0x1008), (0x8000, 0x8004)]
    assert m.get_bytes(0x8000, 4) == b"abcd"
    with pytest.raises(HoleError) as info:
        m.get_bytes(0x8002, 4)
    assert info.value.address == 0x8004
    assert not m.is_mapped(0x3000)
    assert not m.is_mapped(0x2000)
    value = int.from_bytes(bytes(range(1, 9))[: elfclass // 8], endian, signed=True)
    assert m.get_c_long(0x1000) == value
    assert [mp.kind for mp in m.mappings] == ["elf", "elf"]


def test_overlapping_loads_later_wins(tmp_path: Path) -> None:
    #   header 0:  AAAAAAAAAAAAAAAA        0x100 .. 0x110
    #   header 1:      BBBB                inside
    #   header 2:  CC                      same start
    #   header 3:                DDDDDD    tail and past it
    #   header 4:  (filesz 0 over it all: changes nothing)
    path = put(tmp_path, build_elf([
        Segment(0x100, b"A" * 16),
        Segment(0x104, b"B" * 4),
        Segment(0x100, b"C" * 2),
        Segment(0x10E, b"D" * 6),
        Segment(0x100, b"", memsz=0x100),
    ]))
    m = MemoryMap.load(path)
    assert m.get_bytes(0x100, 20) == b"CCAABBBBAAAAAADDDDDD"
    assert m.extents() == [(0x100, 0x114)]
    assert len(m.mappings) == 4


def test_physical_uses_paddr(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([
        Segment(0xFFFFFFFF81000000, b"kernel", paddr=0x1000000),
        Segment(0xFFFF888000000000, b"direct", paddr=0x2000),
    ]))
    virtual = MemoryMap.load(path)
    assert virtual.get_bytes(0xFFFFFFFF81000000, 6) == b"kernel"
    physical = MemoryMap.load(path, physical=True)
    assert physical.extents() == [(0x2000, 0x2006), (0x1000000, 0x1000006)]
    assert physical.get_bytes(0x1000000, 6) == b"kernel"


def test_load_at_the_top_of_the_address_space(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(2**64 - 4, b"last")]))
    m = MemoryMap.load(path)
    assert m.extents() == [(2**64 - 4, 2**64)]
    assert m.get_bytes(2**64 - 4, 4) == b"last"


def test_load_past_the_top_of_the_address_space(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0, b"ok"), Segment(2**64 - 4, b"12345")]))
    assert error_of(path) == (
        "program header 1: p_vaddr+p_filesz 0x10000000000000001 passes the end of the "
        "address space (2**64)")


def test_no_loads_is_an_empty_map(tmp_path: Path) -> None:
    m = MemoryMap.load(put(tmp_path, build_elf([Segment(0, b"n", type=PT_NOTE)])))
    assert m.extents() == []
    assert m.wordsize == 64
    m = MemoryMap.load(put(tmp_path, build_elf([], etype=1)))
    assert m.extents() == []


@pytest.mark.parametrize(("elfclass", "endian"), CLASSES)
def test_pn_xnum(tmp_path: Path, elfclass: int, endian: str) -> None:
    count = 70_000
    segments = [Segment(0x10000 + 16 * i, i.to_bytes(4, "little")) for i in range(count)]
    path = put(tmp_path, build_elf(segments, elfclass=elfclass, endian=endian, xnum=True))
    layout = read_layout(path)
    assert len(layout.addresses) == count
    m = MemoryMap.load(path)
    assert len(m.extents()) == count
    assert m.get_bytes(0x10000 + 16 * 69_999, 4) == (69_999).to_bytes(4, "little")


def test_pn_xnum_huge_count_is_refused_quickly(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0, b"x")], xnum=True, phnum=0xFFFFFFFF))
    assert error_of(path).startswith(
        "program header table (4294967295 entries of 56 bytes at 0x40) passes the end of "
        "the file")


def test_pn_xnum_without_section_header(tmp_path: Path) -> None:
    content = bytearray(build_elf([Segment(0, b"x")]))
    struct.pack_into("<H", content, 56, 0xFFFF)          # e_phnum, e_shoff stays 0
    assert "PN_XNUM (0xffff) but there is no section header 0" in error_of(
        put(tmp_path, bytes(content)))


def test_pn_xnum_section_header_past_end(tmp_path: Path) -> None:
    content = bytearray(build_elf([Segment(0, b"x")]))
    struct.pack_into("<H", content, 56, 0xFFFF)
    struct.pack_into("<Q", content, 40, 1 << 40)         # e_shoff
    assert "section header 0 at 0x10000000000 passes the end" in error_of(
        put(tmp_path, bytes(content)))


def test_wide_program_header_stride(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0x10, b"one"), Segment(0x20, b"two")],
                                   elfclass=32, endian="big", phentsize=48))
    m = MemoryMap.load(path)
    assert m.get_bytes(0x20, 3) == b"two"


def test_narrow_program_header_stride(tmp_path: Path) -> None:
    content = bytearray(build_elf([Segment(0x10, b"one")]))
    struct.pack_into("<H", content, 54, 40)              # e_phentsize
    assert "e_phentsize 40 is smaller than a program header (56 bytes)" in error_of(
        put(tmp_path, bytes(content)))


def test_segment_past_end_of_file(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([
        Segment(0, b"fine"), Segment(8, b"x", type=PT_NOTE), Segment(0x10, b"more"),
        Segment(0x20, offset=0x100, filesz=0x1000),
    ]))
    size = path.stat().st_size
    assert error_of(path) == (
        f"program header 3: p_offset+p_filesz 0x1100 passes the end of the file "
        f"({size:#x})")


def test_segment_offset_overflow(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0, offset=2**64 - 1, filesz=2**64 - 1)]))
    assert "program header 0: p_offset+p_filesz" in error_of(path)


def test_segment_past_end_ignored_when_not_a_load(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0, b"ok"),
                                    Segment(0, type=6, offset=1 << 40, filesz=1 << 40)]))
    assert MemoryMap.load(path).get_bytes(0, 2) == b"ok"


@pytest.mark.parametrize(("cut", "expected"), [
    (0, "not an ELF file"),
    (3, "not an ELF file"),
    (4, "truncated ELF header (4 bytes)"),
    (20, "truncated ELF header (20 bytes, ELF64 needs 64)"),
    (63, "truncated ELF header (63 bytes, ELF64 needs 64)"),
    (64, "program header table (2 entries of 56 bytes at 0x40) passes the end of the file"),
    (64 + 56 + 55, "program header table"),
    (64 + 112 + 3, "program header 1: p_offset+p_filesz 0xb5 passes the end of the file (0xb3)"),
])
def test_truncated(tmp_path: Path, cut: int, expected: str) -> None:
    content = build_elf([Segment(0, b"abc"), Segment(4, b"de")])
    assert error_of(put(tmp_path, content[:cut])).startswith(expected)


@pytest.mark.parametrize(("position", "value", "expected"), [
    (4, 3, "unknown ELF class 3 (EI_CLASS must be 1 or 2)"),
    (4, 0, "unknown ELF class 0 (EI_CLASS must be 1 or 2)"),
    (5, 0, "unknown ELF data encoding 0 (EI_DATA must be 1 or 2)"),
    (5, 7, "unknown ELF data encoding 7 (EI_DATA must be 1 or 2)"),
])
def test_corrupt_ident(tmp_path: Path, position: int, value: int, expected: str) -> None:
    content = bytearray(build_elf([Segment(0, b"abc")]))
    content[position] = value
    assert error_of(put(tmp_path, bytes(content))) == expected


def test_nothing_added_on_error(tmp_path: Path) -> None:
    good = put(tmp_path, build_elf([Segment(0x1000, b"good")]), "good.elf")
    bad = put(tmp_path, build_elf([Segment(0x1000, b"evil"),
                                   Segment(0x2000, offset=0x10, filesz=0x10000)]), "bad.elf")
    m = MemoryMap()
    m.add_elf(good)
    before = (m.mappings, m.extents(), m.wordsize, m.endian)
    with pytest.raises(FormatError, match=r"bad\.elf: program header 1"):
        m.add_elf(bad)
    assert (m.mappings, m.extents(), m.wordsize, m.endian) == before
    assert m.get_bytes(0x1000, 4) == b"good"


@pytest.mark.parametrize(("setting", "value", "expected"), [
    ("wordsize", 32, "ELF64 file, but the map's wordsize is already 32"),
    ("endian", "big", "little-endian ELF file, but the map's endian is already big"),
])
def test_conflicting_settings(tmp_path: Path, setting: str, value: object,
                              expected: str) -> None:
    path = put(tmp_path, build_elf([Segment(0x1000, b"data")]))
    m = MemoryMap.of_bytes(b"x", 0)
    setattr(m, setting, value)
    with pytest.raises(FormatError) as info:
        add_elf(m, path)
    assert str(info.value) == f"{path}: {expected}"
    assert m.extents() == [(0, 1)]
    assert getattr(m, setting) == value


def test_agreeing_settings_and_machine_kept(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0x1000, b"data")], machine=EM_PPC))
    m = MemoryMap.of_bytes(b"x", 0)
    m.wordsize, m.endian, m.machine = 64, "little", 3
    add_elf(m, path)
    assert (m.wordsize, m.endian, m.machine) == (64, "little", 3)
    assert m.get_bytes(0x1000, 4) == b"data"


def test_load_and_add_elf_methods(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0x1000, b"data")]))
    assert MemoryMap.load(path).get_bytes(0x1000, 4) == b"data"
    m = MemoryMap.of_bytes(b"0123456789", 0xFFE)
    m.add_elf(path)
    assert m.get_bytes(0xFFE, 8) == b"01data67"


def vmemfs_note(desc: bytes, order: str = "<") -> bytes:
    return note(b"VMEMFS", 0x766D6673, desc, order)


@pytest.mark.parametrize(("desc", "settings"), [
    (b"wordsize=unset\nendian=unset\n", (None, None)),
    (b"wordsize=32\nendian=big\n", (32, "big")),
    (b"endian=unset\n", (None, None)),
    (b"future=thing\nwordsize=64\n", (64, None)),
])
def test_vmemfs_note(tmp_path: Path, desc: bytes, settings: tuple[object, object]) -> None:
    notes = note(b"CORE", 1, b"\0" * 20) + vmemfs_note(desc)
    path = put(tmp_path, build_elf([Segment(0, notes, type=PT_NOTE), Segment(0, b"x")]))
    m = MemoryMap.load(path)
    assert (m.wordsize, m.endian) == settings
    m = MemoryMap()
    m.wordsize, m.endian = 64, "little"
    if settings == (None, None):
        add_elf(m, path)        # "unset" in the note changes nothing and conflicts with nothing
        assert (m.wordsize, m.endian) == (64, "little")
    elif settings == (32, "big"):
        with pytest.raises(FormatError, match="saved with wordsize 32, but the map's wordsize"):
            add_elf(m, path)


def test_vmemfs_note_with_a_bad_value(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0, vmemfs_note(b"wordsize=16\n"), type=PT_NOTE)]))
    assert error_of(path) == "VMEMFS note: bad wordsize '16'"


def test_vmemfs_note_only_in_first_note_segment(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([
        Segment(0, note(b"CORE", 1, b"regs"), type=PT_NOTE),
        Segment(0, vmemfs_note(b"wordsize=unset\n"), type=PT_NOTE),
    ]))
    assert MemoryMap.load(path).wordsize == 64


def test_broken_note_is_ignored(tmp_path: Path) -> None:
    broken = struct.pack("<III", 7, 0xFFFFFF, 0x766D6673) + b"VMEMFS\0\0"
    path = put(tmp_path, build_elf([Segment(0, broken, type=PT_NOTE), Segment(0, b"x")],
                                   elfclass=32))
    assert MemoryMap.load(path).wordsize == 32


def test_region_types_beyond_load_ignored(tmp_path: Path) -> None:
    path = put(tmp_path, build_elf([Segment(0x10, b"interp", type=3),
                                    Segment(0x20, b"load", type=PT_LOAD)]))
    assert MemoryMap.load(path).extents() == [(0x20, 0x24)]
