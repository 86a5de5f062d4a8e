"""Symbol tables: names to addresses, from ``System.map``/``kallsyms`` text or an ELF file
(SPEC §3.9).

Two inputs, told apart by content (the ELF magic):

* **text**, as in ``System.map`` and ``/proc/kallsyms``: one symbol per line,
  ``ADDRESS TYPE NAME [MODULE]``, where ADDRESS is 1 to 16 hexadecimal digits (8 on a
  32-bit kernel, 16 on a 64-bit one), TYPE one character (``T``, ``t``, ``D``, ...) and
  MODULE, where present, a bracketed word (``[ext4]``).  Blank lines are skipped; any
  other line that does not fit is a one-line :class:`~vmemfs.errors.FormatError` naming
  the file, the line number and its offset.
* **ELF** (``vmlinux``, an executable, a library, an object; ELF32 and ELF64, either byte
  order): the symbols of every ``SHT_SYMTAB`` section (``.symtab``) and then of every
  ``SHT_DYNSYM`` section (``.dynsym``), located through the section headers.  Skipped:
  undefined symbols (``SHN_UNDEF``), common symbols of objects (``SHN_COMMON``, whose value
  is an alignment), section and file symbols (``STT_SECTION``, ``STT_FILE``), thread-local
  ones (``STT_TLS``, whose value is an offset in the TLS block, not an address) and
  nameless ones.  Each symbol's ``st_value`` is its address.

A name given more than once keeps its **first** address, in file order (for text) or in
``.symtab``-then-``.dynsym`` order (for ELF): ``System.map`` is sorted by address, so that
is the lowest one; :attr:`SymbolTable.duplicates` counts the others.

Addresses are the file's own: link addresses for ``System.map``, ``vmlinux`` and ELF
files, run-time ones for ``/proc/kallsyms``.  A *bias* is added to every address: the load
base of a position-independent executable or library (``symbols=FILE@ADDRESS``), or the
kernel's KASLR offset (:func:`kernel_offset` of a dump's VMCOREINFO; never for a
``kallsyms`` taken from the running kernel, whose addresses already include it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping

import numpy as np

from vmemfs import values
from vmemfs.errors import FormatError
from vmemfs.formats.elf import ELF_MAGIC, ELFCLASS32, SHDR_SIZE, read_header

ADDRESS_LIMIT = 1 << 64

SHT_SYMTAB = 2
SHT_DYNSYM = 11
SHN_UNDEF = 0
SHN_COMMON = 0xFFF2
STT_SECTION = 3
STT_FILE = 4
STT_TLS = 6
NAME_MAX = 255
"""The longest file name (in bytes) a ``sym/`` entry can have."""

SYM_SIZE = {ELFCLASS32: 16, 2: 24}

_SHDR_FIELDS = {
    # name: (offset in ELF32, offset in ELF64, size in ELF32, size in ELF64)
    "sh_name": (0, 0, 4, 4),
    "sh_type": (4, 4, 4, 4),
    "sh_offset": (16, 24, 4, 8),
    "sh_size": (20, 32, 4, 8),
    "sh_link": (24, 40, 4, 4),
    "sh_entsize": (36, 56, 4, 8),
}
_SYM_FIELDS = {
    "st_name": (0, 0, 4, 4),
    "st_value": (4, 8, 4, 8),
    "st_info": (12, 4, 1, 1),
    "st_shndx": (14, 6, 2, 2),
}

# One symbol line: ADDRESS TYPE NAME [MODULE], white space around and between.
_ONE_LINE = re.compile(rb"\s*[0-9a-fA-F]{1,16}\s+\S\s+\S+(?:\s+\[\S*\])?\s*")
_HEX_DIGITS = re.compile(rb"[0-9a-fA-F]*")
_KERNELOFFSET = re.compile(rb"^KERNELOFFSET=(\S*)", re.M)
_HEX = re.compile(rb"(?:0[xX])?[0-9a-fA-F]{1,16}")


class SymbolNotFoundError(KeyError):
    """A name that is not in a :class:`SymbolTable`; ``str()`` is the one-line message."""

    def __str__(self) -> str:
        return str(self.args[0])


class SymbolTable(Mapping[str, int]):
    """A read-only mapping of symbol names to addresses (bias included).

    ``source`` is the file it was read from, ``bias`` what was added to every address,
    ``duplicates`` how many later definitions of an already seen name were dropped.
    Iteration is in file order (first definitions).

    >>> table = SymbolTable({"init_task": 0xffffffff82a0c940}, "System.map")
    >>> hex(table["init_task"]), "jiffies" in table
    ('0xffffffff82a0c940', False)
    """

    def __init__(self, addresses: dict[str, int], source: str, *, bias: int = 0,
                 duplicates: int = 0) -> None:
        self._addresses = addresses
        self.source = source
        self.bias = bias
        self.duplicates = duplicates

    def __getitem__(self, name: str) -> int:
        """The address of ``name``.  Runtime complexity: ``O(1)``.

        :raises SymbolNotFoundError: (a ``KeyError``) naming the table, see :meth:`lookup`.
        """
        try:
            return self._addresses[name]
        except KeyError:
            raise SymbolNotFoundError(self._missing(name)) from None

    def lookup(self, name: str) -> int:
        """The address of ``name``.

        :raises SymbolNotFoundError: (a ``KeyError``) with one line naming the symbol and
            the table, and a close match where there is one (the same name in another
            case, or with leading underscores added or removed).
        """
        return self[name]

    def _missing(self, name: str) -> str:
        message = f"no symbol {name!r} in {self.source} ({len(self)} symbols)"
        key = name.lstrip("_").lower()
        if key:
            for known in self._addresses:
                if known.lstrip("_").lower() == key:
                    return f"{message}; did you mean {known!r}?"
        return message

    def __iter__(self) -> Iterator[str]:
        return iter(self._addresses)

    def __len__(self) -> int:
        return len(self._addresses)

    def __contains__(self, name: object) -> bool:
        return name in self._addresses

    def rebased(self, bias: int) -> SymbolTable:
        """The same symbols with ``bias`` more added to every address.

        :raises FormatError: if an address would leave ``[0, 2**64)``.
        """
        if bias == 0:
            return self
        names = list(self._addresses)
        values = _apply_bias(self.source, names, list(self._addresses.values()), bias)
        return SymbolTable(dict(zip(names, values, strict=True)), self.source,
                           bias=self.bias + bias, duplicates=self.duplicates)

    def __repr__(self) -> str:
        return f"<SymbolTable {self.source}: {len(self)} symbols, bias {self.bias:#x}>"


def load_symbols(path: str | os.PathLike[str], *, bias: int = 0) -> SymbolTable:
    """Read the symbol table in ``path`` (text or ELF, by content; see the module doc)
    and add ``bias`` to every address.

    Runtime complexity: ``O(symbols)``; a 150,000-line ``kallsyms`` takes about 0.1 s.

    :raises FormatError: one line naming the file: a malformed text line (with its
        number and offset), a truncated or corrupt ELF, an ELF without a symbol table,
        a file without symbols, a ``kallsyms`` whose addresses are all 0 (read without
        the right to see them), or an address that ``bias`` moves out of
        ``[0, 2**64)``.
    :raises OSError: if the file cannot be read.
    """
    name = os.fsdecode(path)
    with open(path, "rb") as stream:
        head = stream.read(len(ELF_MAGIC))
        if head == ELF_MAGIC:
            names, values = _elf_symbols(stream.fileno(), name)
        else:
            names, values = _text_symbols(head + stream.read(), name)
    if bias:
        values = _apply_bias(name, names, values, bias)
    addresses: dict[str, int] = {}
    for symbol, value in zip(names, values, strict=True):
        if symbol not in addresses:
            addresses[symbol] = value
    return SymbolTable(addresses, name, bias=bias, duplicates=len(names) - len(addresses))


def _apply_bias(name: str, names: list[str], values: list[int], bias: int) -> list[int]:
    if not values:
        return values
    array = np.array(values, dtype=np.uint64)
    low, high = int(array.min()), int(array.max())
    if high + bias >= ADDRESS_LIMIT or low + bias < 0:
        bad = values.index(high if high + bias >= ADDRESS_LIMIT else low)
        raise FormatError(f"{name}: symbol {names[bad]!r} at {values[bad]:#x} with bias "
                          f"{bias:#x} is outside [0, 2**64)")
    if bias > 0:
        return (array + np.uint64(bias)).tolist()  # type: ignore[no-any-return]
    return (array - np.uint64(-bias)).tolist()  # type: ignore[no-any-return]


# -------------------------------------------------------------------- text


def _text_symbols(data: bytes, name: str) -> tuple[list[str], list[int]]:
    """Names and addresses of a ``System.map``/``kallsyms`` text, in line order.

    Vectorised over the lines: one ``split`` per line, then the addresses of all lines
    checked with one regular expression over their concatenation.
    """
    rows = [fields for fields in map(bytes.split, data.split(b"\n")) if fields]
    widths = set(map(len, rows))
    if not widths <= {3, 4} or (4 in widths and not all(
            row[3][:1] == b"[" and row[3][-1:] == b"]" for row in rows if len(row) == 4)):
        _raise_bad_line(data, name)
    addresses = [row[0] for row in rows]
    types = [row[1] for row in rows]
    if (len(b"".join(types)) != len(types) or max(map(len, addresses), default=0) > 16
            or _HEX_DIGITS.fullmatch(b"".join(addresses)) is None):
        _raise_bad_line(data, name)
    if not rows:
        raise FormatError(f"{name}: no symbols (an empty file)")
    values = [int(address, 16) for address in addresses]
    if len(values) > 1 and not any(values):
        raise FormatError(f"{name}: every address is 0 (kallsyms read without the right to "
                          "see addresses: read it as root, or lower kernel.kptr_restrict)")
    names = [row[2].decode("utf-8", "surrogateescape") for row in rows]
    return names, values


def _raise_bad_line(data: bytes, name: str) -> None:
    offset = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip() and _ONE_LINE.fullmatch(line) is None:
            shown = line[:80].decode("utf-8", "replace")
            raise FormatError(f"{name}: line {number} at offset {offset:#x}: not "
                              f"'ADDRESS TYPE NAME [MODULE]': {shown!r}")
        offset += len(line) + 1
    raise AssertionError("a malformed line was counted but not found")


# -------------------------------------------------------------------- ELF


def _dtype(fields: dict[str, tuple[int, int, int, int]], elfclass: int, endian: str,
           itemsize: int) -> np.dtype:
    order = "<" if endian == "little" else ">"
    column = 0 if elfclass == ELFCLASS32 else 1
    return np.dtype({
        "names": list(fields),
        "formats": [f"{order}u{spec[column + 2]}" for spec in fields.values()],
        "offsets": [spec[column] for spec in fields.values()],
        "itemsize": itemsize,
    })


def _read_exact(fd: int, size: int, offset: int, name: str, what: str,
                file_size: int) -> bytes:
    if offset > file_size or size > file_size - offset:
        raise FormatError(f"{name}: {what} at offset {offset:#x}: {size:#x} bytes pass the "
                          f"end of the file ({file_size:#x})")
    parts = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise FormatError(f"{name}: {what} at offset {offset:#x}: the file shrank")
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _elf_symbols(fd: int, name: str) -> tuple[list[str], list[int]]:
    """Names and addresses of the ELF open at ``fd`` (``.symtab`` then ``.dynsym``)."""
    file_size = os.lseek(fd, 0, os.SEEK_END)
    header = read_header(fd, name, file_size)
    elfclass, endian = header.elfclass, header.endian
    shdr_size = SHDR_SIZE[elfclass]
    if header.shoff == 0:
        raise FormatError(f"{name}: ELF header at offset 0x0: e_shoff is 0 (no section "
                          "headers), so there is no symbol table")
    if header.shentsize < shdr_size:
        raise FormatError(f"{name}: ELF header at offset 0x0: e_shentsize "
                          f"{header.shentsize} is smaller than a section header "
                          f"({shdr_size} bytes)")
    shdr = _dtype(_SHDR_FIELDS, elfclass, endian, header.shentsize)
    count = header.shnum
    if count == 0:  # 0xff00 or more sections: the count is section header 0's sh_size
        first = _read_exact(fd, shdr_size, header.shoff, name, "section header 0", file_size)
        count = int(np.frombuffer(first, dtype=_dtype(_SHDR_FIELDS, elfclass, endian,
                                                      shdr_size))["sh_size"][0])
    table = np.frombuffer(_read_exact(fd, count * header.shentsize, header.shoff, name,
                                      f"section header table ({count} entries)", file_size),
                          dtype=shdr, count=count)
    types = table["sh_type"]
    order = [*np.flatnonzero(types == SHT_SYMTAB).tolist(),
             *np.flatnonzero(types == SHT_DYNSYM).tolist()]
    if not order:
        raise FormatError(f"{name}: section header table at offset {header.shoff:#x}: no "
                          ".symtab or .dynsym section (stripped?), so no symbols")
    names: list[str] = []
    values: list[int] = []
    for index in order:
        where = f"section header {index} at offset {header.shoff + index * header.shentsize:#x}"
        _section_symbols(fd, name, file_size, elfclass, endian, table, index, where,
                         names, values)
    return names, values


def _section_symbols(fd: int, name: str, file_size: int, elfclass: int, endian: str,
                     table: np.ndarray, index: int, where: str, names: list[str],
                     values: list[int]) -> None:
    """Append the kept symbols of section ``index`` (``where``: its header, for errors)."""
    section = table[index]
    kind = ".symtab" if int(section["sh_type"]) == SHT_SYMTAB else ".dynsym"
    what = f"{where} ({kind})"
    sym_size = SYM_SIZE[elfclass]
    entsize = int(section["sh_entsize"]) or sym_size
    if entsize < sym_size:
        raise FormatError(f"{name}: {what}: sh_entsize {entsize} is smaller than a symbol "
                          f"({sym_size} bytes)")
    link = int(section["sh_link"])
    if not 0 < link < len(table):
        raise FormatError(f"{name}: {what}: sh_link {link} names no string table section")
    offset = int(section["sh_offset"])
    count = int(section["sh_size"]) // entsize
    raw = _read_exact(fd, count * entsize, offset, name, f"{kind} (section {index})",
                      file_size)
    symbols = np.frombuffer(raw, dtype=_dtype(_SYM_FIELDS, elfclass, endian, entsize),
                            count=count)
    strings_section = table[link]
    strings = _read_exact(fd, int(strings_section["sh_size"]),
                          int(strings_section["sh_offset"]), name,
                          f"string table (section {link}) of {kind}", file_size)
    kinds = symbols["st_info"] & 0xF
    shndx = symbols["st_shndx"]
    keep = np.flatnonzero((shndx != SHN_UNDEF) & (shndx != SHN_COMMON)
                          & (kinds != STT_SECTION) & (kinds != STT_FILE) & (kinds != STT_TLS)
                          & (symbols["st_name"] != 0))
    starts = symbols["st_name"][keep].astype(np.int64)
    nuls = np.flatnonzero(np.frombuffer(strings, dtype=np.uint8) == 0)
    position = np.searchsorted(nuls, starts)
    bad = np.flatnonzero(position >= len(nuls))
    if len(bad):
        number = int(keep[int(bad[0])])
        raise FormatError(
            f"{name}: {kind} symbol {number} at offset {offset + number * entsize:#x}: "
            f"name offset {int(starts[int(bad[0])]):#x} has no NUL in the string table "
            f"({len(strings):#x} bytes)")
    ends = nuls[position].tolist()
    addresses = symbols["st_value"][keep].tolist()
    for start, end, address in zip(starts.tolist(), ends, addresses, strict=True):
        names.append(strings[start:end].decode("utf-8", "surrogateescape"))
        values.append(address)


# -------------------------------------------------------------------- options, KASLR


def parse_symbols_option(text: str) -> tuple[str, int]:
    """``(path, bias)`` from a ``symbols=`` value: ``FILE`` or ``FILE@ADDRESS``.

    ADDRESS is decimal or ``0x`` hexadecimal (the load base of a position-independent
    executable or library).  The last ``@`` splits, so a file whose name holds an ``@``
    is given with an explicit bias: ``lib@2.so@0``.

    >>> parse_symbols_option("System.map"), parse_symbols_option("app@0x5555555554000")
    (('System.map', 0), ('app', 1501199875784704))

    :raises ValueError: for an empty file name or an ADDRESS that is not a number below
        ``2**64`` (one line, naming ``symbols``).
    """
    path, at, address = text.rpartition("@")
    if not at:
        path, address = text, ""
    if not path:
        raise ValueError(f"symbols: {text!r} names no file")
    if not at:
        return path, 0
    try:
        return path, values.parse_address(address)
    except values.BadValue as error:
        raise ValueError(f"symbols: {error}") from None


def kernel_relocation(table: Mapping[str, int], vmcoreinfo: bytes) -> int:
    """How far a kernel's symbols must move to name the dumped kernel's addresses (KASLR).

    When VMCOREINFO has ``SYMBOL(_stext)`` (already relocated, as the kernel prints it)
    and ``table`` has ``_stext``, the difference of the two: 0 for a ``kallsyms`` of the
    dumped kernel itself, the KASLR offset for its ``System.map`` or ``vmlinux``.
    Otherwise ``KERNELOFFSET`` (0 when absent), which applies to link-time addresses.

    >>> info = b"SYMBOL(_stext)=ffffffffb5000000\\nKERNELOFFSET=34000000\\n"
    >>> hex(kernel_relocation({"_stext": 0xffffffff81000000}, info))
    '0x34000000'
    >>> kernel_relocation({"_stext": 0xffffffffb5000000}, info)
    0
    """
    match = re.search(rb"^SYMBOL\(_stext\)=([0-9a-fA-F]+)\s*$", vmcoreinfo, re.MULTILINE)
    if match is not None and "_stext" in table:
        difference = (int(match[1], 16) - table["_stext"]) % (1 << 64)
        return difference - (1 << 64) if difference >= 1 << 63 else difference
    return kernel_offset(vmcoreinfo)


def kernel_offset(vmcoreinfo: bytes) -> int:
    """The KASLR offset in a VMCOREINFO text: ``KERNELOFFSET=`` (hexadecimal), or 0.

    >>> hex(kernel_offset(b"OSRELEASE=6.1.0\\nKERNELOFFSET=1a000000\\n"))
    '0x1a000000'

    :raises FormatError: if the value is not hexadecimal.
    """
    match = _KERNELOFFSET.search(vmcoreinfo)
    if match is None:
        return 0
    value = match.group(1)
    if _HEX.fullmatch(value) is None:
        raise FormatError(f"VMCOREINFO: KERNELOFFSET={value[:40].decode('ascii', 'replace')}"
                          " is not a hexadecimal number")
    return int(value, 16)


def file_names(table: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """The symbols whose names can be file names in ``sym/``, and how many cannot.

    A name cannot be a file name when it holds a ``/`` or a NUL, is ``.`` or ``..``, or
    is longer than 255 bytes (as the file system encodes it).
    """
    usable: dict[str, int] = {}
    for symbol, address in table.items():
        if ("/" in symbol or "\0" in symbol or symbol in (".", "..")
                or len(os.fsencode(symbol)) > NAME_MAX):
            continue
        usable[symbol] = address
    return usable, len(table) - len(usable)
