"""Build small ELF files with symbol tables byte by byte with ``struct``, for the symbol
tests.

Independent of :mod:`vmemfs.formats`: the layouts are written out here again from the
ELF specification, so that a mistake in the reader is not mirrored by the builder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_DYNSYM = 11
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_TLS = 0, 1, 2, 3, 4, 6
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2


@dataclass(frozen=True)
class Symbol:
    """One symbol table entry."""

    name: bytes
    value: int
    type: int = STT_FUNC
    bind: int = STB_GLOBAL
    shndx: int = 1


@dataclass
class CraftedElf:
    """The bytes of a crafted file, and where its parts lie (to corrupt them in tests)."""

    data: bytearray
    elfclass: int
    endian: str
    shoff: int
    shentsize: int
    sections: dict[str, int] = field(default_factory=dict)
    """Section name to its index."""
    section_offsets: dict[str, int] = field(default_factory=dict)
    """Section name to the file offset of its contents."""

    def header_offset(self, section: str) -> int:
        """The file offset of a section's header."""
        return self.shoff + self.sections[section] * self.shentsize


def _strings(names: list[bytes]) -> tuple[bytes, list[int]]:
    table = bytearray(b"\0")
    offsets = []
    for name in names:
        if name:
            offsets.append(len(table))
            table += name + b"\0"
        else:
            offsets.append(0)
    return bytes(table), offsets


def build_symbol_elf(symtab: list[Symbol], dynsym: list[Symbol] | None = None, *,
                     elfclass: int = 64, endian: str = "little",
                     many_sections: bool = False) -> CraftedElf:
    """An ``ET_REL``-style file without program headers: ``.strtab``, ``.symtab``, and
    (when ``dynsym`` is given) ``.dynstr``, ``.dynsym``, then ``.shstrtab``.

    Each table starts with the null symbol.  ``many_sections`` writes ``e_shnum = 0``
    and the count in section header 0's ``sh_size`` (as for 0xff00 or more sections).
    """
    order = "<" if endian == "little" else ">"
    is64 = elfclass == 64
    ehsize, shentsize = (64, 64) if is64 else (52, 40)
    sym_format = order + ("IBBHQQ" if is64 else "IIIBBH")

    def pack_symbol(name_offset: int, symbol: Symbol) -> bytes:
        info = (symbol.bind << 4) | symbol.type
        if is64:
            return struct.pack(sym_format, name_offset, info, 0, symbol.shndx, symbol.value, 0)
        return struct.pack(sym_format, name_offset, symbol.value, 0, info, 0, symbol.shndx)

    # (section name, sh_type, contents, sh_link); section number = list index + 1.
    contents: list[tuple[str, int, bytes, int]] = []

    def add_table(strings_name: str, table_name: str, kind: int,
                  symbols: list[Symbol]) -> None:
        strings, offsets = _strings([symbol.name for symbol in symbols])
        rows = pack_symbol(0, Symbol(b"", 0, STT_NOTYPE, STB_LOCAL, SHN_UNDEF))
        rows += b"".join(pack_symbol(o, s) for o, s in zip(offsets, symbols, strict=True))
        contents.append((strings_name, SHT_STRTAB, strings, 0))
        contents.append((table_name, kind, rows, len(contents)))

    add_table(".strtab", ".symtab", SHT_SYMTAB, symtab)
    if dynsym is not None:
        add_table(".dynstr", ".dynsym", SHT_DYNSYM, dynsym)
    names = [name for name, _, _, _ in contents] + [".shstrtab"]
    shstrtab, name_offsets = _strings([name.encode() for name in names])
    contents.append((".shstrtab", SHT_STRTAB, shstrtab, 0))

    data = bytearray(ehsize)
    placed = []
    for name, kind, blob, link in contents:
        while len(data) % 8:
            data.append(0)
        placed.append((name, kind, len(data), len(blob), link))
        data += blob
    while len(data) % 8:
        data.append(0)
    shoff = len(data)
    count = len(contents) + 1
    sym_size = 24 if is64 else 16
    header_format = order + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
    data += struct.pack(header_format, 0, 0, 0, 0, 0, count if many_sections else 0,
                        0, 0, 0, 0)
    crafted = CraftedElf(data, elfclass, endian, shoff, shentsize)
    for number, (name, kind, offset, size, link) in enumerate(placed, start=1):
        entsize = sym_size if kind in (SHT_SYMTAB, SHT_DYNSYM) else 0
        data += struct.pack(header_format, name_offsets[number - 1], kind, 0, 0, offset,
                            size, link, 0, 8 if entsize else 1,
                            entsize)
        crafted.sections[name] = number
        crafted.section_offsets[name] = offset
    ident = (b"\x7fELF" + bytes([2 if is64 else 1, 1 if endian == "little" else 2, 1])
             ).ljust(16, b"\0")
    header = struct.pack(order + ("16sHHIQQQIHHHHHH" if is64 else "16sHHIIIIIHHHHHH"),
                         ident, 1, 62 if is64 else 20, 1, 0, 0, shoff, 0, ehsize, 0, 0,
                         shentsize, 0 if many_sections else count, count - 1)
    data[:ehsize] = header
    return crafted
