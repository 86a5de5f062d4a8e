"""Open any source by its content: ELF, map file or raw file (SPEC §5.1)."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from vmemfs.errors import FormatError
from vmemfs.formats import elf, mapfile

if TYPE_CHECKING:
    from vmemfs.memmap import MemoryMap

ELF = "elf"
MAPFILE = "map"
RAW = "raw"

_HEAD_SIZE = 4096


def detect(path: str | os.PathLike[str]) -> str:
    """Return what ``path`` holds: ``"elf"``, ``"map"`` or ``"raw"``.

    ELF magic (``\\x7fELF``) means ELF; a UTF-8 TOML document with at least one
    ``[[map]]`` table means a map file; anything else is raw.  Cost: one read of 4 KiB,
    plus reading the whole file (at most 16 MiB) when it looks like text.

    :raises FormatError: for text with a ``[[map]]`` header that is not valid TOML.
    :raises OSError: if the file cannot be opened or read, or is a directory.
    """
    with open(path, "rb") as stream:
        head = stream.read(_HEAD_SIZE)
    if head.startswith(elf.ELF_MAGIC):
        return ELF
    if mapfile.looks_like_mapfile(head) and mapfile.read_mapfile(path) is not None:
        return MAPFILE
    return RAW


def open_source(
    path: str | os.PathLike[str],
    *,
    address: int | None = None,
    offset: int | None = None,
    length: int | None = None,
    physical: bool = False,
) -> MemoryMap:
    """Open the source at ``path`` as a new memory map, detected by content.

    * ELF: every ``PT_LOAD`` (``physical``: at ``p_paddr``), see :func:`elf.load_elf`;
    * map file: see :func:`mapfile.load_mapfile`;
    * raw file: the file (from ``offset``, ``length`` bytes, default to its end) at
      ``address`` (default 0).

    The returned map has an attribute ``preferred_base``: the map file's ``base``, or
    ``None``.

    :raises FormatError: (a ``ValueError``) for a malformed ELF or map file, and for an
        option that does not apply: ``address``/``offset``/``length`` with an ELF or a
        map file, ``physical`` with anything but an ELF.  The message names the file and
        the option.
    :raises ValueError: for ``offset``/``length`` past the end of a raw file.
    :raises OSError: if the file cannot be opened (``IsADirectoryError`` for a folder).
    """
    name = os.fsdecode(path)
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(21, "Is a directory", name)
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        raise FormatError(f"{name}: not a regular file or block device")
    kind = detect(path)
    if kind != RAW:
        for option, given in (("address", address), ("offset", offset), ("length", length)):
            if given is not None:
                what = "an ELF file" if kind == ELF else "a map file"
                raise FormatError(f"{name}: option {option}= applies to raw files, not to {what}")
    if kind == ELF:
        memmap = elf.load_elf(path, physical=physical)
        setattr(memmap, "preferred_base", None)  # noqa: B010 - not a declared attribute
        return memmap
    if physical:
        what = "a map file (use physical = true in its [[map]] table)" if kind == MAPFILE \
            else "a raw file"
        raise FormatError(f"{name}: option physical applies to ELF files, not to {what}")
    if kind == MAPFILE:
        return mapfile.load_mapfile(path)

    from vmemfs.memmap import MemoryMap

    memmap = MemoryMap()
    memmap.add_file(path, 0 if address is None else address,
                    offset=0 if offset is None else offset, length=length)
    setattr(memmap, "preferred_base", None)  # noqa: B010 - not a declared attribute
    return memmap
