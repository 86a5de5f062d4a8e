"""Save a memory map as an ELF core file (SPEC §3.4).

Layout of the file written::

    ELF header               ET_CORE, e_machine kept (EM_NONE when unknown)
    program headers          PT_NOTE (vmemfs's own), then one PT_LOAD per extent
    section header 0         only when there are 0xffff or more program headers (PN_XNUM)
    note                     name "VMEMFS", type 1: "wordsize=W\\nendian=E\\n"
    (padding to 4 KiB)
    extent data              packed, in ascending address order

Each ``PT_LOAD`` has ``p_vaddr = p_paddr =`` the extent's start, ``p_filesz = p_memsz =``
its length, flags ``R``.  The class is ELF64 when any address, length or file offset
needs it, otherwise ELF32 when the word size is 32, otherwise ELF64; the byte order is
the map's (little when unset).  The note records the word size and byte order as the
map has them, "unset" included, so :meth:`vmemfs.MemoryMap.load` gives back a map
with the same bytes, holes, word size and byte order.

:func:`core_layout` computes this layout (headers, and where each extent's data goes) for
:func:`save` and for the mount's ``views/core.elf``, which serves the same bytes on the
fly (docs/mounting.md, "Views").

The data is streamed: ``copy_file_range(2)`` from the backing files where the kernel
can do it (no copy through user space; a reflink on filesystems that share blocks),
otherwise through one reused 8 MiB buffer.  The map is never held in memory.
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vmemfs.errors import HoleError
from vmemfs.formats.elf import (
    EHDR32,
    EHDR64,
    EHDR_SIZE,
    ELFCLASS32,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFDATA2MSB,
    EM_NONE,
    ET_CORE,
    NOTE_NAME,
    NT_VMEMFS_SETTINGS,
    PF_R,
    PHDR_SIZE,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    SHDR_SIZE,
    VMCOREINFO_NAME,
    phdr_dtype,
    settings_desc,
)
from vmemfs.sources import FileSource, Source
from vmemfs.values import Endian


def kernel_note(memmap: SavedMap) -> bytes | None:
    """The VMCOREINFO text to write with a map: a physical map's (a kernel dump's), never
    a kernel virtual view's, whose loads hold virtual addresses where readers of
    VMCOREINFO cores expect physical ones in ``p_paddr``."""
    return None if memmap.kernel_virtual else memmap.vmcoreinfo


class SavedMap(Protocol):
    """What :func:`save` needs of a map (a :class:`vmemfs.MemoryMap`)."""

    wordsize: int | None
    endian: Endian | None
    machine: int | None
    vmcoreinfo: bytes | None
    kernel_virtual: bool

    def extents(self) -> list[tuple[int, int]]: ...
    def source_pieces(self, start: int, end: int) -> list[tuple[int, int, Source, int]]: ...

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``."""

CHUNK_SIZE = 8 << 20
"""Bytes per buffered copy (and between progress calls)."""
COPY_RANGE_CHUNK = 64 << 20
"""Bytes per ``copy_file_range`` call."""
DATA_ALIGNMENT = 4096
"""The first extent's data starts on a page boundary."""

_LIMIT32 = 1 << 32
# copy_file_range cannot serve this pair of files: fall back to read and write.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF,
                  errno.EPERM, errno.ETXTBSY, errno.EISDIR}


def note_bytes(wordsize: int | None, endian: str | None, order: str) -> bytes:
    """The VMEMFS settings note, as it sits in the ``PT_NOTE`` segment."""
    return _note(NOTE_NAME, NT_VMEMFS_SETTINGS, settings_desc(wordsize, endian), order)


def _note(owner: bytes, note_type: int, desc: bytes, order: str) -> bytes:
    """One ELF note: header, NUL-terminated owner name and descriptor, each 4-aligned."""
    name = owner + b"\0"
    return (struct.pack(order + "III", len(name), len(desc), note_type)
            + name.ljust((len(name) + 3) & ~3, b"\0")
            + desc.ljust((len(desc) + 3) & ~3, b"\0"))


@dataclass(frozen=True)
class CoreLayout:
    """Where every byte of the ELF core of one map sits (the layout in the module doc).

    The one description of the file that both :func:`save` and the mount's
    ``views/core.elf`` use: the bytes before the data, and where each extent's data goes.
    """

    head: bytes
    """ELF header, program headers, section header 0 (``PN_XNUM`` only), the note,
    zero padding up to the first extent's data (:data:`DATA_ALIGNMENT`)."""
    starts: np.ndarray
    """The first address of each extent (``uint64``, ascending)."""
    lengths: np.ndarray
    """Each extent's length in bytes (``uint64``)."""
    offsets: np.ndarray
    """The file offset of each extent's data (``uint64``): packed one after the other,
    ``offsets[0] == len(head)``."""
    size: int
    """The size of the whole file."""


def core_layout(
    extents: list[tuple[int, int]],
    wordsize: int | None,
    endian: str | None,
    machine: int | None,
    vmcoreinfo: bytes | None = None,
) -> CoreLayout:
    """The ELF core layout of a map with these ``extents`` and settings.

    The class is ELF64 when any address, length or file offset needs it, otherwise ELF32
    when ``wordsize`` is 32, otherwise ELF64; the byte order is ``endian`` (little when
    ``None``); ``e_machine`` is ``machine`` (``EM_NONE`` when ``None``).  ``vmcoreinfo``,
    when given, goes in a ``VMCOREINFO`` note after vmemfs's own, as kdump and QEMU write
    it, so that drgn and crash take the core for a Linux kernel's.

    Runtime complexity: ``O(n)`` for ``n`` extents, vectorised (numpy).
    """
    starts = np.fromiter((s for s, _ in extents), dtype=np.uint64, count=len(extents))
    lengths = np.fromiter((e - s for s, e in extents), dtype=np.uint64, count=len(extents))
    order_name = endian or "little"
    order = "<" if order_name == "little" else ">"
    note = note_bytes(wordsize, endian, order)
    if vmcoreinfo is not None:
        note += _note(VMCOREINFO_NAME, 0, vmcoreinfo, order)
    count = len(extents) + 1
    data_bytes = int(lengths.sum(dtype=np.uint64))

    def layout(elfclass: int) -> tuple[int, int, np.ndarray, int]:
        table_at = EHDR_SIZE[elfclass]
        section_at = table_at + count * PHDR_SIZE[elfclass]
        note_at = section_at + (SHDR_SIZE[elfclass] if count >= PN_XNUM else 0)
        data_at = -(-(note_at + len(note)) // DATA_ALIGNMENT) * DATA_ALIGNMENT
        ends = np.cumsum(lengths, dtype=np.uint64)
        offsets = np.uint64(data_at) + ends - lengths
        return section_at, note_at, offsets, data_at + data_bytes

    fits32 = all(end <= _LIMIT32 and end - start < _LIMIT32 for start, end in extents)
    elfclass = ELFCLASS32 if wordsize == 32 and fits32 else ELFCLASS64
    section_at, note_at, offsets, file_end = layout(elfclass)
    if elfclass == ELFCLASS32 and file_end > _LIMIT32:
        elfclass = ELFCLASS64
        section_at, note_at, offsets, file_end = layout(elfclass)

    table = np.zeros(count, dtype=phdr_dtype(elfclass, order_name))
    table["p_type"][0] = PT_NOTE
    table["p_offset"][0] = note_at
    table["p_filesz"][0] = table["p_memsz"][0] = len(note)
    table["p_align"][0] = 4
    loads = table[1:]
    loads["p_type"] = PT_LOAD
    loads["p_flags"] = PF_R
    loads["p_offset"] = offsets
    loads["p_vaddr"] = loads["p_paddr"] = starts
    loads["p_filesz"] = loads["p_memsz"] = lengths
    loads["p_align"] = 1

    xnum = count >= PN_XNUM
    ident = (b"\x7fELF" + bytes([elfclass, ELFDATA2LSB if order == "<" else ELFDATA2MSB, 1])
             ).ljust(16, b"\0")
    header = struct.pack(
        order + (EHDR32 if elfclass == ELFCLASS32 else EHDR64),
        ident, ET_CORE, machine or EM_NONE, 1, 0, EHDR_SIZE[elfclass],
        section_at if xnum else 0, 0, EHDR_SIZE[elfclass], PHDR_SIZE[elfclass],
        PN_XNUM if xnum else count, SHDR_SIZE[elfclass], 1 if xnum else 0, 0,
    )
    section = b""
    if xnum:
        # Section header 0 (SHT_NULL) carries the real program header count in sh_info.
        if elfclass == ELFCLASS32:
            section = struct.pack(order + "10I", 0, 0, 0, 0, 0, 0, 0, count, 0, 0)
        else:
            section = struct.pack(order + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, count, 0, 0)
    head = header + table.tobytes() + section + note
    if len(extents):
        head = head.ljust(int(offsets[0]), b"\0")
    return CoreLayout(head, starts, lengths, offsets, len(head) + data_bytes)


def build_headers(
    extents: list[tuple[int, int]],
    wordsize: int | None,
    endian: str | None,
    machine: int | None,
) -> tuple[bytes, np.ndarray]:
    """``(head, offsets)`` of :func:`core_layout`: the bytes before the data, and the file
    offset of each extent's data."""
    layout = core_layout(extents, wordsize, endian, machine)
    return layout.head, layout.offsets


def save(memmap: SavedMap, path: str | os.PathLike[str], *,
         progress: Progress | None = None) -> None:
    """Write ``memmap`` to ``path`` as an ELF core file (layout: see the module doc).

    Atomic: the file is written under a temporary name in the target's folder, synced,
    and renamed over ``path``; a symbolic link at ``path`` is followed, and an existing
    file's permission bits are kept.  On any failure the temporary file is removed and
    ``path`` is left as it was.  ``progress(done_bytes, total_bytes)`` is called as data
    is written (at least every 8 MiB and once at the end).

    Cost: ``O(n)`` in the number of extents for the headers, then the data streamed with
    ``copy_file_range`` or an 8 MiB buffer; memory use does not grow with the map.

    :raises OSError: if the file cannot be written (``ENOSPC``, ``EROFS``, ...); its
        ``filename`` is ``path``.
    :raises HoleError: if mapped bytes were lost from a backing file that shrank.
    """
    name = os.fsdecode(path)
    target = os.path.realpath(name)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
    extents = memmap.extents()
    layout = core_layout(extents, memmap.wordsize, memmap.endian, memmap.machine,
                         kernel_note(memmap))
    folder = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    try:
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.",
                                         suffix=".part")
    except OSError as error:
        raise OSError(error.errno, error.strerror, name) from None
    try:
        try:
            os.fchmod(fd, mode)
            _write_all(fd, layout.head, 0)
            _write_extents(memmap, fd, extents, layout.offsets, progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror or str(error), name) from None
        raise
    _sync_folder(folder)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _sync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while len(view):
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class _Copier:
    """Copies the pieces of a map into the output file, counting progress."""

    def __init__(self, fd: int, total: int, progress: Progress | None) -> None:
        self.fd = fd
        self.total = total
        self.done = 0
        self.progress = progress
        self.next_report = CHUNK_SIZE
        self.copy_range = hasattr(os, "copy_file_range")
        self.buffer = memoryview(bytearray(CHUNK_SIZE))
        if progress is not None:
            progress(0, total)

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None and self.done >= self.next_report:
            self.progress(self.done, self.total)
            self.next_report = self.done + CHUNK_SIZE

    def copy_file(self, source: FileSource, offset: int, length: int, address: int,
                  out: int) -> None:
        """Copy ``length`` bytes at ``offset`` of ``source`` to ``out`` in the output."""
        done = 0
        while done < length and self.copy_range:
            try:
                count = os.copy_file_range(source.fd, self.fd,
                                           min(length - done, COPY_RANGE_CHUNK),
                                           offset + done, out + done)
            except OSError as error:
                if error.errno not in _NO_COPY_RANGE:
                    raise
                self.copy_range = False
                break
            if count == 0:
                raise HoleError(address + done)
            done += count
            self.advance(count)
        if done < length:
            self.copy_buffered(source, offset + done, length - done, address + done, out + done)

    def copy_buffered(self, source: Source, offset: int, length: int, address: int,
                      out: int) -> None:
        """Copy through the reused buffer (bytes in memory, or no ``copy_file_range``)."""
        buffer = self.buffer
        read_into = source.read_into
        done = 0
        while done < length:
            want = min(length - done, len(buffer))
            count = read_into(offset + done, buffer[:want])
            if count:
                _write_all(self.fd, buffer[:count], out + done)
                done += count
                self.advance(count)
            if count < want:
                raise HoleError(address + done)


def _write_extents(memmap: SavedMap, fd: int, extents: list[tuple[int, int]],
                   offsets: np.ndarray, progress: Progress | None) -> None:
    total = sum(end - start for start, end in extents)
    copier = _Copier(fd, total, progress)
    for (start, end), out in zip(extents, offsets.tolist(), strict=True):
        address = start
        for piece_start, piece_end, source, offset in memmap.source_pieces(start, end):
            if piece_start != address:
                raise HoleError(address)
            length = piece_end - piece_start
            at = out + address - start
            if isinstance(source, FileSource):
                copier.copy_file(source, offset, length, address, at)
            else:
                copier.copy_buffered(source, offset, length, address, at)
            address = piece_end
        if address != end:
            raise HoleError(address)
    if progress is not None:
        progress(copier.done, total)
