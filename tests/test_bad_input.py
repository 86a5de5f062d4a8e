"""Bad input: edge values and seeded fuzzing of every way in (docs/reliability.md).

* ELF files: fields past the file or past 2**64, a million program headers (PN_XNUM);
* map files: addresses past 2**64, negative numbers, a map file naming itself or a
  directory, FIFOs and devices, TOML that defeats the TOML reader;
* any file as a source (detection by content);
* the ``mount.vmemfs`` option parser, in-process for volume and the real helper for a
  sample: only ``mount.vmemfs: error: ...`` on one line, exit 1 (32 for the mount point);
* random writes to every ``.ctl/`` file of a live mount: ``EINVAL`` or success, the
  mount unchanged after a refusal, and still serving.

``tests/test_format_fuzz.py`` mutates ELF headers and map-file tables; this file covers
what it does not.  Hypothesis runs derandomized (fixed seeds) with bounded counts; the
number of inputs tried is counted in :data:`TRIED` and printed at the end (``-s``).
"""

from __future__ import annotations

import errno
import os
import random
import stat
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from artifacts.craft import Segment, build_elf
from conftest import Mounts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mounting import HELPER, Mount

from vmemfs import FormatError, MemoryMap, ctl
from vmemfs import open as open_source
from vmemfs.formats.elf import phdr_dtype
from vmemfs.formats.mapfile import load_mapfile
from vmemfs.mount import UsageError, fuse_options, parse_command_line

TRIED: Counter[str] = Counter()
"""Inputs tried, per kind (printed by :func:`report_counts`)."""



def seeded(examples: int) -> settings:
    """Fixed seeds, ``examples`` inputs, and a deadline that only catches hangs."""
    return settings(derandomize=True, database=None, deadline=20_000,
                    max_examples=examples, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    """Print how many inputs each fuzzed way in was given (seen with ``-s``)."""
    yield
    print("\ninputs tried:", dict(sorted(TRIED.items())))


def assert_one_line(error: BaseException, name: str | None = None) -> None:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    if name is not None:
        assert name in text, text


# ==================================================================== ELF edge values


def elf_with(tmp_path: Path, segments: list[Segment], name: str = "edge.elf",
             **options: Any) -> Path:
    path = tmp_path / name
    path.write_bytes(build_elf(segments, **options))
    return path


@pytest.mark.parametrize(("segment", "message"), [
    (Segment(0x1000, b"abcd", filesz=5), "program header 1: p_offset+p_filesz 0xb9"),
    (Segment(0x1000, filesz=1 << 40, offset=0), "passes the end of the file"),
    (Segment(0x1000, filesz=2, offset=2**64 - 1), "passes the end of the file"),
    (Segment(0x1000, filesz=2**64 - 1, offset=0), "passes the end of the file"),
    (Segment(2**64 - 2, b"abcd"), "passes the end of the address space (2**64)"),
    (Segment(2**64 - 1, b"ab"), "p_vaddr+p_filesz 0x10000000000000001"),
])
def test_elf_fields_past_the_file_or_the_address_space(
        tmp_path: Path, segment: Segment, message: str) -> None:
    path = elf_with(tmp_path, [Segment(0x100, b"fine"), segment])
    with pytest.raises(FormatError, match="^" + str(path) + ": ") as caught:
        MemoryMap.load(path)
    assert message in str(caught.value)
    assert_one_line(caught.value)


def test_elf_up_to_the_top_of_the_address_space(tmp_path: Path) -> None:
    path = elf_with(tmp_path, [Segment(2**64 - 4, b"top!")])
    m = MemoryMap.load(path)
    try:
        assert m.extents() == [(2**64 - 4, 2**64)]
        assert m.get_bytes(2**64 - 4, 4) == b"top!"
    finally:
        m.close()


def test_elf_physical_address_past_2_64(tmp_path: Path) -> None:
    path = elf_with(tmp_path, [Segment(0x1000, b"abcd", paddr=2**64 - 2)])
    MemoryMap.load(path).close()
    with pytest.raises(FormatError, match="p_paddr\\+p_filesz"):
        MemoryMap.load(path, physical=True)


def million_headers(path: Path, *, loads: bool, count: int = 1_000_000,
                    claimed: int | None = None) -> None:
    """An ELF64 with ``count`` program headers through PN_XNUM: ascending 8-byte loads
    (``loads``), or all ``PT_NULL`` but the first; section header 0 claims ``claimed``."""
    ehsize, phsize, shsize = 64, 56, 64
    table_at, section_at = ehsize, ehsize + count * phsize
    data_at = section_at + shsize
    table = np.zeros(count, dtype=phdr_dtype(2, "little"))
    table["p_type"] = 1 if loads else 0
    table["p_type"][0] = 1
    table["p_offset"] = data_at + (np.arange(count, dtype=np.uint64) % np.uint64(4096))
    table["p_vaddr"] = table["p_paddr"] = np.arange(count, dtype=np.uint64) * np.uint64(16)
    table["p_filesz"] = table["p_memsz"] = 8
    ident = b"\x7fELF\x02\x01\x01".ljust(16, b"\0")
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, table_at, section_at, 0,
                         ehsize, phsize, 0xFFFF, shsize, 1, 0)
    section = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0,
                          count if claimed is None else claimed, 0, 0)
    with open(path, "wb") as out:
        for part in (header, table.tobytes(), section, bytes(range(256)) * 17):
            out.write(part)


def test_a_million_headers_mostly_not_loads(tmp_path: Path) -> None:
    path = tmp_path / "nulls.elf"
    million_headers(path, loads=False)
    TRIED["elf: 1,000,000 program headers"] += 1
    m = MemoryMap.load(path)
    try:
        assert m.extents() == [(0, 8)]
    finally:
        m.close()


def test_more_headers_claimed_than_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "claims.elf"
    million_headers(path, loads=True, count=1000, claimed=1_000_000)
    with pytest.raises(FormatError, match="1000000 entries of 56 bytes"):
        MemoryMap.load(path)


LOAD_A_MILLION = textwrap.dedent("""
    import json, resource, sys, time
    from vmemfs import MemoryMap
    started = time.perf_counter()
    m = MemoryMap.load(sys.argv[1])
    seconds = time.perf_counter() - started
    print(json.dumps({"extents": len(m.extents()), "seconds": round(seconds, 1),
                      "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
                      "first": m.get_bytes(0, 8).hex(),
                      "last": m.get_bytes(16 * 999_999, 8).hex()}))
""")


@pytest.mark.slow
def test_a_million_loads_load_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """1,000,000 ``PT_LOAD`` headers (a 56 MB table) load, in a process of their own
    that must finish within two minutes and stay under 1.5 GiB."""
    import json

    path = tmp_path / "million.elf"
    million_headers(path, loads=True)
    TRIED["elf: 1,000,000 program headers"] += 1
    result = subprocess.run([sys.executable, "-c", LOAD_A_MILLION, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print("\nmillion loads:", report)
    assert report["extents"] == 1_000_000
    assert report["first"] == bytes(range(8)).hex()
    assert report["max_rss_mib"] < 1536


# ==================================================================== map-file edge values


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "data.bin").write_bytes(bytes(range(256)))
    (tmp_path / "sub").mkdir()
    return tmp_path


def map_error(folder: Path, body: str, name: str = "edge.toml") -> str:
    path = folder / name
    path.write_text(body)
    with pytest.raises(FormatError) as caught:
        load_mapfile(path)
    assert_one_line(caught.value)
    assert str(caught.value).startswith(f"{path}: ")
    return str(caught.value)


@pytest.mark.parametrize(("table", "message"), [
    ('file = "data.bin"\naddress = "0x10000000000000000"', "map[0].address: "),
    ('file = "data.bin"\naddress = "18446744073709551616"', "is not below 2**64"),
    ('hex = "0011"\naddress = "0xffffffffffffffff"', "map[0].hex"),
    ('file = "data.bin"\naddress = "0xfffffffffffffff0"', "map[0].file"),
    ('file = "data.bin"\naddress = -1', "map[0].address: "),
    ('file = "data.bin"\naddress = "-0x10"', "map[0].address: "),
    ('file = "data.bin"\naddress = 0\noffset = -5', "map[0].offset"),
    ('file = "data.bin"\naddress = 0\nlength = -1', "map[0].length"),
    ('file = "data.bin"\naddress = 0\noffset = 300', "map[0].file"),
    ('file = "data.bin"\naddress = 0\nlength = "0x1_0000_0000_0000_0000"', "map[0].file"),
    ('file = "data.bin"\naddress = 18446744073709551615', "passes 2**64"),
    ('file = "data.bin"\naddress = 18446744073709551616', "is not below 2**64"),
    ('file = "data.bin"\naddress = 1.5', "map[0].address"),
    ('file = "data.bin"\naddress = "1' + "0" * 300 + '"', "map[0].address"),
])
def test_map_file_values(folder: Path, table: str, message: str) -> None:
    assert message in map_error(folder, f"[[map]]\n{table}\n")


def test_map_file_top_of_the_address_space(folder: Path) -> None:
    path = folder / "top.toml"
    path.write_text('[[map]]\nhex = "ff"\naddress = "0xffffffffffffffff"\n')
    m = load_mapfile(path)
    try:
        assert m.extents() == [(2**64 - 1, 2**64)]
    finally:
        m.close()


@pytest.mark.parametrize("kind", ["file", "elf"])
def test_map_file_naming_itself(folder: Path, kind: str) -> None:
    address = "\naddress = 0" if kind == "file" else ""
    (folder / "sub" / "hard.toml").unlink(missing_ok=True)
    for reference in ("self.toml", "./sub/../self.toml", str(folder / "self.toml"),
                      "link.toml", "sub/hard.toml"):
        path = folder / "self.toml"
        path.write_text(f'[[map]]\n{kind} = "{reference}"{address}\n')
        if not (folder / "link.toml").exists():
            (folder / "link.toml").symlink_to("self.toml")
            os.link(path, folder / "sub" / "hard.toml")
        with pytest.raises(FormatError, match="names the map file itself") as caught:
            load_mapfile(path)
        assert_one_line(caught.value)


@pytest.mark.parametrize("kind", ["file", "elf"])
def test_map_file_naming_a_directory_or_a_special_file(folder: Path, kind: str) -> None:
    address = "\naddress = 0" if kind == "file" else ""
    os.mkfifo(folder / "fifo")
    for reference, message in [("sub", "is a directory"), (".", "is a directory"),
                               (str(folder), "is a directory"),
                               ("fifo", "not a regular file or block device"),
                               ("/dev/zero", "not a regular file or block device"),
                               ("missing", "No such file or directory")]:
        text = map_error(folder, f'[[map]]\n{kind} = "{reference}"{address}\n')
        assert f"map[0].{kind}: " in text and message in text


def test_fifo_and_directory_sources_do_not_hang(tmp_path: Path) -> None:
    """A FIFO is refused before it is opened (opening it would wait for a writer)."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FormatError, match="not a regular file or block device"):
        open_source(tmp_path / "fifo")
    with pytest.raises(IsADirectoryError):
        open_source(tmp_path)


@pytest.mark.parametrize("text", [
    "x = " + "[" * 5000,
    "x = " + "{a = " * 3000,
    "x = " + "1" * 5000,
])
def test_text_that_defeats_the_toml_reader(tmp_path: Path, text: str) -> None:
    """Too deep for tomllib's recursion, or an integer too long for int(): raw data, or
    a one-line error when it has a [[map]] header."""
    raw = tmp_path / "raw.txt"
    raw.write_text(text)
    m = open_source(raw)
    try:
        assert m.extents() == [(0, len(text))]
    finally:
        m.close()
    broken = tmp_path / "broken.toml"
    broken.write_text("[[map]]\n" + text)
    with pytest.raises(FormatError, match="not valid TOML") as caught:
        open_source(broken)
    assert_one_line(caught.value, str(broken))


# ==================================================================== any file as a source


def source_bytes() -> st.SearchStrategy[bytes]:
    """Bytes that reach each detector: ELF magic, TOML-looking text, anything."""
    text = st.text(alphabet=st.sampled_from(list('[]{}="., \n\t#0x1az-_\'\\')), max_size=300)
    return st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda tail: b"\x7fELF" + tail),
        st.tuples(st.sampled_from(["", "[[map]]\n", "[[map]]\nhex = '00'\naddress = 0\n"]),
                  text).map(lambda parts: (parts[0] + parts[1]).encode()),
    )


@seeded(400)
@given(content=source_bytes())
def test_any_file_as_a_source(tmp_path_factory: pytest.TempPathFactory,
                              content: bytes) -> None:
    TRIED["source files (detection)"] += 1
    path = tmp_path_factory.getbasetemp() / "any.src"
    path.write_bytes(content)
    try:
        m = open_source(path)
    except ValueError as error:           # FormatError, or offsets past the file
        assert_one_line(error)
        return
    try:
        for start, end in m.extents():
            m.get_bytes(start, min(end - start, 64))
    finally:
        m.close()


@pytest.mark.slow
def test_coverage_guided_harness(tmp_path: Path) -> None:
    """``tests/fuzz/fuzz_inputs.py`` (atheris, when installed) runs a bounded number of
    inputs against sources, mount options and control values without a crash."""
    pytest.importorskip("atheris")
    runs = 10_000
    harness = Path(__file__).parent / "fuzz" / "fuzz_inputs.py"
    result = subprocess.run([sys.executable, str(harness), f"-runs={runs}", "-seed=1",
                             "-max_len=2048", str(tmp_path / "corpus")],
                            capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {runs} runs" in result.stderr, result.stderr[-3000:]
    TRIED["atheris inputs (sources, options, controls)"] += runs


# ==================================================================== mount options


OWN_OPTIONS = ("address", "offset", "length", "physical", "base", "wordsize", "endian",
               "holes", "debug", "foreground", "fsname")
OPTION_WORDS = [*OWN_OPTIONS, "allow_other", "auto_unmount", "ro", "rw", "nodev", "noexec",
                "defaults", "user", "users", "nofail", "_netdev", "x-systemd.automount",
                "comment=x", "sync", "max_read", "subtype", "default_permissions", "uid",
                "Ro", "", " ro"]
OPTION_VALUES = ["0", "0x1000", "4096", "-1", "0x", "0x10000000000000000", "1e3", "32",
                 "64", "48", "le", "BE", "little", "unset", "eio", "zero", "ZERO", "", "=",
                 "a,b", "é", "\t", "0b101", " 1", "1" * 30, "ffff"]


def option_strings() -> st.SearchStrategy[str]:
    word = st.one_of(
        st.sampled_from(OPTION_WORDS),
        st.tuples(st.sampled_from(OPTION_WORDS), st.sampled_from(["=", "=="]),
                  st.one_of(st.sampled_from(OPTION_VALUES), st.text(max_size=12)))
        .map("".join),
        st.text(max_size=16),
    )
    return st.lists(word, min_size=1, max_size=5).map(",".join)


def arguments() -> st.SearchStrategy[list[str]]:
    extra = st.sampled_from(["-f", "-v", "-n", "-s", "-fv", "-x", "-o", "-t", "-tvmemfs",
                             "-t", "fuse.vmemfs", "ext4", "--", "-", "third", "-ovmemfs"])
    return st.tuples(st.lists(extra, max_size=3), option_strings(), st.booleans()).map(
        lambda parts: [*parts[0], "SOURCE", "MOUNTPOINT", "-o", parts[1]]
        if parts[2] else ["SOURCE", *parts[0], "MOUNTPOINT", "-o" + parts[1]])


@pytest.mark.slow
@seeded(3000)
@given(argv=arguments())
def test_option_parser(argv: list[str]) -> None:
    """Any command line parses, or fails with a one-line UsageError; what is handed to
    libfuse never holds one of vmemfs's own options."""
    TRIED["mount.vmemfs command lines (parser)"] += 1
    try:
        invocation = parse_command_line(argv)
    except UsageError as error:
        assert_one_line(error)
        return
    names = {option.split("=", 1)[0] for option in fuse_options(invocation)}
    assert not names & (set(OWN_OPTIONS) - {"fsname"}), names


def helper_sample(count: int, seed: int) -> Iterator[str]:
    """Option strings for the real helper, drawn as :func:`option_strings` does."""
    rng = random.Random(seed)
    for _ in range(count):
        words = []
        for _ in range(rng.randrange(1, 4)):
            word = rng.choice(OPTION_WORDS)
            if rng.random() < 0.6:
                word += "=" + rng.choice(OPTION_VALUES)
            if rng.random() < 0.1:
                word = "".join(chr(rng.randrange(32, 0x3000)) for _ in range(6))
            words.append(word)
        yield ",".join(words)


@pytest.mark.slow
def test_option_sample_through_the_real_helper(tmp_path: Path) -> None:
    """The real ``mount.vmemfs``: exit 1 with the parser's one-line error for a bad
    option, exit 32 for the missing mount point when the options are good; never a
    traceback."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"data")
    missing = tmp_path / "no-such-dir"
    for options in helper_sample(24, seed=9):
        TRIED["mount.vmemfs command lines (real helper)"] += 1
        result = subprocess.run([HELPER, source, missing, "-o", options],
                                capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("mount.vmemfs: error: "), \
            (options, result.stderr)
        try:
            parse_command_line([str(source), str(missing), "-o", options])
        except UsageError as error:
            assert (result.returncode, lines[0]) == (1, f"mount.vmemfs: error: {error}")
        else:
            assert result.returncode == 32, (options, result.stderr)
            assert "does not exist" in lines[0]


# ==================================================================== .ctl writes


@pytest.fixture(scope="module")
def ctl_mount(module_mounts: Mounts, tmp_path_factory: pytest.TempPathFactory) -> Mount:
    source = tmp_path_factory.mktemp("ctl") / "source.bin"
    source.write_bytes(bytes(range(256)) * 64)
    return module_mounts.foreground(source)


def controls_of(mount: Mount) -> dict[str, bytes]:
    state = {name: mount.path(".ctl", name).read_bytes() for name in ctl.CONTROLS}
    state["mem size"] = str(os.stat(mount.path("mem")).st_size).encode()
    return state


VALID_VALUES = {
    "wordsize": [b"32", b"64", b"unset"],
    "endian": [b"little", b"big", b"le", b"be", b"unset"],
    "base": [b"0", b"0x1000", b"4096", b"0xffffffffffffffff", b"18446744073709551615",
             b"0x00000000000000000000000000000000000000000000000000000000000001"],
    "holes": [b"eio", b"zero"],
}


def control_writes() -> st.SearchStrategy[tuple[str, bytes]]:
    """A control and what is written to it: its valid values (a third of the time as
    they are or with a newline), their near misses, any other control's values, junk."""

    def for_control(name: str) -> st.SearchStrategy[tuple[str, bytes]]:
        valid = st.sampled_from(VALID_VALUES[name])
        near = st.sampled_from(sorted(v for values in VALID_VALUES.values() for v in values)
                               ).flatmap(lambda value: st.sampled_from(
                                   [value + b"\n\n", b" " + value, value.upper(),
                                    value + b"\0", b"-" + value, value * 2, value[:-1],
                                    value + b"\r\n", b"+" + value, value + b"\n"]))
        data = st.one_of(
            valid, valid.map(lambda value: value + b"\n"), near,
            st.binary(min_size=0, max_size=80),
            st.binary(min_size=60, max_size=70).map(lambda junk: b"0x" + junk.hex().encode()),
            st.integers(2**64 - 2, 2**70).map(lambda n: str(n).encode()),
        )
        return data.map(lambda value: (name, value))

    return st.sampled_from(ctl.CONTROLS).flatmap(for_control)


@pytest.mark.mount
@pytest.mark.slow
@seeded(600)
@given(write=control_writes(), offset=st.sampled_from([0, 0, 0, 0, 0, 1, 2, 64, 4096]),
       truncate=st.booleans())
def test_random_control_writes(ctl_mount: Mount, write: tuple[str, bytes], offset: int,
                               truncate: bool) -> None:
    name, data = write
    TRIED[".ctl writes on a live mount"] += 1
    mount = ctl_mount
    before = controls_of(mount)
    try:
        expected = ctl.parse(name, data) if offset == 0 else None
        accepted = offset == 0
    except ctl.ControlValueError:
        expected, accepted = None, False
    fd = os.open(mount.path(".ctl", name), os.O_WRONLY | (os.O_TRUNC if truncate else 0))
    try:
        if not data:                # the kernel answers an empty write itself
            assert os.pwrite(fd, data, offset) == 0
            accepted = False
        elif accepted:
            assert os.pwrite(fd, data, offset) == len(data)
        else:
            with pytest.raises(OSError) as caught:
                os.pwrite(fd, data, offset)
            assert caught.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    after = controls_of(mount)
    TRIED[f".ctl writes on a live mount: {'accepted' if accepted else 'refused'}"] += 1
    if accepted:
        assert after[name] == ctl.format_value(name, expected)
        assert {k: v for k, v in after.items() if k not in (name, "mem size")} == \
            {k: v for k, v in before.items() if k not in (name, "mem size")}
    else:
        assert after == before


@pytest.mark.mount
def test_control_files_after_the_fuzzing(ctl_mount: Mount) -> None:
    """``.ctl/maps``, ``mem`` and ``extents/`` refuse writers; the mount still serves."""
    mount = ctl_mount
    for path in (mount.path(".ctl", "maps"), mount.path("mem")):
        with pytest.raises(PermissionError):
            os.open(path, os.O_WRONLY)
    for name, value in (("base", "0\n"), ("holes", "eio\n")):
        mount.path(".ctl", name).write_text(value)
    assert mount.path("mem").read_bytes() == bytes(range(256)) * 64
    assert mount.alive()
    assert stat.S_IMODE(os.stat(mount.path(".ctl", "base")).st_mode) == 0o644


# ==================================================================== names the mount gets


@pytest.mark.mount
def test_source_paths_outside_ascii(mounts: Mounts, tmp_path: Path) -> None:
    """pyfuse3 hands options to libfuse as ASCII: the fsname (by default the source's
    path) shows each other byte as ``\\xNN``; the mount works."""
    for name in ("mémoire.bin", os.fsdecode(b"raw\xff.bin")):
        source = tmp_path / name
        source.write_bytes(b"data")
        mount = mounts.foreground(source)
        assert mount.path("mem").read_bytes() == b"data"
        [fsname] = [line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()
                    if line.split()[1] == str(mount.mountpoint)]
        shown = os.fsencode(str(source)).decode("ascii", "backslashreplace")
        assert fsname == shown.replace("\\", "\\134")
