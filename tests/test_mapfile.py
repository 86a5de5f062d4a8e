"""Map files (SPEC §3.3) and detection of a source by content (SPEC §5.1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from artifacts.craft import Segment, build_elf
from elftools import format_error

from vmemfs import FormatError
from vmemfs import open as open_source
from vmemfs.formats.mapfile import load_mapfile, parse_address, parse_int
from vmemfs.opening import detect as detect_format


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)))
    return path


@pytest.fixture
def elf_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.elf"
    path.write_bytes(build_elf([Segment(0x4000, b"ELFDATA!")], elfclass=32, endian="big"))
    return path


def mapfile_error(path: Path) -> str:
    return format_error(load_mapfile, path)


# ------------------------------------------------------------------ integers


@pytest.mark.parametrize(("text", "value"), [
    (0, 0),
    (4096, 4096),
    ("4096", 4096),
    ("4_096", 4096),
    ("0x1000", 0x1000),
    ("0XfFfF_ffff_8100_0000", 0xFFFFFFFF81000000),
    ("0o17", 15),
    ("0b101", 5),
    (" 0x10 ", 16),
    ("0010", 10),
])
def test_parse_int_accepts(text: object, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", [
    -1, True, False, 1.0, "", "zz", "0x", "1__0", "_1", "1_", "-5", "0x-1", "1e3", None,
    [1], "0b2", "0o8",
])
def test_parse_int_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"is not a|is negative"):
        parse_int(text)


def test_parse_address_top_of_space() -> None:
    assert parse_address("0xffffffffffffffff") == 2**64 - 1
    with pytest.raises(ValueError, match=r"is not below 2\*\*64"):
        parse_address("0x10000000000000000")
    with pytest.raises(ValueError, match=r"^'zz' is not a decimal"):
        parse_address("zz")


# ------------------------------------------------------------------ building


def test_every_kind_in_order(tmp_path: Path, data_file: Path, elf_file: Path) -> None:
    mapfile = write(tmp_path / "demo.toml", f"""
# a comment
[[map]]
file = "{data_file.name}"
address = "0xffffffff81000000"

[[map]]
elf = "{elf_file.name}"

[[map]]
hex = '''
de ad
be ef'''
address = "0xffffffff81000002"

[[map]]
text = "hé"
address = 0x4002

[[map]]
file = "{data_file}"
address = 0x10
offset = "0x10"
length = 4
""")
    m = load_mapfile(mapfile)
    assert [mp.kind for mp in m.mappings] == ["file", "elf", "bytes", "bytes", "file"]
    assert m.get_bytes(0xFFFFFFFF81000000, 8) == bytes([0, 1, 0xDE, 0xAD, 0xBE, 0xEF, 6, 7])
    assert m.get_bytes(0x4000, 8) == b"EL" + "hé".encode() + b"TA!"
    assert m.get_bytes(0x10, 4) == bytes([16, 17, 18, 19])
    assert not m.is_mapped(0x14)
    # The ELF set these; the map file said nothing about them.
    assert (m.wordsize, m.endian) == (32, "big")
    assert m.preferred_base is None


def test_top_level_settings_win_over_elf(tmp_path: Path, elf_file: Path) -> None:
    mapfile = write(tmp_path / "m.toml", f"""
wordsize = "64"
endian = "LE"
base = "0xffff_0000"
[[map]]
elf = "{elf_file.name}"
""")
    m = load_mapfile(mapfile)
    assert (m.wordsize, m.endian, m.preferred_base) == (64, "little", 0xFFFF0000)


def test_unset_clears_what_an_elf_set(tmp_path: Path, elf_file: Path) -> None:
    mapfile = write(tmp_path / "m.toml", f"""
wordsize = "unset"
endian = "unset"
[[map]]
elf = "{elf_file.name}"
""")
    m = load_mapfile(mapfile)
    assert (m.wordsize, m.endian) == (None, None)


def test_physical_in_map_file(tmp_path: Path) -> None:
    elf_path = tmp_path / "p.elf"
    elf_path.write_bytes(build_elf([Segment(0xC0001000, b"phys", paddr=0x1000)]))
    mapfile = write(tmp_path / "m.toml", '[[map]]\nelf = "p.elf"\nphysical = true\n')
    m = load_mapfile(mapfile)
    assert m.get_bytes(0x1000, 4) == b"phys"
    assert not m.is_mapped(0xC0001000)


def test_empty_inline_bytes_cover_nothing(tmp_path: Path) -> None:
    m = load_mapfile(write(tmp_path / "m.toml", '[[map]]\nhex = ""\naddress = 5\n'))
    assert m.extents() == []


def test_inline_array_of_tables_is_a_map_file(tmp_path: Path) -> None:
    path = write(tmp_path / "inline", 'map = [{text = "hi", address = 7}]\n')
    assert detect_format(path)[0].name == "map"
    assert open_source(path).get_bytes(7, 2) == b"hi"


def test_byte_order_mark_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.toml", '\ufeff[[map]]\ntext = "x"\naddress = 1\n')
    assert open_source(path).get_bytes(1, 1) == b"x"


# ------------------------------------------------------------------ errors


def test_bad_address_message(tmp_path: Path, data_file: Path) -> None:
    path = write(tmp_path / "demo.toml", f"""
[[map]]
text = "a"
address = 0
[[map]]
text = "b"
address = 1
[[map]]
file = "{data_file}"
address = "zz"
""")
    assert mapfile_error(path) == ("map[2].address: 'zz' is not a decimal, 0x, 0o or 0b "
                                  "number (K/M/G/T suffixes allowed)")


@pytest.mark.parametrize(("body", "expected"), [
    ('[[map]]\ntext = "a"\nadress = 1\n', "map[0].adress: unknown key"),
    ('[[map]]\ntext = "a"\naddress = 1\nphysical = true\n',
     "map[0].physical: not allowed with text (only with elf)"),
    ('[[map]]\naddress = 1\n', "map[0]: needs one of the keys file, elf, hex, text"),
    ('[[map]]\ntext = "a"\nhex = "00"\naddress = 1\n', "map[0]: has both hex and text"),
    ('[[map]]\ntext = "a"\n', "map[0].address: missing"),
    ('[[map]]\nhex = "abc"\naddress = 1\n', "map[0].hex: 'abc' is not hexadecimal bytes"),
    ('[[map]]\nhex = "zz"\naddress = 1\n', "map[0].hex: 'zz' is not hexadecimal bytes"),
    ('[[map]]\nhex = 12\naddress = 1\n', "map[0].hex: 12 is not a string of hex digits"),
    ('[[map]]\ntext = 1\naddress = 1\n', "map[0].text: not a string"),
    ('[[map]]\ntext = "a"\naddress = -1\n', "map[0].address: -1 is negative"),
    ('[[map]]\ntext = "a"\naddress = 1.5\n', "map[0].address: 1.5 is not a number"),
    ('[[map]]\ntext = "ab"\naddress = "0xffffffffffffffff"\n', "map[0].text: "),
    ('[[map]]\nfile = "nope.bin"\naddress = 0\n', "No such file or directory"),
    ('[[map]]\nelf = "nope.elf"\n', "map[0].elf: "),
    ('[[map]]\nfile = ""\naddress = 0\n', "map[0].file: not a path: ''"),
    ('[[map]]\nfile = 5\naddress = 0\n', "map[0].file: not a path: 5"),
    ('wordsize = 16\n[[map]]\ntext = "a"\naddress = 1\n', "wordsize: 16 is not 32, 64 or unset"),
    ('wordsize = true\n[[map]]\ntext = "a"\naddress = 1\n',
     "wordsize: True is not 32, 64 or unset"),
    ('endian = "middle"\n[[map]]\ntext = "a"\naddress = 1\n',
     "endian: 'middle' is not little, big, le, be or unset"),
    ('base = "x"\n[[map]]\ntext = "a"\naddress = 1\n', "base: 'x' is not a decimal"),
    ('colour = 1\n[[map]]\ntext = "a"\naddress = 1\n', "colour: unknown key"),
    ('[[map]]\nelf = "small.elf"\nphysical = "yes"\n', "map[0].physical: not true or false"),
    ('[[map]]\nelf = "small.elf"\naddress = 0\n',
     "map[0].address: not allowed with elf (only with file, hex, text)"),
])
def test_errors_name_table_and_key(tmp_path: Path, elf_file: Path, body: str,
                                   expected: str) -> None:
    message = mapfile_error(write(tmp_path / "bad.toml", body))
    assert expected in message


def test_file_past_its_end(tmp_path: Path, data_file: Path) -> None:
    path = write(tmp_path / "m.toml",
                 f'[[map]]\nfile = "{data_file.name}"\naddress = 0\noffset = 250\nlength = 7\n')
    message = mapfile_error(path)
    assert message.startswith("map[0].file: ")
    assert "passes the end" in message


def test_table_naming_a_directory(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    path = write(tmp_path / "m.toml", '[[map]]\nfile = "folder"\naddress = 0\n')
    assert mapfile_error(path).endswith("folder: is a directory")
    path = write(tmp_path / "m.toml", '[[map]]\nelf = "."\n')
    assert mapfile_error(path).endswith(": is a directory")


def test_table_naming_the_map_file_itself(tmp_path: Path) -> None:
    path = write(tmp_path / "self.toml", '[[map]]\nfile = "self.toml"\naddress = 0\n')
    assert mapfile_error(path).endswith("self.toml: names the map file itself")
    path = write(tmp_path / "self.toml", '[[map]]\nelf = "self.toml"\n')
    assert mapfile_error(path).endswith("names the map file itself")


def test_table_naming_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    path = write(tmp_path / "m.toml", '[[map]]\nfile = "pipe"\naddress = 0\n')
    assert "not a regular file" in mapfile_error(path)


def test_broken_elf_in_map_file(tmp_path: Path) -> None:
    (tmp_path / "cut.elf").write_bytes(build_elf([Segment(0, b"x" * 64)])[:80])
    path = write(tmp_path / "m.toml", '[[map]]\nelf = "cut.elf"\n')
    message = mapfile_error(path)
    assert message.startswith("map[0].elf: ")
    assert "cut.elf: program header table" in message


def test_conflicting_elves_in_map_file(tmp_path: Path) -> None:
    (tmp_path / "a.elf").write_bytes(build_elf([Segment(0, b"a")], elfclass=32))
    (tmp_path / "b.elf").write_bytes(build_elf([Segment(8, b"b")], elfclass=64))
    path = write(tmp_path / "m.toml", '[[map]]\nelf = "a.elf"\n[[map]]\nelf = "b.elf"\n')
    message = mapfile_error(path)
    assert message.startswith("map[1].elf: ")
    assert "wordsize is already 32" in message


def test_invalid_toml_with_map_header(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.toml", '[[map]]\nfile = "x\naddress = 0\n')
    with pytest.raises(FormatError, match=r"typo.toml: not valid TOML: .*line"):
        detect_format(path)
    with pytest.raises(FormatError, match="not valid TOML"):
        open_source(path)


def test_map_not_tables_with_header(tmp_path: Path) -> None:
    # Valid TOML, but its map is no array of tables and it has no [[map]] header...
    path = write(tmp_path / "weird.toml", 'map = [1, 2]\n')
    assert detect_format(path)[0].name == "raw"
    # ...and load_mapfile on it says what it is not.
    with pytest.raises(FormatError, match="not a map file"):
        load_mapfile(path)


# ------------------------------------------------------------------ detection


@pytest.mark.parametrize(("content", "kind"), [
    (b"\x7fELF", "elf"),
    (b"", "raw"),
    (b"\x00\x01\x02[[map]]\n", "raw"),
    (b"hello world\n", "raw"),
    (b"title = 'not a map'\n[server]\nport = 80\n", "raw"),
    (b"[[maps]]\nfile='x'\n", "raw"),
    ('[[map]]\ntext = "é"\naddress = 1\n'.encode(), "map"),
    ('[[map]]\ntext = "é"\naddress = 1\n'.encode("latin-1"), "raw"),
])
def test_detect(tmp_path: Path, content: bytes, kind: str) -> None:
    path = tmp_path / "source"
    path.write_bytes(content)
    assert detect_format(path)[0].name == kind


def test_big_text_file_is_raw(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    with open(path, "w") as stream:
        stream.write('[[map]]\ntext = "a"\naddress = 0\n')
        stream.write("# padding\n" * ((17 << 20) // 10))
    assert detect_format(path)[0].name == "raw"


def test_open_raw_with_options(data_file: Path) -> None:
    m = open_source(data_file, address=0x1000, offset=16, length=8)
    assert m.get_bytes(0x1000, 8) == bytes(range(16, 24))
    assert m.extents() == [(0x1000, 0x1008)]
    assert m.preferred_base is None
    m = open_source(data_file)
    assert m.extents() == [(0, 256)]


def test_open_raw_past_end(data_file: Path) -> None:
    with pytest.raises(ValueError, match="passes the end"):
        open_source(data_file, offset=200, length=100)


@pytest.mark.parametrize("option", ["address", "offset", "length"])
def test_raw_options_refused_for_elf_and_map(tmp_path: Path, elf_file: Path,
                                             option: str) -> None:
    with pytest.raises(FormatError, match=f"option {option}= applies to raw files, not to an"):
        open_source(elf_file, **{option: 0})
    path = write(tmp_path / "m.toml", '[[map]]\ntext = "a"\naddress = 1\n')
    with pytest.raises(FormatError, match=f"option {option}= .* not to a map file"):
        open_source(path, **{option: 0})


def test_physical_refused_for_raw_and_map(tmp_path: Path, data_file: Path) -> None:
    with pytest.raises(FormatError, match="option physical applies to ELF files"):
        open_source(data_file, physical=True)
    path = write(tmp_path / "m.toml", '[[map]]\ntext = "a"\naddress = 1\n')
    with pytest.raises(FormatError, match="not to a map file"):
        open_source(path, physical=True)


def test_open_elf_and_map(tmp_path: Path, elf_file: Path) -> None:
    m = open_source(elf_file)
    assert m.get_bytes(0x4000, 8) == b"ELFDATA!"
    assert m.preferred_base is None
    path = write(tmp_path / "m.toml", 'base = 4096\n[[map]]\ntext = "a"\naddress = 1\n')
    assert open_source(path).preferred_base == 4096


def test_open_directory_and_fifo(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        open_source(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FormatError, match="not a regular file"):
        open_source(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing")


def test_failed_map_file_closes_what_it_opened(tmp_path: Path, data_file: Path) -> None:
    path = write(tmp_path / "m.toml", f'[[map]]\nfile = "{data_file.name}"\naddress = 0\n'
                                      '[[map]]\ntext = "a"\naddress = "zz"\n')
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(FormatError, match=r"map\[1\]\.address"):
            load_mapfile(path)
    assert len(os.listdir("/proc/self/fd")) == before
