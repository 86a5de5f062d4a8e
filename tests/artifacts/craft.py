"""Build small ELF files byte by byte with ``struct``, for the format tests.

Independent of :mod:`vmemfs.formats`: the layouts are written out here again from the
ELF specification, so that a mistake in the reader is not mirrored by the builder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PT_LOAD = 1
PT_NOTE = 4
EM_X86_64 = 62
EM_PPC = 20


@dataclass
class Segment:
    """One program header and its data (placed by :func:`build_elf`)."""

    vaddr: int
    data: bytes = b""
    type: int = PT_LOAD
    paddr: int | None = None
    memsz: int | None = None
    offset: int | None = None
    """Explicit ``p_offset`` (the data is then not written)."""
    filesz: int | None = None
    """Explicit ``p_filesz`` (default: ``len(data)``)."""


def note(name: bytes, note_type: int, desc: bytes, order: str = "<") -> bytes:
    """One ELF note (4-byte aligned name and descriptor)."""
    namesz = len(name) + 1
    head = struct.pack(order + "III", namesz, len(desc), note_type)
    body = (name + b"\0").ljust((namesz + 3) & ~3, b"\0")
    return head + body + desc.ljust((len(desc) + 3) & ~3, b"\0")


def build_elf(
    segments: list[Segment],
    *,
    elfclass: int = 64,
    endian: str = "little",
    machine: int = EM_X86_64,
    etype: int = 4,
    xnum: bool = False,
    phentsize: int | None = None,
    phnum: int | None = None,
) -> bytes:
    """An ELF file with ``segments`` as its program headers, data after the table.

    ``xnum`` writes ``e_phnum = 0xffff`` and the real count in section header 0's
    ``sh_info`` (PN_XNUM).  ``phentsize`` pads each program header (stride);
    ``phnum`` overrides the count written in the header.
    """
    order = "<" if endian == "little" else ">"
    is64 = elfclass == 64
    ehsize = 64 if is64 else 52
    entsize = 56 if is64 else 32
    stride = phentsize or entsize
    shentsize = 64 if is64 else 40
    count = len(segments)
    table_at = ehsize
    section_at = table_at + stride * count
    data_at = section_at + (shentsize if xnum else 0)

    blobs = []
    headers = []
    position = data_at
    for seg in segments:
        filesz = len(seg.data) if seg.filesz is None else seg.filesz
        if seg.offset is None:
            offset = position
            blobs.append(seg.data)
            position += len(seg.data)
        else:
            offset = seg.offset
        paddr = seg.vaddr if seg.paddr is None else seg.paddr
        memsz = filesz if seg.memsz is None else seg.memsz
        if is64:
            header = struct.pack(order + "IIQQQQQQ", seg.type, 4, offset, seg.vaddr, paddr,
                                 filesz, memsz, 1)
        else:
            header = struct.pack(order + "IIIIIIII", seg.type, offset, seg.vaddr, paddr,
                                 filesz, memsz, 4, 1)
        headers.append(header.ljust(stride, b"\0"))

    written_phnum = 0xFFFF if xnum else (count if phnum is None else phnum)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if endian == "little" else 2, 1])
    ident = ident.ljust(16, b"\0")
    shoff = section_at if xnum else 0
    shnum = 1 if xnum else 0
    if is64:
        ehdr = struct.pack(order + "16sHHIQQQIHHHHHH", ident, etype, machine, 1, 0, table_at,
                           shoff, 0, ehsize, stride, written_phnum, shentsize, shnum, 0)
    else:
        ehdr = struct.pack(order + "16sHHIIIIIHHHHHH", ident, etype, machine, 1, 0, table_at,
                           shoff, 0, ehsize, stride, written_phnum, shentsize, shnum, 0)
    section = b""
    if xnum:
        real = count if phnum is None else phnum
        if is64:
            section = struct.pack(order + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, real, 0, 0)
        else:
            section = struct.pack(order + "IIIIIIIIII", 0, 0, 0, 0, 0, 0, 0, real, 0, 0)
    return ehdr + b"".join(headers) + section + b"".join(blobs)
