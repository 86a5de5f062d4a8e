"""The ``vmemfs`` command (SPEC §5.4), run as the installed console script.

Each command is checked against the model (:class:`vmemfs.MemoryMap` opened from the same
source in this process); every user error must be one line on stderr with its documented
exit status and no traceback.  The progress bar is tested directly with fake streams.
"""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from elftools import readelf_loads

from vmemfs import MemoryMap
from vmemfs import open as open_source
from vmemfs.cli import EXIT_BROKEN_PIPE, EXIT_HOLE, EXIT_INPUT, EXIT_USAGE, main, parse_number
from vmemfs.formats.save import save
from vmemfs.progress import ProgressBar, format_size

VMEMFS = Path(sys.executable).parent / "vmemfs"
HIGH = 0xFFFF_FFFF_8100_0000


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the console script; stdout and stderr as bytes."""
    assert VMEMFS.exists(), f"the console script is not installed at {VMEMFS}"
    return subprocess.run([str(VMEMFS), *map(str, args)], capture_output=True,
                          timeout=timeout, check=False)


def one_error_line(result: subprocess.CompletedProcess[bytes] | str) -> str:
    """The single ``vmemfs: error: ...`` line a user error must print, checked."""
    text = result if isinstance(result, str) else result.stderr.decode()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("vmemfs: error: "), text
    return lines[0]


# -------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def raw(folder: Path) -> Path:
    """64 KiB of seeded random bytes with a few planted words and strings."""
    data = bytearray(random.Random(7).randbytes(1 << 16))
    for at in (0x100, 0x2004, 0x2008, 0xFFF0):
        data[at:at + 8] = (0x1122334455667788).to_bytes(8, "little")
    for at in (0x30, 0x5FFD, 0x9000):
        data[at:at + 6] = b"needle"
    path = folder / "raw.bin"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def mapfile(folder: Path, raw: Path) -> Path:
    """A map file: overlapping file mappings, inline bytes, holes, high extents.

    ::

        0x1000          0x5000     0x6000
          |--- raw[0:16K] ---|          (file)
                  |-- raw[0x8000:+8K] --|   (file, later: wins over the overlap)
                                        | "needle..." (text, adjacent: same extent)
        0x10000: hex word (lone extent)
        HIGH: raw[0:4K], HIGH+4K: hole, HIGH+8K: raw[4K:8K]
    """
    path = folder / "guest.toml"
    path.write_text(f"""\
wordsize = 64
endian = "little"

[[map]]
file = "{raw.name}"
address = 0x1000
length = 0x4000

[[map]]
file = "{raw.name}"
address = 0x4000
offset = 0x8000
length = 0x2000

[[map]]
text = "needle in the map\\u0000"
address = 0x6000

[[map]]
hex = "8877665544332211"
address = 0x10000

[[map]]
file = "{raw.name}"
address = "{HIGH:#x}"
length = 0x1000

[[map]]
file = "{raw.name}"
address = "{HIGH + 0x2000:#x}"
offset = 0x1000
length = 0x1000
""")
    return path


@pytest.fixture(scope="module")
def elf(folder: Path) -> Path:
    """The map file's map saved as an ELF core, ELF32 big-endian, e_machine PowerPC."""
    memmap = MemoryMap()
    data = random.Random(8).randbytes(0x3000)
    memmap.add_bytes(data, 0x1000_0000)
    memmap.add_bytes(data[:0x800], 0x1000_4000)
    memmap.add_bytes((0x10000010).to_bytes(4, "big") * 4, 0x1000_5000)
    memmap.wordsize, memmap.endian = 32, "big"
    memmap.machine = 20
    path = folder / "ppc.core"
    save(memmap, path)
    return path


def model(path: Path, **options: int) -> MemoryMap:
    return open_source(path, **options)  # type: ignore[arg-type]


# -------------------------------------------------------------------- info


def info_section(text: str, name: str) -> list[str]:
    """The indented lines under ``name:`` in ``vmemfs info`` output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
    section = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        section.append(line.strip())
    return section


def test_info_map_file(mapfile: Path) -> None:
    result = run("info", mapfile)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    text = result.stdout.decode()
    expected = model(mapfile)
    assert f"source:    {mapfile} (map file)" in text
    assert "wordsize:  64\n" in text and "endian:    little\n" in text
    assert "machine:   unknown\n" in text
    assert f"mappings:  {len(expected.mappings)} " in text
    assert info_section(text, "mappings") == [str(m) for m in expected.mappings]
    extents = expected.extents()
    shown = [re.match(r"(0x[0-9a-f]{16})-(0x[0-9a-f]{16})", line) for line in
             info_section(text, "extents")]
    assert [(int(m[1], 16), int(m[2], 16)) for m in shown if m] == extents
    holes = [(int(m[1], 16), int(m[2], 16)) for m in
             (re.match(r"(0x[0-9a-f]{16})-(0x[0-9a-f]{16})", line)
              for line in info_section(text, "holes")) if m]
    assert holes == [(extents[i][1], extents[i + 1][0]) for i in range(len(extents) - 1)]
    assert (0x6012, 0x10000) in holes and (HIGH + 0x1000, HIGH + 0x2000) in holes
    assert f"mapped:    {expected.mapped_bytes()} bytes" in text


def test_info_raw_with_options(raw: Path) -> None:
    result = run("info", raw, "-o", "address=0x7000,offset=0x10", "-o", "length=1K")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "(raw file)" in text
    assert "wordsize:  unset\n" in text and "endian:    unset\n" in text
    assert info_section(text, "extents") == ["0x0000000000007000-0x0000000000007400  1024 bytes "
                                             "(1.00 KiB)"]
    assert info_section(text, "holes") == []
    assert "offset=0x10 length=0x400" in text
    assert "mapped:    1024 bytes" in text


def test_info_elf_with_overrides(elf: Path) -> None:
    plain = run("info", elf).stdout.decode()
    assert "(ELF file)" in plain
    assert "wordsize:  32\n" in plain and "endian:    big\n" in plain
    assert "machine:   20 (PowerPC)\n" in plain
    assert len(info_section(plain, "extents")) == 3
    overridden = run("info", elf, "--wordsize", "64", "--endian", "le").stdout.decode()
    assert "wordsize:  64\n" in overridden and "endian:    little\n" in overridden
    unset = run("info", elf, "-o", "wordsize=unset", "--endian", "unset").stdout.decode()
    assert "wordsize:  unset\n" in unset and "endian:    unset\n" in unset


# -------------------------------------------------------------------- read


@pytest.mark.parametrize(("address", "length"), [
    ("0x1000", "0x4000"),          # across the overlap of two file mappings
    ("16384", "8K"),               # decimal and a K suffix, ending at an extent's end
    ("0x5ff0", "0x22"),            # across the file/text boundary, up to the hole
    (f"{HIGH:#x}", "4K"),          # above 2**63
    ("0x10004", "4"),
])
def test_read_matches_model(mapfile: Path, address: str, length: str) -> None:
    result = run("read", mapfile, address, length)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    expected = model(mapfile).get_bytes(parse_number(address), parse_number(length))
    assert result.stdout == expected


def test_read_large_streams_in_chunks(folder: Path) -> None:
    data = random.Random(9).randbytes(3 << 20)
    path = folder / "three-mib.bin"
    path.write_bytes(data)
    result = run("read", path, "0x1000", "0x2ff000", "-o", "address=0x1000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == data[:0x2FF000]


def test_read_through_hole_writes_bytes_before_it(mapfile: Path) -> None:
    start = HIGH + 0x800
    result = run("read", mapfile, hex(start), "0x2000")
    assert result.returncode == EXIT_HOLE == 3
    assert result.stdout == model(mapfile).read(start, 0x2000)
    assert len(result.stdout) == 0x800
    line = one_error_line(result)
    assert f"{HIGH + 0x1000:#x}" in line and "not mapped" in line


def test_read_starting_in_hole(mapfile: Path) -> None:
    result = run("read", mapfile, "0x7000", "16")
    assert result.returncode == EXIT_HOLE
    assert result.stdout == b""
    assert "0x7000" in one_error_line(result)


def test_read_nothing(mapfile: Path) -> None:
    result = run("read", mapfile, "0x7000", "0")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_read_into_closed_pipe_exits_quietly(folder: Path) -> None:
    path = folder / "four-mib.bin"
    path.write_bytes(bytes(4 << 20))
    with subprocess.Popen([str(VMEMFS), "read", str(path), "0", "4M"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            assert process.stdout.read(10) == bytes(10)
            process.stdout.close()
            errors = process.stderr.read()
            assert process.wait(timeout=60) == EXIT_BROKEN_PIPE
        finally:
            if process.poll() is None:
                process.kill()
    assert errors == b""


# -------------------------------------------------------------------- find


def addresses(result: subprocess.CompletedProcess[bytes]) -> list[int]:
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = result.stdout.decode().splitlines()
    assert all(re.fullmatch(r"0x[0-9a-f]{16}", line) for line in lines), lines
    return [int(line, 16) for line in lines]


def test_find_text(mapfile: Path) -> None:
    expected = model(mapfile).find_all(b"needle")
    assert len(expected) >= 3  # in the file mappings, the text, the high extent
    assert addresses(run("find", mapfile, "needle")) == expected
    assert addresses(run("find", mapfile, "--text", "needle")) == expected


def test_find_hex_start_max(mapfile: Path) -> None:
    memmap = model(mapfile)
    pattern = bytes.fromhex("8877665544332211")
    expected = memmap.find_all(pattern)
    assert 0x10000 in expected
    assert addresses(run("find", mapfile, "--hex", "88 77 66 55 44 33 22 11")) == expected
    assert addresses(run("find", mapfile, "--hex", "0x8877665544332211",
                         "--start", "0x10000")) == memmap.find_all(pattern, 0x10000)
    assert addresses(run("find", mapfile, "--hex", "88776655", "--max", "2")) == \
        memmap.find_all(pattern[:4])[:2]


def test_find_pointer_and_align(mapfile: Path, raw: Path, elf: Path) -> None:
    memmap = model(mapfile)
    expected = memmap.find_pointer_all(0x1122334455667788)
    assert expected and all(a % 8 == 0 for a in expected)
    assert addresses(run("find", mapfile, "--pointer", "0x1122334455667788")) == expected
    # Unaligned copies exist (raw offset 0x2004 lands at 0x3004): --align drops them.
    assert addresses(run("find", mapfile, "--hex", "8877665544332211", "--align")) == \
        memmap.find_all_align(bytes.fromhex("8877665544332211"))
    # A raw file has no word size: the overrides supply one.
    raw_map = model(raw)
    raw_map.wordsize, raw_map.endian = 32, "little"
    assert addresses(run("find", raw, "--pointer", "0x55667788", "--wordsize", "32",
                         "--endian", "little")) == raw_map.find_pointer_all(0x55667788)
    # ELF32 big-endian: the pointer is encoded in 4 big-endian bytes.
    found = addresses(run("find", elf, "--pointer", "0x10000010"))
    assert found == model(elf).find_pointer_all(0x10000010)
    assert found[:4] == [0x1000_5000, 0x1000_5004, 0x1000_5008, 0x1000_500C]


def test_find_shows_progress_only_on_a_terminal(
        mapfile: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = FakeStream(tty=True)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["find", str(mapfile), "needle"]) == 0
    shown = terminal.getvalue()
    assert shown.startswith("\rsearching [") and "%" in shown
    assert shown.endswith("\r") and shown.rsplit("\r", 2)[-2].strip() == ""  # erased
    found = [int(line, 16) for line in capsys.readouterr().out.splitlines()]
    assert found == model(mapfile).find_all(b"needle")
    piped = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stderr", piped)
    assert main(["find", str(mapfile), "needle"]) == 0
    assert piped.getvalue() == ""


# -------------------------------------------------------------------- save


def readelf_ranges(path: Path) -> list[tuple[int, int]]:
    """``(address, size)`` of every LOAD in ``readelf -lW``."""
    return [(load.vaddr, load.filesz) for load in readelf_loads(path)]


def test_save_then_readelf_and_reload(mapfile: Path, folder: Path) -> None:
    out = folder / "guest.core"
    result = run("save", mapfile, out)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    expected = model(mapfile)
    assert readelf_ranges(out) == [(s, e - s) for s, e in expected.extents()]
    loaded = MemoryMap.load(out)
    assert loaded.extents() == expected.extents()
    for start, end in expected.extents():
        assert loaded.get_bytes(start, end - start) == expected.get_bytes(start, end - start)
    assert (loaded.wordsize, loaded.endian) == (64, "little")


def test_save_raw_with_overrides(raw: Path, folder: Path) -> None:
    out = folder / "raw.core"
    result = run("save", raw, out, "-o", "address=0x40000000,length=0x1000",
                 "--wordsize", "32", "--endian", "big")
    assert result.returncode == 0, result.stderr
    assert readelf_ranges(out) == [(0x40000000, 0x1000)]
    loaded = MemoryMap.load(out)
    assert (loaded.wordsize, loaded.endian) == (32, "big")
    assert loaded.get_bytes(0x40000000, 0x1000) == raw.read_bytes()[:0x1000]


# -------------------------------------------------------------------- errors and help


@pytest.fixture(scope="module")
def broken_elf(folder: Path, elf: Path) -> Path:
    path = folder / "truncated.core"
    path.write_bytes(elf.read_bytes()[:70])
    return path


USER_ERRORS = [
    (["info", "{folder}/missing"], EXIT_INPUT, "No such file"),
    (["info", "{folder}"], EXIT_INPUT, "directory"),
    (["info", "{broken_elf}"], EXIT_INPUT, "truncated.core"),
    (["info", "{mapfile}", "-o", "address=0x10"], EXIT_INPUT, "address="),
    (["info", "{raw}", "-o", "offset=0x20000"], EXIT_INPUT, "raw.bin"),
    (["info", "{raw}", "-o", "colour=red"], EXIT_USAGE, "colour"),
    (["info", "{raw}", "--wordsize", "48"], EXIT_USAGE, "48"),
    (["read", "{raw}", "0x1q", "4"], EXIT_USAGE, "0x1q"),
    (["read", "{raw}", "0"], EXIT_USAGE, "LENGTH"),
    (["read", "{raw}", "0xffffffffffffffff", "2"], EXIT_USAGE, "2**64"),
    (["find", "{raw}", "--pointer", "0x10"], EXIT_USAGE, "word size"),
    (["find", "{raw}", "--pointer", "0x10", "--wordsize", "64"], EXIT_USAGE, "byte order"),
    (["find", "{raw}", "needle", "--align"], EXIT_USAGE, "word size"),
    (["find", "{mapfile}", "--pointer", "0x1" + "0" * 16], EXIT_USAGE, "2**64"),
    (["find", "{raw}", "--hex", "xyz"], EXIT_USAGE, "hexadecimal"),
    (["find", "{raw}", ""], EXIT_USAGE, "empty"),
    (["find", "{raw}", "a", "--hex", "--text"], EXIT_USAGE, "not allowed"),
    (["save", "{raw}", "{folder}/missing/out.core"], EXIT_INPUT, "out.core"),
    (["frobnicate"], EXIT_USAGE, "frobnicate"),
    ([], EXIT_USAGE, "COMMAND"),
]
"""Command lines with a user error: the exit status and a word the message must hold."""


@pytest.fixture(scope="module")
def paths(folder: Path, raw: Path, mapfile: Path, broken_elf: Path) -> dict[str, Path]:
    return {"folder": folder, "raw": raw, "mapfile": mapfile, "broken_elf": broken_elf}


@pytest.mark.parametrize(("arguments", "status", "words"), USER_ERRORS)
def test_user_errors_are_one_line(arguments: list[str], status: int, words: str,
                                  paths: dict[str, Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (main() returns the status; a traceback would fail the test)."""
    assert main([argument.format(**paths) for argument in arguments]) == status
    captured = capsys.readouterr()
    assert words in one_error_line(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize("case", [0, 2, 5, 10, 17, 18])
def test_user_errors_from_the_console_script(case: int, paths: dict[str, Path]) -> None:
    """A sample of the above through the installed script: a file, a malformed ELF, an
    -o option, a word size, an output folder, an unknown command."""
    arguments, status, words = USER_ERRORS[case]
    result = run(*(argument.format(**paths) for argument in arguments))
    assert result.returncode == status, result.stderr
    assert words in one_error_line(result)
    assert result.stdout == b""


def test_pointer_too_wide_for_a_32_bit_map(elf: Path) -> None:
    result = run("find", elf, "--pointer", "0x100000000")
    assert result.returncode == EXIT_USAGE
    assert "32 bits" in one_error_line(result)


def test_help_explains_each_command() -> None:
    top = run("--help")
    assert top.returncode == 0
    for command in ("mount", "info", "read", "find", "save", "exit status"):
        assert command in top.stdout.decode()
    for command in ("info", "read", "find", "save"):
        result = run(command, "--help")
        assert result.returncode == 0, result.stderr
        text = result.stdout.decode()
        assert text.startswith(f"usage: vmemfs {command} ")
        assert f"examples:\n  vmemfs {command} " in text
        assert "exit status:" in text and "  3 " in text
    mount = run("mount", "--help")
    assert mount.returncode == 0
    assert "mount.vmemfs" in mount.stdout.decode() and "holes=" in mount.stdout.decode()


def test_mount_hands_errors_back_from_mount_vmemfs(raw: Path, folder: Path) -> None:
    usage = run("mount", raw)
    assert usage.returncode == 1
    missing = run("mount", raw, folder / "no-such-dir")
    assert missing.returncode == 32
    for result in (usage, missing):
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mount.vmemfs: error: "), lines


@pytest.mark.mount
def test_mount_through_vmemfs(mapfile: Path, tmp_path: Path) -> None:
    """``vmemfs mount`` mounts for real (detached, ``-v`` tells the daemon's pid)."""
    from mounting import Mount, mount_unavailable, unmount

    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run("mount", mapfile, mountpoint, "-v")
    match = re.search(rb"\(pid (\d+)\)", result.stderr)
    if match is None:
        assert not os.path.ismount(mountpoint), result.stderr
        raise AssertionError(f"vmemfs mount exited with {result.returncode}: {result.stderr!r}")
    mount = Mount(mountpoint, int(match[1]), None, None, result.stderr.decode())
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mountpoint)
        expected = model(mapfile)
        with open(mountpoint / "mem", "rb") as mem:
            mem.seek(0x1000)
            assert mem.read(0x100) == expected.get_bytes(0x1000, 0x100)
        assert len(os.listdir(mountpoint / "extents")) == len(expected.extents())
    finally:
        unmount(mount)
    assert not os.path.ismount(mountpoint)


# -------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("4096", 4096), ("0x1000", 4096), ("0X1000", 4096), ("4K", 4096),
    ("4k", 4096), ("0x4K", 4096), ("1M", 1 << 20), ("2G", 2 << 30), ("1T", 1 << 40),
    ("0xffffffffffffffff", (1 << 64) - 1),
])
def test_parse_number(text: str, value: int) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "-1", "0x", "1.5", "12KB", "0x1q", "16777216T",
                                  "0x10000000000000000"])
def test_parse_number_refuses(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_number(text)


# -------------------------------------------------------------------- the progress bar


class FakeStream(io.StringIO):
    """A text stream that says whether it is a terminal."""

    def __init__(self, *, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_draws_nothing_when_not_a_terminal() -> None:
    stream = FakeStream(tty=False)
    with ProgressBar("saving", 1000, stream=stream) as bar:
        assert not bar.enabled
        for done in range(0, 1001, 10):
            bar.update(done)
        bar.clear()
    assert stream.getvalue() == ""
    assert bar.redraws == 0


def test_progress_draws_on_a_terminal_and_erases_itself() -> None:
    stream = FakeStream(tty=True)
    clock = FakeClock()
    bar = ProgressBar("saving", 2 << 20, stream=stream, clock=clock)
    assert bar.enabled
    bar.update(1 << 20)
    text = stream.getvalue()
    assert text.startswith("\rsaving [") and " 50%" in text
    assert "1.00 MiB / 2.00 MiB" in text
    bar.close()
    erased = stream.getvalue()[len(text):]
    assert erased == "\r" + " " * (len(text) - 1) + "\r"
    bar.update(2 << 20)
    assert stream.getvalue() == text + erased  # closed: nothing more


def test_progress_redraws_are_rate_limited() -> None:
    stream = FakeStream(tty=True)
    clock = FakeClock()
    bar = ProgressBar("searching", 10**6, stream=stream, clock=clock, interval=0.5)
    for done in range(10**4):
        bar.update(done)
    assert bar.redraws == 1
    clock.now += 0.4
    bar.update(5000)
    assert bar.redraws == 1
    clock.now += 0.2
    bar.update(6000)
    assert bar.redraws == 2
    bar.clear()  # a cleared bar is drawn again at the next update
    bar.update(6001)
    assert bar.redraws == 3


def test_progress_hidden_when_asked_even_on_a_terminal() -> None:
    stream = FakeStream(tty=True)
    bar = ProgressBar("reading", 10, stream=stream, show=False)
    bar.update(5)
    bar.close()
    assert stream.getvalue() == "" and not bar.enabled


def test_progress_fits_the_terminal() -> None:
    bar = ProgressBar("searching", 3 << 30, stream=FakeStream(tty=False))
    bar.update(1 << 30)
    for width in (10, 30, 50, 80, 200):
        text = bar.render(width)
        assert len(text) <= width - 1
    assert "[" in bar.render(80) and "33%" in bar.render(80)
    assert "[" not in bar.render(40) and "33%" in bar.render(40)
    empty = ProgressBar("saving", 0, stream=FakeStream(tty=False))
    assert "100%" in empty.render(80)


def test_progress_stops_drawing_when_the_terminal_fails() -> None:
    class Closed(FakeStream):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    bar = ProgressBar("saving", 10, stream=Closed(tty=True), clock=FakeClock())
    bar.update(5)  # must not raise
    assert not bar.enabled
    bar.close()


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (1536, "1.50 KiB"),
    (10 << 20, "10.0 MiB"), (500 << 30, "500 GiB"), ((1 << 64) - 1, "16.0 EiB"),
])
def test_format_size(count: int, text: str) -> None:
    assert format_size(count) == text


# -------------------------------------------------------------------- failure paths in process


def test_save_of_a_shrunken_file_is_a_hole_error(
        folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vmemfs.cli

    backing = folder / "shrinks.bin"
    backing.write_bytes(bytes(range(256)) * 64)
    opened = vmemfs.cli.open_map

    def open_then_shrink(source: str, settings: vmemfs.cli.SourceSettings) -> MemoryMap:
        memmap = opened(source, settings)
        os.truncate(backing, 0x1000)
        return memmap

    monkeypatch.setattr(vmemfs.cli, "open_map", open_then_shrink)
    out = folder / "shrunk.core"
    assert main(["save", str(backing), str(out)]) == EXIT_HOLE
    assert "0x1000" in one_error_line(capsys.readouterr().err)
    assert not out.exists()  # a failed save leaves nothing behind


def test_interrupt_exits_quietly(
        raw: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vmemfs.cli

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(vmemfs.cli, "open_map", interrupted)
    assert main(["info", str(raw)]) == 130
    assert capsys.readouterr() == ("", "")


def test_address_writer_batches_and_ticks() -> None:
    from vmemfs.cli import AddressWriter

    clock = FakeClock()
    stream = io.BytesIO()
    writer = AddressWriter(stream, clock=clock)
    writer.add(0x10)
    writer.tick()
    assert stream.getvalue() == b""  # too soon
    clock.now += AddressWriter.INTERVAL
    writer.tick()
    assert stream.getvalue() == b"0x0000000000000010\n"
    for address in range(AddressWriter.BATCH):
        writer.add(address)
    assert stream.getvalue().count(b"\n") == 1 + AddressWriter.BATCH  # a full batch
    writer.add(0xFFFF_FFFF_FFFF_FFFF)
    writer.flush()
    assert stream.getvalue().endswith(b"0x0000000000000fff\n0xffffffffffffffff\n")
    immediate = AddressWriter(io.BytesIO(), immediate=True)
    immediate.add(1)
    assert immediate.stream.getvalue() == b"0x0000000000000001\n"  # type: ignore[attr-defined]
