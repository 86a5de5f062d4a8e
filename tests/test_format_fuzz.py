"""Malformed inputs never escape as anything but FormatError, and never hang.

Seeded (``derandomize``) property tests: mutated and truncated ELF files of both classes
and byte orders, crafted header fields (PN_XNUM with huge counts, segments past the end
of the file, addresses past 2**64), and random map files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from artifacts.craft import PT_NOTE, Segment, build_elf, note
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmemfs import FormatError, MemoryMap
from vmemfs import open as open_source
from vmemfs.formats.elf import NT_VMEMFS_SETTINGS
from vmemfs.formats.mapfile import load_mapfile

# The deadline only catches hangs: a tiny input taking 20 s is one.
FUZZ = settings(derandomize=True, max_examples=300, deadline=20_000, database=None,
                suppress_health_check=[HealthCheck.too_slow])

INTERESTING = [0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x10000, 2**31, 2**32 - 1, 2**32, 2**63,
               2**64 - 1, 2**64 - 0x1000]


def base_elves() -> list[bytes]:
    settings_note = note(b"VMEMFS", NT_VMEMFS_SETTINGS, b"wordsize=32\nendian=big\n")
    elves = []
    for elfclass in (32, 64):
        for endian in ("little", "big"):
            segments = [
                Segment(0, settings_note, type=PT_NOTE),
                Segment(0x1000, b"first load", memsz=0x2000),
                Segment(0x1004, b"over"),
                Segment(0x8000, b"", memsz=16),
                Segment(0xFFFF0000 if elfclass == 32 else 2**64 - 8, b"top!" * 2),
            ]
            elves.append(build_elf(segments, elfclass=elfclass, endian=endian))
            elves.append(build_elf(segments[1:3], elfclass=elfclass, endian=endian,
                                   xnum=True))
    return elves


ELVES = base_elves()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    (path / "data.bin").write_bytes(bytes(range(256)) * 4)
    (path / "small.elf").write_bytes(ELVES[0])
    (path / "sub").mkdir()
    return path


def check_loaded(m: MemoryMap) -> None:
    """A map that loaded must be readable at every extent's first and last byte.

    Closes the map: thousands of them are made here.
    """
    try:
        for start, end in m.extents():
            m.get_byte(start)
            m.get_byte(end - 1)
    finally:
        m.close()


def load_or_format_error(path: Path, **options: bool) -> None:
    try:
        m = MemoryMap.load(path, **options)
    except FormatError as error:
        assert "\n" not in str(error)
        assert str(error).startswith(f"{path}: ")
        return
    check_loaded(m)


# ------------------------------------------------------------------ ELF


@FUZZ
@given(
    which=st.integers(0, len(ELVES) - 1),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 400)),
    physical=st.booleans(),
)
def test_mutated_elf(folder: Path, which: int, edits: list[tuple[int, int]],
                     cut: int | None, physical: bool) -> None:
    content = bytearray(ELVES[which])
    for position, value in edits:
        if position < len(content):
            content[position] = value
    if cut is not None:
        del content[cut:]
    path = folder / "mutated.elf"
    path.write_bytes(bytes(content))
    load_or_format_error(path, physical=physical)
    try:
        check_loaded(open_source(path, physical=physical) if content[:4] == b"\x7fELF"
                     else open_source(path))
    except FormatError:
        pass


# Header fields: (ELF32 offset, ELF64 offset, size) in the ELF header.
HEADER_FIELDS = {
    "e_phoff": (28, 32, (4, 8)),
    "e_shoff": (32, 40, (4, 8)),
    "e_phentsize": (42, 54, (2, 2)),
    "e_phnum": (44, 56, (2, 2)),
    "e_shentsize": (46, 58, (2, 2)),
}
# Program header fields: (ELF32 offset, ELF64 offset, size).
PHDR_FIELDS = {
    "p_type": (0, 0, (4, 4)),
    "p_offset": (4, 8, (4, 8)),
    "p_vaddr": (8, 16, (4, 8)),
    "p_paddr": (12, 24, (4, 8)),
    "p_filesz": (16, 32, (4, 8)),
}


def put_field(content: bytearray, at: int, size: int, value: int, order: str) -> None:
    value &= (1 << (8 * size)) - 1
    if at + size <= len(content):
        struct.pack_into(order + {2: "H", 4: "I", 8: "Q"}[size], content, at, value)


@FUZZ
@given(
    which=st.integers(0, len(ELVES) - 1),
    header=st.lists(st.tuples(st.sampled_from(sorted(HEADER_FIELDS)),
                              st.sampled_from(INTERESTING)), max_size=3),
    program=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(sorted(PHDR_FIELDS)),
                               st.one_of(st.sampled_from(INTERESTING),
                                         st.integers(0, 2**64 - 1))), max_size=4),
    sh_info=st.one_of(st.none(), st.sampled_from(INTERESTING)),
)
def test_crafted_fields(folder: Path, which: int, header: list[tuple[str, int]],
                        program: list[tuple[int, str, int]], sh_info: int | None) -> None:
    content = bytearray(ELVES[which])
    is64 = content[4] == 2
    order = "<" if content[5] == 1 else ">"
    column = 1 if is64 else 0
    phoff = struct.unpack_from(order + ("Q" if is64 else "I"), content, 32 if is64 else 28)[0]
    stride = 56 if is64 else 32
    for index, name, value in program:
        field = PHDR_FIELDS[name]
        put_field(content, phoff + index * stride + field[column], field[2][column], value,
                  order)
    for name, value in header:
        field = HEADER_FIELDS[name]
        put_field(content, field[column], field[2][column], value, order)
    if sh_info is not None:
        # PN_XNUM with this count, section header 0 where the ELF says it is (or nowhere).
        put_field(content, 56 if is64 else 44, 2, 0xFFFF, order)
        shoff = struct.unpack_from(order + ("Q" if is64 else "I"), content,
                                   40 if is64 else 32)[0]
        if shoff < len(content):
            put_field(content, shoff + (44 if is64 else 28), 4, sh_info, order)
    path = folder / "crafted.elf"
    path.write_bytes(bytes(content))
    load_or_format_error(path)
    load_or_format_error(path, physical=True)


def test_pn_xnum_huge_count_fails_fast(folder: Path) -> None:
    for which in (1, 3, 5, 7):          # the PN_XNUM variants
        content = bytearray(ELVES[which])
        is64 = content[4] == 2
        order = "<" if content[5] == 1 else ">"
        shoff = struct.unpack_from(order + ("Q" if is64 else "I"), content,
                                   40 if is64 else 32)[0]
        put_field(content, shoff + (44 if is64 else 28), 4, 0xFFFFFFFF, order)
        path = folder / "xnum.elf"
        path.write_bytes(bytes(content))
        with pytest.raises(FormatError, match="4294967295 entries"):
            MemoryMap.load(path)


# ------------------------------------------------------------------ map files


def toml_value() -> st.SearchStrategy[str]:
    """A TOML value as text: the right kinds and the wrong ones."""
    return st.one_of(
        st.integers(-(2**63), 2**63 - 1).map(str),
        st.sampled_from(INTERESTING).map(lambda n: f'"{n:#x}"'),
        st.integers(0, 2**70).map(lambda n: f'"{n}"'),
        st.sampled_from(['"data.bin"', '"small.elf"', '"sub"', '"fuzz.toml"', '"missing"',
                         '"/dev/zero"', '""', '"de ad be ef"', '"zz"', '"0x_1"', "true",
                         "false", "1.5", "[1, 2]", "{a = 1}", '"little"', '"be"', "32",
                         '"unset"', '"1__0"', "-1", '"\\u00e9"']),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
                max_size=12).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                                 + '"'),
    )


KEYS = ["file", "elf", "hex", "text", "address", "offset", "length", "physical", "base",
        "wordsize", "endian", "map", "colour"]

VALID_TABLES = [
    {"file": '"data.bin"', "address": '"0x1000"'},
    {"file": '"data.bin"', "address": "4096", "offset": "16", "length": '"0x20"'},
    {"elf": '"small.elf"'},
    {"elf": '"small.elf"', "physical": "true"},
    {"hex": '"de ad be ef"', "address": '"0xffffffffffff0000"'},
    {"text": '"hello"', "address": "0"},
]
VALID_TOP = {"wordsize": ["32", "64", '"unset"'], "endian": ['"little"', '"be"', '"unset"'],
             "base": ['"0xffffffff80000000"', "0"]}


@st.composite
def map_documents(draw: st.DrawFn) -> str:
    """Mostly valid map files, each with at most a few wrong keys or values."""
    lines = [f"{key} = {draw(st.sampled_from(VALID_TOP[key]))}"
             for key in draw(st.lists(st.sampled_from(sorted(VALID_TOP)), unique=True,
                                      max_size=3))]
    tables = [dict(draw(st.sampled_from(VALID_TABLES)))
              for _ in range(draw(st.integers(1, 4)))]
    for _ in range(draw(st.integers(0, 2))):
        spoilt = draw(st.sampled_from([*tables, None]))
        key = draw(st.sampled_from(KEYS))
        if spoilt is None:
            lines.insert(0, f"{key} = {draw(toml_value())}")
        elif draw(st.booleans()) and spoilt:
            spoilt[draw(st.sampled_from(sorted(spoilt)))] = draw(toml_value())
        else:
            spoilt[key] = draw(toml_value())
    for table in tables:
        lines.append("[[map]]")
        lines.extend(f"{key} = {value}" for key, value in table.items())
    return "\n".join(lines) + "\n"


@FUZZ
@given(document=map_documents())
def test_random_map_files(folder: Path, document: str) -> None:
    path = folder / "fuzz.toml"
    path.write_text(document, encoding="utf-8")
    try:
        m = load_mapfile(path)
    except FormatError as error:
        assert "\n" not in str(error)
        assert str(error).startswith(f"{path}: ")
    else:
        check_loaded(m)


@FUZZ
@given(text=st.text(max_size=200), prefix=st.sampled_from(["", "[[map]]\n", "[[map]]\n["]))
def test_random_text(folder: Path, text: str, prefix: str) -> None:
    path = folder / "text.toml"
    path.write_bytes((prefix + text).encode("utf-8", "surrogatepass"))
    try:
        check_loaded(open_source(path))
    except FormatError as error:
        assert "\n" not in str(error)


def test_every_prefix(folder: Path) -> None:
    for content in ELVES:
        for size in range(len(content)):
            path = folder / "prefix.elf"
            path.write_bytes(content[:size])
            load_or_format_error(path)
