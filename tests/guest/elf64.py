"""Just enough ELF64 little-endian reading and writing for the guest build: program headers
(with the ``PN_XNUM`` escape), notes, the sections of a kernel module, and a re-laid-out
copy of a core file. Independent of vmemfs, whose readers the artifacts test.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

PT_LOAD = 1
PT_NOTE = 4
PT_INTERP = 3
PN_XNUM = 0xFFFF
EHDR_SIZE = 64
PHDR_SIZE = 56
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")


@dataclass(frozen=True)
class Phdr:
    """One program header (``Elf64_Phdr``)."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


def _check_header(path: Path, header: bytes) -> None:
    if len(header) < EHDR_SIZE or header[:4] != b"\x7fELF":
        raise ValueError(f"{path}: ELF header at offset 0x0: not an ELF file")
    if header[4] != 2 or header[5] != 1:
        raise ValueError(f"{path}: ELF header at offset 0x4: not ELF64 little endian")


def read_program_headers(path: Path) -> tuple[bytes, list[Phdr]]:
    """Return the 64-byte ELF header and the program headers of ``path``, in file order.

    A count of ``PN_XNUM`` is replaced by section header 0's ``sh_info``.

    :raises ValueError: if ``path`` is not ELF64 little endian or is truncated.
    """
    with open(path, "rb") as file:
        header = file.read(EHDR_SIZE)
        _check_header(path, header)
        phoff, shoff = struct.unpack_from("<QQ", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        if phnum == PN_XNUM:
            file.seek(shoff)
            section0 = file.read(_SHDR.size)
            if len(section0) < _SHDR.size:
                raise ValueError(f"{path}: section header 0 at offset {shoff:#x}: truncated")
            phnum = _SHDR.unpack(section0)[7]
        if phentsize != PHDR_SIZE:
            raise ValueError(f"{path}: ELF header at offset 0x36: e_phentsize {phentsize}")
        file.seek(phoff)
        table = file.read(phnum * PHDR_SIZE)
    if len(table) < phnum * PHDR_SIZE:
        raise ValueError(f"{path}: program headers at offset {phoff:#x}: truncated")
    return header, [Phdr(*fields) for fields in _PHDR.iter_unpack(table)]


def notes(path: Path) -> list[tuple[str, int, bytes]]:
    """Return every note of every ``PT_NOTE`` segment of ``path`` as (name, type, desc)."""
    _, phdrs = read_program_headers(path)
    found = []
    with open(path, "rb") as file:
        for phdr in phdrs:
            if phdr.type != PT_NOTE:
                continue
            file.seek(phdr.offset)
            data = file.read(phdr.filesz)
            position = 0
            while position + 12 <= len(data):
                namesz, descsz, note_type = struct.unpack_from("<III", data, position)
                position += 12
                name = data[position:position + namesz].rstrip(b"\0").decode("ascii", "replace")
                position += (namesz + 3) & ~3
                found.append((name, note_type, data[position:position + descsz]))
                position += (descsz + 3) & ~3
    return found


def copy_range(source: int, destination: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes from ``source`` at ``offset`` to ``destination``'s position."""
    while length:
        copied = os.copy_file_range(source, destination, min(length, 1 << 30), offset)
        if copied == 0:
            raise ValueError(f"source ends before offset {offset:#x}")
        offset += copied
        length -= copied


def relayout_core(source: Path, destination: Path) -> None:
    """Write a copy of the core file ``source`` with the program headers right after the ELF
    header, then each segment's bytes in header order, and no section headers.

    The loads and notes are the same (addresses, sizes, bytes); only file offsets change.

    :raises ValueError: if ``source`` is not ELF64 little endian, is truncated, or has
        ``PN_XNUM`` program headers or more.
    """
    header, phdrs = read_program_headers(source)
    if len(phdrs) >= PN_XNUM:
        raise ValueError(f"{source}: {len(phdrs)} program headers: too many to re-lay out")
    offset = EHDR_SIZE + PHDR_SIZE * len(phdrs)
    moved = []
    for phdr in phdrs:
        moved.append(replace(phdr, offset=offset))
        offset += phdr.filesz
    new_header = bytearray(header)
    struct.pack_into("<QQ", new_header, 32, EHDR_SIZE, 0)  # e_phoff, e_shoff
    struct.pack_into("<HHHHHH", new_header, 52, EHDR_SIZE, PHDR_SIZE, len(phdrs), 0, 0, 0)
    with open(source, "rb") as src, open(destination, "wb") as dst:
        dst.write(new_header)
        for phdr in moved:
            dst.write(_PHDR.pack(phdr.type, phdr.flags, phdr.offset, phdr.vaddr, phdr.paddr,
                                 phdr.filesz, phdr.memsz, phdr.align))
        dst.flush()
        for phdr in phdrs:
            copy_range(src.fileno(), dst.fileno(), phdr.offset, phdr.filesz)


def section(image: bytes, name: str) -> bytes | None:
    """Return the bytes of the section called ``name`` in the ELF64 object ``image`` (a
    kernel module), or ``None`` if it has none.

    :raises ValueError: if ``image`` is not ELF64 little endian.
    """
    _check_header(Path("<module>"), image[:EHDR_SIZE])
    shoff = struct.unpack_from("<Q", image, 40)[0]
    shnum, shstrndx = struct.unpack_from("<HH", image, 60)
    headers = [_SHDR.unpack_from(image, shoff + index * _SHDR.size) for index in range(shnum)]
    names_offset = headers[shstrndx][4]
    for fields in headers:
        start = names_offset + fields[0]
        if image[start:image.index(b"\0", start)].decode() == name:
            return image[fields[4]:fields[4] + fields[5]]
    return None


def is_static_executable(path: Path) -> bool:
    """Whether ``path`` is an ELF64 executable without a ``PT_INTERP`` (statically linked)."""
    try:
        _, phdrs = read_program_headers(path)
    except (OSError, ValueError):
        return False
    return all(phdr.type != PT_INTERP for phdr in phdrs)
