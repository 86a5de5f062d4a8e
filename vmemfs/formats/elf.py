"""ELF files as memory maps: every ``PT_LOAD`` becomes a mapping (SPEC §3.2).

A small reader of its own (see docs/formats.md for why): the ELF header and the
program header table are read with two or three ``pread`` calls; the table is decoded
with one numpy structured dtype, so an ELF with 100,000 loads is parsed in
milliseconds.  Segment data is never read here: the loads are handed to
:meth:`MemoryMap.add_file_arrays` as arrays of file regions.

Everything is checked before anything is added; a truncated or corrupt file is a
:class:`~vmemfs.errors.FormatError` with one line naming the file and what is wrong.

A core written by :func:`vmemfs.formats.save.save` starts with a ``PT_NOTE`` holding
a note named ``VMEMFS``; it records the map's word size and byte order, including
"unset", which the ELF header alone cannot say.  Where that note is present it wins
over ``EI_CLASS`` / ``EI_DATA``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vmemfs.errors import FormatError, one_line
from vmemfs.values import Endian

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2
ET_CORE = 4
EM_NONE = 0
PT_LOAD = 1
PT_NOTE = 4
PF_R = 4
PN_XNUM = 0xFFFF
SHN_UNDEF = 0

NOTE_NAME = b"VMEMFS"
"""Owner name of vmemfs's own note."""
NT_VMEMFS_SETTINGS = 0x766D6673
"""Type of the note recording word size and byte order (text ``key=value`` lines).

ASCII ``vmfs``: a number no core-file reader gives a meaning to (type 1 would be taken
for ``NT_PRSTATUS`` by readers that ignore the owner name).
"""
MAX_NOTE_SCAN = 1 << 20
"""Only ``PT_NOTE`` segments at most this large are searched for notes."""
MAX_NOTE_SEGMENTS = 4
"""Only the first few ``PT_NOTE`` segments are searched."""
VMCOREINFO_NAME = b"VMCOREINFO"
"""Owner name of the note holding a Linux kernel's VMCOREINFO text (kdump, QEMU)."""

# Layouts, byte order left out (prefixed when used).  Field names as in <elf.h>.
EHDR32 = "16sHHIIIIIHHHHHH"
EHDR64 = "16sHHIQQQIHHHHHH"
EHDR_SIZE = {ELFCLASS32: 52, ELFCLASS64: 64}
PHDR_SIZE = {ELFCLASS32: 32, ELFCLASS64: 56}
SHDR_SIZE = {ELFCLASS32: 40, ELFCLASS64: 64}
_SH_INFO_OFFSET = {ELFCLASS32: 28, ELFCLASS64: 44}

_PHDR_FIELDS = {
    # name: (offset in ELF32, offset in ELF64, size in ELF32, size in ELF64)
    "p_type": (0, 0, 4, 4),
    "p_offset": (4, 8, 4, 8),
    "p_vaddr": (8, 16, 4, 8),
    "p_paddr": (12, 24, 4, 8),
    "p_filesz": (16, 32, 4, 8),
    "p_memsz": (20, 40, 4, 8),
    "p_flags": (24, 4, 4, 4),
    "p_align": (28, 48, 4, 8),
}


def phdr_dtype(elfclass: int, endian: str, itemsize: int | None = None) -> np.dtype:
    """The numpy dtype of one program header (``itemsize``: the table's stride)."""
    order = "<" if endian == "little" else ">"
    col = 0 if elfclass == ELFCLASS32 else 1
    names = list(_PHDR_FIELDS)
    return np.dtype({
        "names": names,
        "formats": [f"{order}u{_PHDR_FIELDS[n][col + 2]}" for n in names],
        "offsets": [_PHDR_FIELDS[n][col] for n in names],
        "itemsize": itemsize or PHDR_SIZE[elfclass],
    })


@dataclass(frozen=True)
class ElfHeader:
    """The parts of an ELF header that locate the program headers."""

    elfclass: int
    endian: str
    type: int
    machine: int
    phoff: int
    phentsize: int
    phnum: int
    """The real count: already resolved through section header 0 for ``PN_XNUM``."""
    shoff: int
    shentsize: int
    shnum: int

    @property
    def wordsize(self) -> int:
        return 32 if self.elfclass == ELFCLASS32 else 64


@dataclass(frozen=True)
class ElfLayout:
    """What an ELF file contributes to a map, checked and ready to add.

    ``addresses``, ``offsets`` and ``lengths`` (``uint64`` arrays) are the loads with
    ``p_filesz > 0`` in program-header order.  ``wordsize`` and ``endian`` are what the
    map should be set to (``None``: leave as is).
    """

    header: ElfHeader
    addresses: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    wordsize: int | None
    endian: str | None
    settings_note: bool
    """Whether a VMEMFS note supplied ``wordsize`` and ``endian``."""
    vmcoreinfo: bytes | None = None
    """The text of a ``VMCOREINFO`` note (a kernel dump's), or ``None``."""


def _file_size(fd: int) -> int:
    # lseek rather than fstat: a block device has st_size 0.
    return os.lseek(fd, 0, os.SEEK_END)


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_header(fd: int, name: str, file_size: int) -> ElfHeader:
    """Read and check the ELF header of the open file ``fd``.

    Resolves ``PN_XNUM`` (the real program header count lives in ``sh_info`` of
    section header 0).

    :raises FormatError: naming ``name`` and what is wrong.
    """
    ident = _pread_exact(fd, 16, 0)
    if not ident.startswith(ELF_MAGIC):
        raise FormatError(f"{name}: not an ELF file (no \\x7fELF magic)")
    if len(ident) < 16:
        raise FormatError(f"{name}: truncated ELF header ({file_size} bytes)")
    elfclass, data = ident[4], ident[5]
    if elfclass not in (ELFCLASS32, ELFCLASS64):
        raise FormatError(f"{name}: unknown ELF class {elfclass} (EI_CLASS must be 1 or 2)")
    if data not in (ELFDATA2LSB, ELFDATA2MSB):
        raise FormatError(f"{name}: unknown ELF data encoding {data} (EI_DATA must be 1 or 2)")
    endian = "little" if data == ELFDATA2LSB else "big"
    order = "<" if data == ELFDATA2LSB else ">"
    size = EHDR_SIZE[elfclass]
    raw = _pread_exact(fd, size, 0)
    if len(raw) < size:
        raise FormatError(
            f"{name}: truncated ELF header ({len(raw)} bytes, ELF{32 * elfclass} needs {size})"
        )
    fields = struct.unpack(order + (EHDR32 if elfclass == ELFCLASS32 else EHDR64), raw)
    (_, e_type, e_machine, _, _, e_phoff, e_shoff, _, _,
     e_phentsize, e_phnum, e_shentsize, e_shnum, _) = fields
    if e_phnum == PN_XNUM:
        e_phnum = _xnum_count(fd, name, file_size, elfclass, order, e_shoff, e_shentsize)
    if e_phnum and e_phentsize < PHDR_SIZE[elfclass]:
        raise FormatError(
            f"{name}: e_phentsize {e_phentsize} is smaller than a program header "
            f"({PHDR_SIZE[elfclass]} bytes)"
        )
    return ElfHeader(elfclass, endian, e_type, e_machine, e_phoff, e_phentsize, e_phnum,
                     e_shoff, e_shentsize, e_shnum)


def _xnum_count(fd: int, name: str, file_size: int, elfclass: int, order: str,
                shoff: int, shentsize: int) -> int:
    if shoff == 0:
        raise FormatError(
            f"{name}: e_phnum is PN_XNUM (0xffff) but there is no section header 0 "
            f"(e_shoff is 0)"
        )
    if shentsize < SHDR_SIZE[elfclass]:
        raise FormatError(
            f"{name}: e_phnum is PN_XNUM but e_shentsize {shentsize} is smaller than a "
            f"section header ({SHDR_SIZE[elfclass]} bytes)"
        )
    at = shoff + _SH_INFO_OFFSET[elfclass]
    if at + 4 > file_size:
        raise FormatError(
            f"{name}: e_phnum is PN_XNUM but section header 0 at {shoff:#x} passes the "
            f"end of the file ({file_size:#x})"
        )
    (count,) = struct.unpack(order + "I", _pread_exact(fd, 4, at))
    return int(count)


def read_program_headers(fd: int, name: str, header: ElfHeader, file_size: int) -> np.ndarray:
    """Read the whole program header table with one ``pread``.

    Returns a structured array (fields ``p_type``, ``p_offset``, ``p_vaddr``, ...).

    :raises FormatError: if the table passes the end of the file.
    """
    count, stride = header.phnum, header.phentsize
    if count == 0:
        return np.zeros(0, dtype=phdr_dtype(header.elfclass, header.endian))
    size = count * stride
    if header.phoff > file_size or size > file_size - header.phoff:
        raise FormatError(
            f"{name}: program header table ({count} entries of {stride} bytes at "
            f"{header.phoff:#x}) passes the end of the file ({file_size:#x})"
        )
    raw = _pread_exact(fd, size, header.phoff)
    if len(raw) < size:
        raise FormatError(f"{name}: program header table: file shrank while reading")
    return np.frombuffer(raw, dtype=phdr_dtype(header.elfclass, header.endian, stride),
                         count=count)


def read_layout(path: str | os.PathLike[str], *, physical: bool = False) -> ElfLayout:
    """Parse and check the ELF at ``path``: its loads, word size and byte order.

    Cost: two or three small reads plus one read of the program header table (and of a
    first ``PT_NOTE`` of at most 1 MiB); vectorised over the headers.

    :raises FormatError: naming the file and the first thing wrong, e.g.
        ``core: program header 3: p_offset+p_filesz 0x... passes the end of the file
        (0x...)``.
    :raises OSError: if the file cannot be opened or read.
    """
    name = os.fsdecode(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        file_size = _file_size(fd)
        header = read_header(fd, name, file_size)
        table = read_program_headers(fd, name, header, file_size)
        types = table["p_type"]
        offsets = table["p_offset"].astype(np.uint64)
        lengths = table["p_filesz"].astype(np.uint64)
        field = "p_paddr" if physical else "p_vaddr"
        addresses = table[field].astype(np.uint64)
        loads = np.flatnonzero((types == PT_LOAD) & (lengths > 0))
        _check_loads(name, loads, offsets, lengths, addresses, file_size, field)
        settings, vmcoreinfo = _read_notes(fd, name, header, table, file_size)
    finally:
        os.close(fd)
    if settings is None:
        wordsize: int | None = header.wordsize
        endian: str | None = header.endian
    else:
        wordsize, endian = settings
    return ElfLayout(
        header=header,
        addresses=addresses[loads],
        offsets=offsets[loads],
        lengths=lengths[loads],
        wordsize=wordsize,
        endian=endian,
        settings_note=settings is not None,
        vmcoreinfo=vmcoreinfo,
    )


def _check_loads(name: str, loads: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                 addresses: np.ndarray, file_size: int, field: str) -> None:
    if not len(loads):
        return
    off, size, addr = offsets[loads], lengths[loads], addresses[loads]
    limit = np.uint64(file_size)
    # off + size <= file_size, written so that nothing overflows a uint64.
    past_file = (off > limit) | (size > limit - np.minimum(off, limit))
    # addr + size <= 2**64, i.e. size - 1 <= (2**64 - 1) - addr (size >= 1 here).
    past_top = (size - np.uint64(1)) > (np.uint64(2**64 - 1) - addr)
    bad = np.flatnonzero(past_file | past_top)
    if not len(bad):
        return
    first = int(bad[0])
    index = int(loads[first])
    o, s, a = int(off[first]), int(size[first]), int(addr[first])
    if past_file[first]:
        raise FormatError(
            f"{name}: program header {index}: p_offset+p_filesz {o + s:#x} passes the end "
            f"of the file ({file_size:#x})"
        )
    raise FormatError(
        f"{name}: program header {index}: {field}+p_filesz {a + s:#x} passes the end of "
        f"the address space (2**64)"
    )


def _read_notes(fd: int, name: str, header: ElfHeader, table: np.ndarray, file_size: int
                ) -> tuple[tuple[int | None, str | None] | None, bytes | None]:
    """Word size and byte order from a VMEMFS note in the first ``PT_NOTE`` segment (where
    the save format puts it), and the text of a ``VMCOREINFO`` note in any of the first
    :data:`MAX_NOTE_SEGMENTS` (each at most :data:`MAX_NOTE_SCAN` bytes)."""
    settings: tuple[int | None, str | None] | None = None
    vmcoreinfo: bytes | None = None
    order = "<" if header.endian == "little" else ">"
    for position, number in enumerate(np.flatnonzero(table["p_type"] == PT_NOTE)
                                      [:MAX_NOTE_SEGMENTS]):
        entry = table[int(number)]
        offset, size = int(entry["p_offset"]), int(entry["p_filesz"])
        if size > MAX_NOTE_SCAN or offset > file_size or size > file_size - offset:
            continue
        for note_name, note_type, desc in iter_notes(_pread_exact(fd, size, offset), order):
            if note_name == NOTE_NAME and note_type == NT_VMEMFS_SETTINGS and position == 0:
                settings = parse_settings(desc, name)
            elif note_name == VMCOREINFO_NAME and vmcoreinfo is None:
                vmcoreinfo = desc.rstrip(b"\0")
    return settings, vmcoreinfo


def iter_notes(data: bytes, order: str) -> Iterator[tuple[bytes, int, bytes]]:
    """Yield ``(name, type, desc)`` for each note in a ``PT_NOTE`` segment's bytes.

    Stops quietly at a note that does not fit (a note segment is advisory here).
    """
    position, end = 0, len(data)
    while position + 12 <= end:
        namesz, descsz, note_type = struct.unpack_from(order + "III", data, position)
        name_at = position + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        next_at = desc_at + ((descsz + 3) & ~3)
        if desc_at + descsz > end:
            return
        yield data[name_at:name_at + namesz].rstrip(b"\0"), note_type, \
            data[desc_at:desc_at + descsz]
        position = next_at


def settings_desc(wordsize: int | None, endian: str | None) -> bytes:
    """The descriptor of a VMEMFS settings note (ASCII ``key=value`` lines)."""
    return (f"wordsize={wordsize or 'unset'}\nendian={endian or 'unset'}\n").encode("ascii")


def parse_settings(desc: bytes, name: str) -> tuple[int | None, str | None]:
    """Parse a VMEMFS settings descriptor back into ``(wordsize, endian)``.

    :raises FormatError: for a value other than those :func:`settings_desc` writes.
    """
    wordsize: int | None = None
    endian: str | None = None
    for line in desc.decode("ascii", "replace").splitlines():
        key, _, value = line.partition("=")
        if key == "wordsize":
            if value not in ("32", "64", "unset"):
                raise FormatError(f"{name}: VMEMFS note: bad wordsize {value!r}")
            wordsize = None if value == "unset" else int(value)
        elif key == "endian":
            if value not in ("little", "big", "unset"):
                raise FormatError(f"{name}: VMEMFS note: bad endian {value!r}")
            endian = None if value == "unset" else value
    return wordsize, endian


class ElfTarget(Protocol):
    """What :func:`add_elf` needs of a map (a :class:`vmemfs.MemoryMap`)."""

    wordsize: int | None
    endian: Endian | None
    machine: int | None
    vmcoreinfo: bytes | None

    def add_file_arrays(self, src: str | os.PathLike[str], addresses: np.ndarray,
                        offsets: np.ndarray, lengths: np.ndarray, *, kind: str) -> None: ...


def add_elf(memmap: ElfTarget, path: str | os.PathLike[str], *, physical: bool = False) -> None:
    """Add every ``PT_LOAD`` of the ELF at ``path`` to ``memmap``, in header order.

    Each load with ``p_filesz > 0`` maps ``[p_vaddr, p_vaddr + p_filesz)`` (``p_paddr``
    when ``physical``) from file offset ``p_offset``; later headers take precedence
    where loads overlap, and the loads take precedence over the map's earlier mappings.
    The ``p_memsz - p_filesz`` tail stays a hole.  Sets the map's word size and byte
    order from ``EI_CLASS``/``EI_DATA`` (or from a VMEMFS note), and its ``machine``
    from ``e_machine`` when the map has none yet.

    Cost: see :func:`read_layout`; then one vectorised ``add_file_arrays``.

    :raises FormatError: for a truncated or corrupt file, or when the map's word size or
        byte order is already set to something else.  Nothing is added then.
    :raises OSError: if the file cannot be opened or read.
    """
    name = os.fsdecode(path)
    layout = read_layout(path, physical=physical)
    saved = layout.settings_note
    if layout.wordsize is not None and memmap.wordsize not in (None, layout.wordsize):
        what = (f"saved with wordsize {layout.wordsize}" if saved
                else f"ELF{layout.wordsize} file")
        raise FormatError(f"{name}: {what}, but the map's wordsize is already "
                          f"{memmap.wordsize}")
    if layout.endian is not None and memmap.endian not in (None, layout.endian):
        what = (f"saved with endian {layout.endian}" if saved
                else f"{layout.endian}-endian ELF file")
        raise FormatError(f"{name}: {what}, but the map's endian is already {memmap.endian}")
    if len(layout.addresses):
        try:
            memmap.add_file_arrays(path, layout.addresses, layout.offsets, layout.lengths,
                                   kind="elf")
        except FormatError:
            raise
        except ValueError as error:
            raise FormatError(f"{name}: {one_line(error)}") from None
    if layout.wordsize is not None:
        memmap.wordsize = layout.wordsize
    if layout.endian is not None:
        memmap.endian = "big" if layout.endian == "big" else "little"
    machine = layout.header.machine
    if machine != EM_NONE and memmap.machine is None:
        memmap.machine = machine
    if layout.vmcoreinfo is not None and memmap.vmcoreinfo is None:
        memmap.vmcoreinfo = layout.vmcoreinfo
