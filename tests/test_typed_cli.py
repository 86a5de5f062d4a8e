"""Typed reads from the command line and from real programs.

* ``vmemfs at``: the text of every field equals what ``at/`` holds (vmemfs.typed), paths
  of links, the overview, the errors as one line and an exit status;
* symbol names wherever the command takes an address (``--symbols``, ``-o symbols=``,
  a map file's ``symbols``), ``NAME+OFFSET``;
* a C program's linked list, stopped and dumped with ``gcore``, mounted with the
  executable's symbols (non-PIE, and PIE with its load bias): the whole list walked
  with ``cat sym/HEAD/deref/.../string``, and the same through ``vmemfs at``;
* the big-endian PowerPC words of ``tests/artifacts/words.s`` read through the mount with
  ``.ctl/endian`` big (the values the assembler put there) and little (swapped).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from artifacts.build import DATA_ADDRESS, ToolMissing, build_words
from chain import chain_bytes
from conftest import Mounts
from mounting import sh

import vmemfs
from vmemfs import typed
from vmemfs.cli import (
    EXIT_HOLE,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_TOO_LONG,
    EXIT_USAGE,
    main,
    quoted,
)
from vmemfs.errors import FormatError

HERE = Path(__file__).resolve().parent
VMEMFS = Path(sys.executable).parent / "vmemfs"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``chain.toml`` (with ``symbols = "chain.map"``), ``chain.bin``, ``chain.map``, and
    ``plain.toml`` (the same bytes, no settings, no symbols)."""
    folder = tmp_path_factory.mktemp("chain")
    (folder / "chain.bin").write_bytes(chain_bytes())
    (folder / "chain.map").write_text("0000000010000000 D HEAD_NODE\n"
                                      "0000000010000100 D magic\n"
                                      "0000000010000050 r second_name\n")
    (folder / "other.map").write_text("0000000010000040 D HEAD_NODE\n")
    (folder / "chain.toml").write_text(
        'wordsize = 64\nendian = "little"\nsymbols = "chain.map"\n'
        '[[map]]\nfile = "chain.bin"\naddress = 0x10000000\n')
    (folder / "plain.toml").write_text('[[map]]\nfile = "chain.bin"\naddress = 0x10000000\n')
    (folder / "long.bin").write_bytes(b"x" * (typed.STRING_LIMIT + 1))
    return folder


def run_main(capsysbinary: pytest.CaptureFixture[bytes], *arguments: object
             ) -> tuple[int, bytes, str]:
    """``main()`` in this process: status, standard output, the one error line ("")."""
    status = main([os.fspath(argument) if isinstance(argument, Path) else str(argument)
                   for argument in arguments])
    captured = capsysbinary.readouterr()
    error = captured.err.decode()
    assert error.count("\n") <= 1 and "Traceback" not in error, error
    return status, captured.out, error


# -------------------------------------------------------------------- vmemfs at


def test_every_field_prints_what_at_holds(chain: Path,
                                          capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    source = chain / "chain.toml"
    memory_map = vmemfs.open(source)
    for address in (0x10000000, 0x10000013, 0x100000f0):
        for field in typed.VALUES:
            status, out, _ = run_main(capsysbinary, "at", source, hex(address), field)
            assert (status, out) == (EXIT_OK, typed.value(memory_map, address, field)), field
        for field in typed.LINKS:
            status, out, _ = run_main(capsysbinary, "at", source, str(address), field)
            target = typed.link(memory_map, address, field)
            assert out == typed.address_name(target).encode() + b"\n"
    # Several fields: their texts in order, as cat of several files prints them.
    status, out, _ = run_main(capsysbinary, "at", source, "0x10000100", "uint32", "int32",
                              "uint8", "next")
    assert out == b"3735928559\n-559038737\n239\n0x0000000010000108\n"
    # Paths of links, as the kernel walks them in a mount.
    status, out, _ = run_main(capsysbinary, "at", source, "0x10000000", "next/deref/string",
                              "deref/next/deref/string", "deref/deref/next/deref/string",
                              "deref/deref/deref")
    assert out == b"first\nsecond\nthird\n0x0000000000000000\n"


def test_overview_shows_every_field(chain: Path,
                                    capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = run_main(capsysbinary, "at", chain / "chain.toml", "0x10000010")
    assert status == EXIT_OK
    shown = dict(line.split(None, 1) for line in out.decode().splitlines())
    assert list(shown) == ["address", *typed.FIELDS]
    assert shown["address"] == "0x0000000010000010"
    assert shown["string"] == '"first"'
    assert shown["uint8"] == str(ord("f"))
    first_word = int.from_bytes(b"first\0\0\0", "little")
    assert shown["pointer"] == f"0x{first_word:016x}"
    status, out, _ = run_main(capsysbinary, "at", chain / "plain.toml", "0x10000100")
    shown = dict(line.split(None, 1) for line in out.decode().splitlines())
    assert shown["uint8"] == "239" and shown["int8"] == "-17"
    assert shown["uint32"] == "(byte order unset)" and shown["long"] == "(word size unset)"
    status, out, _ = run_main(capsysbinary, "at", chain / "plain.toml", "0x10000100",
                              "--wordsize", "64", "--endian", "big")
    shown = dict(line.split(None, 1) for line in out.decode().splitlines())
    assert shown["uint64"] == "(not mapped at 0x10000104)"
    assert shown["string"] == "(not mapped at 0x10000104)"   # no NUL before the end
    status, out, _ = run_main(capsysbinary, "at", chain / "long.bin", "0")
    assert "(no NUL within 1 MiB)" in out.decode()
    assert quoted(b'a"\\\n\t\r\x00\x7f~') == '"a\\"\\\\\\n\\t\\r\\x00\\x7f~"'


AT_ERRORS = [
    # arguments, status, words in the one error line
    (["plain.toml", "0x10000100", "uint32"], EXIT_USAGE, "--endian"),
    (["plain.toml", "0x10000100", "long", "--endian", "little"], EXIT_USAGE, "--wordsize"),
    (["plain.toml", "0x10000000", "deref/string", "--endian", "little"], EXIT_USAGE,
     "word size"),
    (["chain.toml", "0x10000104", "uint8"], EXIT_HOLE, "0x10000104 is not mapped"),
    (["chain.toml", "0x10000102", "uint32"], EXIT_HOLE, "0x10000104 is not mapped"),
    (["chain.toml", "0x10000080", "deref/string"], EXIT_HOLE, "0x0 is not mapped"),
    (["long.bin", "0", "string"], EXIT_TOO_LONG, "no NUL within 1 MiB"),
    (["chain.toml", "0x10000000", "strings"], EXIT_USAGE, "'strings' is not a field"),
    (["chain.toml", "0x10000000", "string/deref"], EXIT_USAGE, "is a value, not a link"),
    (["chain.toml", "0x10000000", "deref/"], EXIT_USAGE, "'' is not a field"),
    (["chain.toml", "0x1q"], EXIT_USAGE, "0x1q"),
    (["chain.toml", "0x10000000000000000"], EXIT_USAGE, "2**64"),
    (["plain.toml", "HEAD_NODE"], EXIT_USAGE, "needs --symbols"),
    (["chain.toml", "HEAD_NOD"], EXIT_USAGE, "no symbol 'HEAD_NOD' in"),
    (["chain.toml", "head_node"], EXIT_USAGE, "did you mean 'HEAD_NODE'"),
    (["chain.toml", "HEAD_NODE+zz"], EXIT_USAGE, "offset"),
    (["chain.toml", "HEAD_NODE-0x20000000"], EXIT_USAGE, "outside [0, 2**64)"),
    (["missing.toml", "0"], EXIT_INPUT, "missing.toml"),
    (["plain.toml", "0", "--symbols", "nothing.map"], EXIT_INPUT, "nothing.map"),
    (["plain.toml", "0", "--symbols", "chain.bin"], EXIT_INPUT, "chain.bin"),
]


@pytest.mark.parametrize(("arguments", "status", "words"), AT_ERRORS)
def test_at_errors_are_one_line_and_a_status(
        chain: Path, arguments: list[str], status: int, words: str,
        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    source, *rest = arguments
    rest = [str(chain / item) if item.endswith(".map") else item for item in rest]
    got, _, error = run_main(capsysbinary, "at", chain / source, *rest)
    assert got == status, error
    assert error.startswith("vmemfs: error: ") and words in error, error


def test_output_before_an_error_is_kept(chain: Path,
                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = run_main(capsysbinary, "at", chain / "chain.toml", "0x10000100",
                              "uint16", "uint64")
    assert (status, out) == (EXIT_HOLE, b"48879\n")


def test_symbols_wherever_an_address_is(chain: Path,
                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    toml, plain, table = chain / "chain.toml", chain / "plain.toml", chain / "chain.map"
    # The map file's own symbols; --symbols and -o symbols= for a map without them.
    for arguments in ([toml], [plain, "--symbols", table], [plain, "-o", f"symbols={table}"]):
        status, out, _ = run_main(capsysbinary, "read", *arguments, "second_name", "6")
        assert (status, out) == (EXIT_OK, b"second")
        status, out, _ = run_main(capsysbinary, "read", *arguments, "HEAD_NODE+0x10", "5")
        assert out == b"first"
        status, out, _ = run_main(capsysbinary, "at", *arguments, "magic-0x100", "deref",
                                  "next/deref", "--wordsize", "64", "--endian", "little")
        assert out == b"0x0000000010000040\n0x0000000010000010\n"
        status, out, _ = run_main(capsysbinary, "find", *arguments, "--pointer", "second_name",
                                  "--wordsize", "64", "--endian", "little")
        assert out == b"0x0000000010000048\n"
        status, out, _ = run_main(capsysbinary, "find", *arguments, "d", "--start", "magic-0x70")
        assert out == b"0x0000000010000094\n"
    # --symbols replaces the map file's table.
    status, out, _ = run_main(capsysbinary, "at", toml, "--symbols", chain / "other.map",
                              "HEAD_NODE", "next/deref/string")
    assert out == b"second\n"
    status, out, error = run_main(capsysbinary, "at", toml, "--symbols", chain / "other.map",
                                  "magic")
    assert status == EXIT_USAGE and "no symbol 'magic'" in error
    # A load bias.
    status, out, _ = run_main(capsysbinary, "at", plain, "--symbols", f"{table}@0x40",
                              "HEAD_NODE", "uint8")
    assert out == b"128\n"
    status, out, _ = run_main(capsysbinary, "info", toml)
    assert b"symbols:   3 from " in out and b"chain.map" in out


def test_map_file_symbols(chain: Path, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    memory_map = vmemfs.open(chain / "chain.toml")
    assert memory_map.symbols is not None and memory_map.symbols["magic"] == 0x10000100
    biased = tmp_path / "biased.toml"
    biased.write_text(f'symbols = "{chain}/chain.map@0x1000"\n'
                      f'[[map]]\nfile = "{chain}/chain.bin"\naddress = 0x10000000\n')
    table = vmemfs.open(biased).symbols
    assert table is not None and table["magic"] == 0x10001100
    option = vmemfs.open(chain / "chain.toml", symbols=chain / "other.map").symbols
    assert option is not None and dict(option) == {"HEAD_NODE": 0x10000040}
    for value, words in [('"missing.map"', "symbols: "), ("7", "symbols: not a string"),
                         ('"chain.bin"', "symbols: "), ('"chain.map@0xzz"', "symbols: "),
                         ('"@1"', "symbols: ")]:
        bad = chain / "bad.toml"
        bad.write_text(f'symbols = {value}\n[[map]]\nfile = "chain.bin"\naddress = 0\n')
        with pytest.raises(FormatError) as caught:
            vmemfs.open(bad)
        message = str(caught.value)
        assert message.startswith(f"{bad}: ") and words in message and "\n" not in message


def test_at_help() -> None:
    result = subprocess.run([VMEMFS, "at", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: vmemfs at ")
    assert "examples:\n  vmemfs at " in result.stdout and "  4    at:" in result.stdout
    assert "--symbols FILE[@BIAS]" in result.stdout


# -------------------------------------------------------------------- mounted


@pytest.mark.mount
def test_a_map_files_symbols_make_sym(chain: Path, mounts: Mounts) -> None:
    mount = mounts.foreground(chain / "chain.toml")
    assert sorted(os.listdir(mount.path("sym"))) == ["HEAD_NODE", "magic", "second_name"]
    assert mount.path("sym", "second_name", "string").read_bytes() == b"second\n"
    result = sh(f"cd {mount.mountpoint} && cat sym/HEAD_NODE/deref/deref/next/deref/string")
    assert result.stdout == b"third\n"


# -------------------------------------------------------------------- a real program


@dataclass(frozen=True)
class Dumped:
    program: Path
    core: Path
    head: int
    """Where ``HEAD`` is in the process."""
    bias: int
    """Where the executable is loaded, minus its link address (0 for non-PIE)."""


def load_bias(pid: int, program: Path) -> int:
    """The start of the executable's first mapping (file offset 0) in the process."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(program) and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16)
    raise AssertionError(f"{program} is not mapped in {pid}")


@pytest.fixture(scope="module", params=["no-pie", "pie"])
def dumped(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dumped]:
    """The linked-list program, built (non-PIE, or PIE), run, dumped with gcore."""
    compiler, gcore = need("gcc"), need("gcore")
    folder = tmp_path_factory.mktemp(f"list-{request.param}")
    program = folder / "linked_list"
    flags = ["-no-pie", "-fno-pie"] if request.param == "no-pie" else ["-pie", "-fpie"]
    built = subprocess.run([compiler, "-O0", "-g", *flags, "-o", str(program),
                            str(HERE / "artifacts" / "linked_list.c")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"gcc cannot build the program: {built.stderr.strip()}")
    process = subprocess.Popen([str(program)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        head = int(process.stdout.readline(), 16)
        os.kill(process.pid, signal.SIGSTOP)
        bias = 0 if request.param == "no-pie" else load_bias(process.pid, program)
        result = subprocess.run([gcore, "-o", str(folder / "core"), str(process.pid)],
                                capture_output=True, text=True, timeout=120)
        core = folder / f"core.{process.pid}"
        assert result.returncode == 0 and core.exists(), result.stdout + result.stderr
        yield Dumped(program, core, head, bias)
    finally:
        process.kill()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()


NAMES = [b"alpha", b"bravo", b"charlie", b"delta", b"echo"]


@pytest.mark.mount
def test_walk_the_list_with_cat_and_with_vmemfs_at(dumped: Dumped, mounts: Mounts) -> None:
    symbols = str(dumped.program) + (f"@{dumped.bias:#x}" if dumped.bias else "")
    mount = mounts.foreground(dumped.core, f"symbols={symbols}")
    root = mount.mountpoint
    assert os.readlink(root / "sym" / "HEAD") == "../at/" + typed.address_name(dumped.head)
    # Walk the list: NODE/next/deref/string is the name (at offset 8), NODE/deref the next
    # node, until the null pointer; NODE/next/next/long the number (at offset 16).
    script = (f"cd {root} && node=sym/HEAD/deref; "
              'while [ "$(readlink $node)" != ../0x0000000000000000 ]; do '
              "cat $node/next/deref/string $node/next/next/long; node=$node/deref; done")
    result = sh(script)
    assert result.returncode == 0, result.stderr
    expected = b"".join(name + b"\n%d\n" % (11 * (number + 1))
                        for number, name in enumerate(NAMES))
    assert result.stdout == expected
    # The same through vmemfs at, without a mount: one path per node.
    paths = []
    for number in range(len(NAMES)):
        node = "/".join(["deref"] * (number + 1))
        paths += [f"{node}/next/deref/string", f"{node}/next/next/long"]
    result = subprocess.run([VMEMFS, "at", str(dumped.core), "--symbols", symbols, "HEAD",
                             *paths], capture_output=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    # And each field of the first node as cat shows it.
    first = "deref"
    for field in typed.VALUES:
        mounted = sh(f"cat {root}/sym/HEAD/{first}/{field}")
        command = subprocess.run([VMEMFS, "at", str(dumped.core), "--symbols", symbols,
                                  "HEAD", f"{first}/{field}"], capture_output=True)
        assert mounted.returncode == command.returncode == 0
        assert mounted.stdout == command.stdout, field
    # The end of the list, both ways: the null pointer is a hole.
    last = "/".join(["deref"] * (len(NAMES) + 1))
    mounted = sh(f"cat {root}/sym/HEAD/{last}/string")
    assert mounted.returncode == 1 and b"Input/output error" in mounted.stderr
    command = subprocess.run([VMEMFS, "at", str(dumped.core), "--symbols", symbols, "HEAD",
                              f"{last}/string"], capture_output=True, text=True)
    assert command.returncode == EXIT_HOLE
    assert command.stderr == "vmemfs: error: string at 0x0: address 0x0 is not mapped\n"


@pytest.mark.mount
def test_big_endian_powerpc_words_read_both_ways(tmp_path: Path, mounts: Mounts) -> None:
    try:
        elf = build_words("powerpc", tmp_path)
    except ToolMissing as missing:
        pytest.skip(str(missing))
    mount = mounts.foreground(elf)
    at = mount.path("at", hex(DATA_ADDRESS))
    endian = mount.path(".ctl", "endian")
    assert (endian.read_text(), mount.path(".ctl", "wordsize").read_text()) == ("big\n", "32\n")

    def values() -> list[bytes]:
        return [(at / "uint32").read_bytes(), (at / "next" / "int32").read_bytes(),
                (at / "next" / "next" / "pointer").read_bytes(),
                (at / "long").read_bytes(), (at / "uint16").read_bytes(),
                (at / "next" / "next" / "next" / "next" / "uint32").read_bytes()]

    # As the assembler wrote them (.long 0x11223344, -2, target, 0, 0xdeadbeef).
    big = [b"%d\n" % 0x11223344, b"-2\n", b"0x%08x\n" % (DATA_ADDRESS + 0x10),
           b"%d\n" % 0x11223344, b"%d\n" % 0x1122, b"%d\n" % 0xDEADBEEF]
    assert values() == big
    assert (at / "next" / "next" / "deref" / "uint32").read_bytes() == b"%d\n" % 0xDEADBEEF
    assert (at / "next" / "next" / "deref" / "next" / "string").read_bytes() == \
        b"vmemfs_word\n"
    endian.write_text("little\n")
    swapped_pointer = int.from_bytes((DATA_ADDRESS + 0x10).to_bytes(4, "big"), "little")
    little = [b"%d\n" % 0x44332211, b"%d\n" % struct.unpack("<i", b"\xff\xff\xff\xfe")[0],
              b"0x%08x\n" % swapped_pointer, b"%d\n" % 0x44332211, b"%d\n" % 0x2211,
              b"%d\n" % 0xEFBEADDE]
    assert values() == little
    assert os.readlink(at / "next" / "next" / "deref") == f"../0x{swapped_pointer:016x}"
    result = sh(f"cat {at}/next/next/deref/uint32")     # 0x10000002: a hole now
    assert result.returncode == 1 and b"Input/output error" in result.stderr
    # vmemfs at reads the same, both ways.
    for order, expected in (("big", big), ("little", little)):
        command = subprocess.run([VMEMFS, "at", str(elf), hex(DATA_ADDRESS), "uint32",
                                  "next/int32", "next/next/pointer", "--endian", order],
                                 capture_output=True)
        assert command.returncode == 0, command.stderr
        assert command.stdout == b"".join(expected[:3])
