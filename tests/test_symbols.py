"""Symbol tables: System.map/kallsyms text and ELF symbol tables, checked against naive
reference parsers, ``nm`` of the GNU binutils (native and PowerPC), and a running PIE.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from artifacts.build import DATA_ADDRESS, TEXT_ADDRESS, ToolMissing
from artifacts.build_symbols import PPC_VARIANTS, build_c_symbols, build_ppc_symbols
from artifacts.craft_symbols import (
    SHN_ABS,
    SHN_COMMON,
    SHN_UNDEF,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    STT_TLS,
    CraftedElf,
    Symbol,
    build_symbol_elf,
)

from vmemfs import MemoryMap
from vmemfs.errors import FormatError
from vmemfs.formats.process import open_process
from vmemfs.formats.symbols import (
    SymbolNotFoundError,
    SymbolTable,
    file_names,
    kernel_offset,
    load_symbols,
    parse_symbols_option,
)

MARKER = b"vmemfs-symbols-marker: fedcba9876543210"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def naive_text(text: str) -> dict[str, int]:
    """Reference: the first address of each name, from ``ADDRESS TYPE NAME [MODULE]``."""
    table: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if fields:
            table.setdefault(fields[2], int(fields[0], 16))
    return table


# ------------------------------------------------------------------ text


def generated_map(rng: random.Random, count: int, digits: int) -> tuple[str, int]:
    """A System.map-like text: sorted addresses, duplicates, modules, blank lines."""
    lines = []
    address = rng.randrange(1 << (4 * digits - 1))
    names: list[str] = []
    for number in range(count):
        address = min(address + rng.randrange(0, 64), (1 << (4 * digits)) - 1)
        if names and rng.random() < 0.05:
            name = rng.choice(names)             # a duplicate (a static in two files)
        else:
            name = f"{rng.choice(['', '_', '__'])}sym{number}_{rng.randrange(1 << 20):x}"
            names.append(name)
        line = f"{address:0{digits}x} {rng.choice('TtDdBbRrWwAaVvU?')} {name}"
        if rng.random() < 0.1:
            line += f"\t[mod{rng.randrange(5)}]"
        lines.append(line)
        if rng.random() < 0.02:
            lines.append(rng.choice(["", "   ", "\t"]))
    return "\n".join(lines) + rng.choice(["\n", ""]), count - len(names)


@pytest.mark.parametrize("seed", range(6))
def test_generated_system_map_matches_the_naive_reader(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    digits = 8 if seed % 2 else 16
    text, duplicates = generated_map(rng, 3000, digits)
    path = tmp_path / "System.map"
    path.write_text(text)
    table = load_symbols(path)
    assert dict(table) == naive_text(text)
    assert list(table) == list(naive_text(text))           # file order
    assert table.duplicates == duplicates
    assert table.source == str(path) and table.bias == 0
    biased = load_symbols(path, bias=0x1000)
    assert dict(biased) == {name: address + 0x1000 for name, address in table.items()}
    assert biased.bias == 0x1000
    assert dict(table.rebased(0x1000)) == dict(biased)


def test_kallsyms_of_this_machine(tmp_path: Path) -> None:
    try:
        text = Path("/proc/kallsyms").read_text()
    except OSError as error:
        pytest.skip(f"/proc/kallsyms: {error.strerror}")
    if not any(int(line.split()[0], 16) for line in text.splitlines()[:100]):
        pytest.skip("/proc/kallsyms hides its addresses from this user (kptr_restrict)")
    copy = tmp_path / "kallsyms"
    copy.write_text(text)
    table = load_symbols(copy)
    assert dict(table) == naive_text(text)
    assert "_text" in table and table["_text"] >= 1 << 63


def test_crlf_and_surrounding_blanks(tmp_path: Path) -> None:
    path = tmp_path / "map"
    path.write_bytes(b"  c0001000 T first\r\n\r\nc0001004\tt\tsecond\t[mod] \r\n")
    assert dict(load_symbols(path)) == {"first": 0xC0001000, "second": 0xC0001004}


@pytest.mark.parametrize("line", [
    "ffffffff81000000 T",                       # no name
    "ffffffff81000000",                         # address only
    "0xffffffff81000000 T _text",               # a 0x prefix is not System.map's
    "ffffffff8100000g T _text",                 # not hexadecimal
    "1ffffffff81000000 T _text",                # 17 digits
    "-1 T _text",
    "ffffffff81000000 TT _text",                # a type of two characters
    "ffffffff81000000 T _text extra",           # a fourth field that is no [module]
    "ffffffff81000000 T _text [mod] extra",
    "ffff_ffff T _text",
])
def test_malformed_line_is_one_line_error(tmp_path: Path, line: str) -> None:
    path = tmp_path / "System.map"
    good = "ffffffff81000000 T _stext\n\n"
    path.write_text(good + line + "\nffffffff81000010 T after\n")
    with pytest.raises(FormatError) as caught:
        load_symbols(path)
    message = str(caught.value)
    assert message == (f"{path}: line 3 at offset {len(good):#x}: not 'ADDRESS TYPE NAME "
                       f"[MODULE]': {line!r}")


def test_empty_and_hidden_tables_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.map"
    empty.write_text("\n  \n")
    with pytest.raises(FormatError, match=r"empty\.map: no symbols"):
        load_symbols(empty)
    hidden = tmp_path / "kallsyms"
    hidden.write_text("0000000000000000 T _text\n0000000000000000 t foo\t[ext4]\n")
    with pytest.raises(FormatError, match=r"every address is 0 .*kptr_restrict"):
        load_symbols(hidden)
    single = tmp_path / "one.map"
    single.write_text("00000000 A zero\n")
    assert dict(load_symbols(single)) == {"zero": 0}


def test_bias_out_of_range_names_the_symbol(tmp_path: Path) -> None:
    path = tmp_path / "System.map"
    path.write_text("ffffffff81000000 T _text\nffffffffff600000 T high\n00001000 t low\n")
    with pytest.raises(FormatError, match=r"symbol 'high' at 0xffffffffff600000 with bias "
                       r"0xa00000 is outside \[0, 2\*\*64\)"):
        load_symbols(path, bias=0xA00000)
    with pytest.raises(FormatError, match="symbol 'low' at 0x1000 with bias -0x2000"):
        load_symbols(path).rebased(-0x2000)
    assert load_symbols(path, bias=0x9FFFFF)["high"] == 0xFFFFFFFFFFFFFFFF
    assert load_symbols(path).rebased(-0x1000)["low"] == 0


def test_lookup_errors_are_one_line_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "System.map"
    path.write_text("ffffffff82a0c940 D init_task\nffffffff81000000 T _text\n")
    table = load_symbols(path)
    assert table.lookup("init_task") == 0xFFFFFFFF82A0C940
    with pytest.raises(KeyError) as caught:
        table.lookup("INIT_TASK")
    assert str(caught.value) == (f"no symbol 'INIT_TASK' in {path} (2 symbols); did you "
                                 "mean 'init_task'?")
    with pytest.raises(SymbolNotFoundError, match="did you mean '_text'"):
        table["text"]
    with pytest.raises(SymbolNotFoundError) as caught:
        table.lookup("jiffies")
    assert str(caught.value) == f"no symbol 'jiffies' in {path} (2 symbols)"
    assert table.get("jiffies") is None and "jiffies" not in table
    assert len(table) == 2 and isinstance(table, SymbolTable)


# ------------------------------------------------------------------ options, KASLR, names


@pytest.mark.parametrize(("text", "expected"), [
    ("System.map", ("System.map", 0)),
    ("/boot/System.map-6.1", ("/boot/System.map-6.1", 0)),
    ("app@0x555555554000", ("app", 0x555555554000)),
    ("lib.so@4096", ("lib.so", 4096)),
    ("dir@v2/lib.so@0", ("dir@v2/lib.so", 0)),
    ("app@0xffffffffffffffff", ("app", 2**64 - 1)),
])
def test_parse_symbols_option(text: str, expected: tuple[str, int]) -> None:
    assert parse_symbols_option(text) == expected


@pytest.mark.parametrize("text", ["", "@0x1000", "app@", "app@0x", "app@-1",
                                  "app@0x10000000000000000", "dir@v2/lib.so"])
def test_parse_symbols_option_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="symbols") as caught:
        parse_symbols_option(text)
    assert "\n" not in str(caught.value)


def test_kernel_offset() -> None:
    info = b"OSRELEASE=6.1.0\nPAGESIZE=4096\nKERNELOFFSET=1a000000\nNUMBER(phys_base)=0\n"
    assert kernel_offset(info) == 0x1A000000
    assert kernel_offset(b"OSRELEASE=6.1.0\nPAGESIZE=4096\n") == 0
    assert kernel_offset(b"") == 0
    assert kernel_offset(b"KERNELOFFSET=0\n") == 0
    assert kernel_offset(b"SYMBOL(KERNELOFFSET=1)=2\nKERNELOFFSET=0x200000") == 0x200000
    with pytest.raises(FormatError, match="KERNELOFFSET=zz is not a hexadecimal"):
        kernel_offset(b"KERNELOFFSET=zz\n")
    with pytest.raises(FormatError):
        kernel_offset(b"KERNELOFFSET=\n")


def test_kaslr_offset_applies_to_a_system_map(tmp_path: Path) -> None:
    path = tmp_path / "System.map"
    path.write_text("ffffffff81000000 T _text\nffffffff82a0c940 D init_task\n")
    offset = kernel_offset(b"KERNELOFFSET=2e000000\n")
    table = load_symbols(path).rebased(offset)
    assert table["init_task"] == 0xFFFFFFFF82A0C940 + 0x2E000000
    assert table.bias == 0x2E000000


def test_file_names_skip_what_cannot_be_a_file_name() -> None:
    table = SymbolTable({"init_task": 1, "a/b": 2, ".": 3, "..": 4, "x" * 255: 5,
                         "y" * 256: 6, "é" * 127: 7, "é" * 128: 8, "ok.isra.0": 9}, "t")
    usable, skipped = file_names(table)
    assert usable == {"init_task": 1, "x" * 255: 5, "é" * 127: 7, "ok.isra.0": 9}
    assert skipped == 5


# ------------------------------------------------------------------ crafted ELF files


KINDS = [
    # (type, bind, shndx, kept)
    (STT_FUNC, 1, 1, True), (STT_OBJECT, STB_LOCAL, 2, True), (STT_NOTYPE, STB_WEAK, 1, True),
    (STT_OBJECT, 1, SHN_ABS, True), (STT_FUNC, 1, SHN_UNDEF, False),
    (STT_OBJECT, 1, SHN_COMMON, False), (STT_SECTION, STB_LOCAL, 1, False),
    (STT_FILE, STB_LOCAL, SHN_ABS, False), (STT_TLS, 1, 3, False),
]


def random_symbols(rng: random.Random, count: int, wordsize: int) -> list[Symbol]:
    symbols = []
    for number in range(count):
        kind, bind, shndx, _ = rng.choice(KINDS)
        name = b"" if rng.random() < 0.03 else (
            f"s{rng.randrange(count)}" if rng.random() < 0.1 else f"sym_{number}").encode()
        symbols.append(Symbol(name, rng.randrange(1 << wordsize), kind, bind, shndx))
    return symbols


def naive_elf(*tables: list[Symbol]) -> dict[str, int]:
    """Reference: kept symbols (see KINDS), the first address of each name."""
    kept = {(kind, shndx) for kind, _, shndx, keep in KINDS if keep}
    result: dict[str, int] = {}
    for table in tables:
        for symbol in table:
            if symbol.name and (symbol.type, symbol.shndx) in kept:
                result.setdefault(symbol.name.decode(), symbol.value)
    return result


@pytest.mark.parametrize("elfclass", [32, 64])
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("seed", range(3))
def test_crafted_elf_matches_the_naive_reader(tmp_path: Path, elfclass: int, endian: str,
                                              seed: int) -> None:
    rng = random.Random(seed)
    symtab = random_symbols(rng, 500, elfclass)
    dynsym = random_symbols(rng, 100, elfclass) if seed else None
    crafted = build_symbol_elf(symtab, dynsym, elfclass=elfclass, endian=endian,
                               many_sections=seed == 2)
    path = tmp_path / "crafted.elf"
    path.write_bytes(crafted.data)
    table = load_symbols(path)
    expected = naive_elf(symtab, dynsym or [])
    assert dict(table) == expected and list(table) == list(expected)


def corrupt(crafted: CraftedElf, offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(crafted.data)
    order = "<" if crafted.endian == "little" else ">"
    struct.pack_into(order + fmt, data, offset, value)
    return bytes(data)


def crafted_64() -> CraftedElf:
    return build_symbol_elf([Symbol(b"alpha", 0x1000), Symbol(b"beta", 0x2000)])


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: corrupt(c, 40, "Q", 0),
     r"ELF header at offset 0x0: e_shoff is 0 \(no section headers\), so there is no "
     "symbol table"),
    (lambda c: corrupt(c, 40, "Q", len(c.data) - 8),
     r"section header table \(4 entries\) at offset 0x[0-9a-f]+: 0x100 bytes pass the end"),
    (lambda c: corrupt(c, 58, "H", 12),
     "e_shentsize 12 is smaller than a section header"),
    (lambda c: corrupt(c, c.header_offset(".symtab") + 4, "I", 1),
     r"section header table at offset 0x[0-9a-f]+: no .symtab or .dynsym section "
     r"\(stripped\?\), so no symbols"),
    (lambda c: corrupt(c, c.header_offset(".symtab") + 40, "I", 99),
     r"section header 2 at offset 0x[0-9a-f]+ \(.symtab\): sh_link 99 names no string"),
    (lambda c: corrupt(c, c.header_offset(".symtab") + 56, "Q", 8),
     r"sh_entsize 8 is smaller than a symbol \(24 bytes\)"),
    (lambda c: corrupt(c, c.header_offset(".symtab") + 24, "Q", 1 << 40),
     r": .symtab \(section 2\) at offset 0x10000000000: "
     r"0x48 bytes pass the end of the file"),
    (lambda c: corrupt(c, c.section_offsets[".symtab"] + 48, "I", 0x400),
     r".symtab symbol 2 at offset 0x[0-9a-f]+: name offset 0x400 has no NUL in the "
     r"string table \(0xc bytes\)"),
])
def test_corrupt_elf_is_one_line_error(tmp_path: Path, change: Callable[[CraftedElf], bytes],
                                       message: str) -> None:
    path = tmp_path / "bad.elf"
    path.write_bytes(change(crafted_64()))
    with pytest.raises(FormatError) as caught:
        load_symbols(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert re.search(message, text), text


def test_truncated_elf_header(tmp_path: Path) -> None:
    path = tmp_path / "short.elf"
    path.write_bytes(crafted_64().data[:30])
    with pytest.raises(FormatError, match="truncated ELF header"):
        load_symbols(path)


# ------------------------------------------------------------------ real tools


def nm_symbols(tool: str, path: Path, *options: str) -> dict[str, int]:
    """The first address of each defined, non-common symbol as ``nm -p`` lists them,
    without ``@VERSION`` for dynamic symbols (``nm -D`` adds them, .dynsym has none)."""
    result = subprocess.run([tool, "-p", *options, str(path)], capture_output=True,
                            text=True, check=True)
    table: dict[str, int] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] not in "Cc":
            name = fields[2].split("@")[0] if "-D" in options else fields[2]
            table.setdefault(name, int(fields[0], 16))
    return table


def tls_names(path: Path, readelf: str = "readelf") -> set[str]:
    """Names of thread-local symbols (``nm`` lists them at their TLS offsets)."""
    result = subprocess.run([need(readelf), "-sW", str(path)], capture_output=True,
                            text=True, check=True)
    return {fields[7] for fields in map(str.split, result.stdout.splitlines())
            if len(fields) >= 8 and fields[3] == "TLS"}


@pytest.fixture(scope="module")
def c_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("symbols")
    try:
        return {kind: build_c_symbols(folder, kind)
                for kind in ("static-address", "pie", "stripped-pie")}
    except ToolMissing as missing:
        pytest.skip(str(missing))


@pytest.mark.parametrize("kind", ["static-address", "pie"])
def test_gcc_executable_matches_nm(c_programs: dict[str, Path], kind: str) -> None:
    program = c_programs[kind]
    table = load_symbols(program)
    expected = nm_symbols(need("nm"), program)
    assert "symbols_tls" in expected and tls_names(program) == {"symbols_tls"}
    del expected["symbols_tls"]
    assert {name: table[name] for name in expected} == expected
    # What .symtab does not hold comes from .dynsym (unversioned names there).
    assert set(table) - set(expected) <= set(nm_symbols("nm", program, "-D"))
    assert {"main", "symbols_marker", "symbols_words", "symbols_static_counter",
            "symbols_local_function", "symbols_weak", "symbols_bss"} <= set(table)
    assert "symbols_tls" not in table and "printf" not in table


def test_stripped_pie_has_its_dynamic_symbols(c_programs: dict[str, Path]) -> None:
    program = c_programs["stripped-pie"]
    sections = subprocess.run([need("readelf"), "-SW", str(program)], capture_output=True,
                              text=True, check=True).stdout
    assert " .dynsym " in sections and " .symtab " not in sections
    table = load_symbols(program)
    expected = nm_symbols("nm", program, "-D")
    del expected["symbols_tls"]
    assert dict(table) == expected
    assert "symbols_local_function" not in table and "main" in table


def test_static_address_program_symbols_are_its_run_time_addresses(
        c_programs: dict[str, Path]) -> None:
    table = load_symbols(c_programs["static-address"])
    with running(c_programs["static-address"]) as (pid, printed):
        assert printed == [table["symbols_marker"], table["symbols_words"], table["main"]]
        m = MemoryMap()
        open_process(pid).add_to(m)
        assert m.get_bytes(table["symbols_marker"], len(MARKER)) == MARKER


@pytest.mark.parametrize("variant", list(PPC_VARIANTS))
def test_powerpc_objects_and_executables_match_nm(tmp_path: Path, variant: str) -> None:
    nm = need("powerpc-linux-gnu-nm")
    try:
        obj, program = build_ppc_symbols(tmp_path, variant)
    except ToolMissing as missing:
        pytest.skip(str(missing))
    header = obj.read_bytes()[:6]
    assert header[4] == (1 if variant.startswith("ppc32") else 2)
    assert header[5] == (2 if variant.endswith("-be") else 1)
    table = load_symbols(obj)
    assert dict(table) == nm_symbols(nm, obj)
    # The object's common symbol (SHN_COMMON: its value is an alignment) is left out.
    assert dict(table) == {"helper": 8, "local_word": 8, "_start": 0, "weak_entry": 12,
                           "ppc_table": 0, "ppc_absolute": 0x12345678}
    if program is not None:
        linked = load_symbols(program)
        assert dict(linked) == nm_symbols(nm, program)
        assert linked["_start"] == TEXT_ADDRESS and linked["ppc_table"] == DATA_ADDRESS
        assert linked["helper"] == TEXT_ADDRESS + 8 and "ppc_common" in linked


# ------------------------------------------------------------------ a running PIE


class running:
    """Run a ``symbols.c`` program until the block ends: ``(pid, printed addresses)``."""

    def __init__(self, program: Path) -> None:
        self.process = subprocess.Popen([str(program)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> tuple[int, list[int]]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the program ended early"
        return self.process.pid, [int(text, 16) for text in line.split()]

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0
        self.process.stdout.close()


def load_base(pid: int, program: Path) -> int:
    """Where ``program`` is loaded: its mapping with file offset 0 in ``/proc/PID/maps``."""
    real = os.path.realpath(program)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == real and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16)
    raise AssertionError(f"{real} is not mapped at offset 0")


@pytest.mark.parametrize("kind", ["pie", "stripped-pie"])
def test_symbols_of_a_running_pie_at_its_base(c_programs: dict[str, Path],
                                              kind: str) -> None:
    program = c_programs[kind]
    with running(program) as (pid, printed):
        dump = open_process(pid)
        m = MemoryMap()
        dump.add_to(m)
        # The base as .ctl/maps shows it: the program's mapping at offset 0.
        shown = [mapping for mapping in m.mappings
                 if mapping.source == os.path.realpath(program) and mapping.offset == 0]
        assert len(shown) == 1
        base = shown[0].address
        assert base == load_base(pid, program) and base % 4096 == 0
        assert base != 0
        path, bias = parse_symbols_option(f"{program}@{base:#x}")
        table = load_symbols(path, bias=bias)
        assert printed == [table["symbols_marker"], table["symbols_words"], table["main"]]
        assert m.get_bytes(table["symbols_marker"], len(MARKER)) == MARKER
        assert m.get_int64(table["symbols_words"]) == 0x0102030405060708
        assert m.get_c_long(table["symbols_words"] + 8) == -3
        unbiased = load_symbols(program)
        assert all(table[name] - unbiased[name] == base for name in unbiased)


def test_kernel_symbols_follow_kaslr_through_open(tmp_path: Path) -> None:
    from dumpwriters import write_kdump

    import vmemfs
    from vmemfs.formats.symbols import kernel_relocation

    offset = 0x34000000
    physical = vmemfs.MemoryMap.of_bytes(b"banner\0" + bytes(4089), 0x1000)
    info = (b"OSRELEASE=6.1.0\nSYMBOL(_stext)=%x\nKERNELOFFSET=%x\n"
            % (0xFFFFFFFF81000000 + offset, offset))
    dump = tmp_path / "guest.kdump"
    write_kdump(dump, physical, vmcoreinfo=info)
    system_map = tmp_path / "System.map"
    system_map.write_text("ffffffff81000000 T _stext\nffffffff82000000 D linux_banner\n")
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(f"{0xFFFFFFFF81000000 + offset:016x} T _stext\n")
    m = vmemfs.open(dump, symbols=system_map)
    assert m.symbols is not None
    assert m.symbols["linux_banner"] == 0xFFFFFFFF82000000 + offset     # link-time, moved
    assert vmemfs.open(dump, symbols=kallsyms).symbols["_stext"] == \
        0xFFFFFFFF81000000 + offset                                      # already relocated
    assert vmemfs.open(dump, symbols=f"{system_map}@0").symbols["_stext"] == \
        0xFFFFFFFF81000000                                               # an explicit bias
    assert kernel_relocation({}, b"KERNELOFFSET=1000\n") == 0x1000
    assert kernel_relocation({"_stext": 5}, b"") == 0
