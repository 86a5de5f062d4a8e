"""The one door to every source: :func:`open` (SPEC §2, §3, §5.1 in docs/formats.md).

``mount.vmemfs``, the ``vmemfs`` command and library users all open sources here: the
format is detected once, by content, and the same options apply everywhere, given as
Python values or as text in the grammar of :mod:`vmemfs.values`.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmemfs import values
from vmemfs.errors import FormatError
from vmemfs.formats import elf, kdump, lime, mapfile, process, symbols
from vmemfs.formats.dump import Dump
from vmemfs.formats.symbols import kernel_relocation
from vmemfs.formats.virtual import build_virtual_map
from vmemfs.memmap import MemoryMap

HEAD_SIZE = 4096
"""Bytes read from the start of a file to tell its format."""

KEEP: Any = object()
"""``wordsize``/``endian`` not given: keep what the source says (``None`` means unset)."""

RAW_OPTIONS = ("address", "offset", "length")


@dataclass(frozen=True)
class Format:
    """A source format: its name for users, how to tell it, how to open it."""

    name: str
    """``"elf"``, ``"map"``, ``"raw"``, ...: the map's ``format`` after opening."""
    title: str
    """How ``vmemfs info`` names it: ``"ELF file"``."""
    sniff: Callable[[bytes, str], Any]
    """``sniff(head, path)``: something true (handed to ``load``) when the file is of
    this format."""
    load: Callable[[str, MemoryMap, Any, dict[str, Any]], None]
    """``load(path, memmap, sniffed, options)``: fill the new map."""
    takes: tuple[str, ...] = ()
    """The source options that apply to this format."""


def _load_elf(path: str, memmap: MemoryMap, sniffed: Any, options: dict[str, Any]) -> None:
    elf.add_elf(memmap, path, physical=bool(options.get("physical", False)))


def _sniff_mapfile(head: bytes, path: str) -> Any:
    if not mapfile.looks_like_mapfile(head):
        return None
    return mapfile.read_mapfile(path)


def _load_mapfile(path: str, memmap: MemoryMap, document: Any,
                  options: dict[str, Any]) -> None:
    info = os.stat(path)
    mapfile.build_map(document, path, os.path.dirname(os.path.abspath(path)), memmap,
                      (info.st_dev, info.st_ino))


def _load_dump(open_dump: Callable[[str], Dump]) -> Callable[
        [str, MemoryMap, Any, dict[str, Any]], None]:
    """A loader for a dump format: its regions, settings and VMCOREINFO into the map."""
    def load(path: str, memmap: MemoryMap, sniffed: Any, options: dict[str, Any]) -> None:
        dump = open_dump(path)
        try:
            dump.add_to(memmap)
        except BaseException:
            dump.close()
            raise
        memmap.vmcoreinfo = dump.vmcoreinfo
        memmap.details = list(dump.info)
    return load


def _load_raw(path: str, memmap: MemoryMap, sniffed: Any, options: dict[str, Any]) -> None:
    address = options.get("address")
    offset = options.get("offset")
    length = options.get("length")
    memmap.add_file(path, 0 if address is None else address,
                    offset=0 if offset is None else offset, length=length)


FORMATS: list[Format] = [
    Format("elf", "ELF file", lambda head, path: head.startswith(elf.ELF_MAGIC), _load_elf,
           ("physical",)),
    Format("kdump", "kdump-compressed dump", lambda head, path: kdump.looks_like(head),
           _load_dump(kdump.open_kdump)),
    Format("lime", "LiME or AVML capture", lambda head, path: lime.looks_like(head),
           _load_dump(lime.open_lime)),
    Format("map", "map file", _sniff_mapfile, _load_mapfile),
]
"""Formats tried in order; a file that none claims is raw."""

RAW = Format("raw", "raw file", lambda head, path: True, _load_raw, RAW_OPTIONS)

_WHERE: dict[str, str] = {
    "physical": "ELF files",
    "address": "raw files", "offset": "raw files", "length": "raw files",
}


def detect(path: str | os.PathLike[str]) -> tuple[Format, Any]:
    """The format of ``path`` and what telling it found (a map file's parsed document).

    Cost: one read of 4 KiB, plus reading a file that looks like text (at most 16 MiB).
    A file whose first bytes cannot be read (``EIO``) is raw.

    :raises FormatError: for a file that claims a format and is broken at its start
        (text with a ``[[map]]`` header that is not valid TOML).
    :raises OSError: if the file cannot be opened or read, or is a directory.
    """
    name = os.fsdecode(path)
    with builtins.open(name, "rb") as stream:
        try:
            head = stream.read(HEAD_SIZE)
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            return RAW, True  # its start cannot be read (a hole in another mount's mem)
    for candidate in FORMATS:
        sniffed = candidate.sniff(head, name)
        if sniffed:
            return candidate, sniffed
    return RAW, True


def _parsed(name: str, value: Any, parse: Callable[[Any], Any]) -> Any:
    try:
        return parse(value)
    except values.BadValue as error:
        raise FormatError(f"option {name}: {error}") from None


def open(
    source: str | os.PathLike[str],
    *,
    address: int | str | None = None,
    offset: int | str | None = None,
    length: int | str | None = None,
    physical: bool = False,
    wordsize: int | str | None = KEEP,
    endian: str | None = KEEP,
    symbols: str | os.PathLike[str] | None = None,
    virtual: bool | int | str | None = None,
) -> MemoryMap:
    """Open ``source`` as a new memory map, its format detected by content.

    * ELF (``\\x7fELF``): every ``PT_LOAD`` (``physical``: at ``p_paddr``);
    * a map file (TOML with ``[[map]]`` tables), with its ``base`` as the map's
      ``preferred_base``;
    * a live process, ``/proc/PID`` or ``pid:PID``: its mappings from ``/proc/PID/maps``,
      read from ``/proc/PID/mem`` at each request (volatile; ``[vvar]`` and
      ``[vsyscall]``, which no read can reach, are left out as ``gcore`` does);
    * anything else: raw bytes (``offset``, ``length`` bytes, default to the end) at
      ``address`` (default 0).

    ``virtual`` (``True``, or the physical address of the top-level page table, the CR3
    value) turns the physical map of an x86-64 Linux guest into the kernel's virtual
    address space by walking its page tables (the table from VMCOREINFO when not given);
    an ELF's loads are then taken at ``p_paddr``.  The physical map is the virtual map's
    source: nothing is copied.

    A kernel dump's symbols move by the KASLR offset its VMCOREINFO gives unless a bias
    is given (``FILE@BIAS``, ``@0`` included) (:func:`vmemfs.formats.symbols.kernel_relocation`).

    ``symbols`` names a symbol table (``FILE`` or ``FILE@BIAS``: a ``System.map``,
    ``kallsyms`` or ELF ``.symtab``/``.dynsym``), kept as the map's ``symbols`` (in
    place of a map file's own ``symbols``).

    Numbers may be ints or text (``"0x1000"``, ``"4K"``); ``wordsize`` and ``endian``,
    when given, override what the source says (``None`` or ``"unset"`` unsets).  The map's
    ``format`` names what was found.

    :raises FormatError: (a ``ValueError``) naming the file for a malformed source, a bad
        option value, or an option that does not apply to the format found.  Nothing is
        left open then.
    :raises ValueError: for ``offset``/``length`` past the end of a raw file.
    :raises OSError: if a file cannot be opened (``IsADirectoryError`` for a folder).
    """
    name = os.fsdecode(source)
    options: dict[str, Any] = {}
    for option, given in (("address", address), ("offset", offset), ("length", length)):
        if given is not None:
            parse = values.parse_address if option == "address" else values.parse_size
            options[option] = _parsed(option, given, parse)
    if physical:
        options["physical"] = True
    wants_view = virtual is not None and virtual is not False
    top_table: int | None = None
    if wants_view and virtual is not True:
        top_table = _parsed("virtual", virtual, values.parse_address)
    settings: dict[str, Any] = {}
    if wordsize is not KEEP:
        settings["wordsize"] = _parsed("wordsize", "unset" if wordsize is None else wordsize,
                                       values.parse_wordsize)
    if endian is not KEEP:
        settings["endian"] = _parsed("endian", "unset" if endian is None else endian,
                                     values.parse_endian)
    table = None
    if symbols is not None:
        table = _symbol_table(os.fsdecode(symbols))
    pid = process.parse_process_spec(name)
    if pid is not None:
        for option in options:
            raise FormatError(f"{name}: option {option} does not apply to a live process")
        memmap = _open_process(pid)
    else:
        memmap = _open_file(name, options, wants_view)
        if not wants_view and memmap.requested_view:  # a map file's own virtual key
            wants_view = True
            if memmap.requested_view is not True:
                top_table = int(memmap.requested_view)
        if wants_view:
            memmap = _virtual(memmap, top_table, name)
    if table is not None:  # the option wins over a map file's own symbols
        if "@" not in os.fsdecode(symbols or "") and memmap.vmcoreinfo is not None:
            table = table.rebased(kernel_relocation(table, memmap.vmcoreinfo))
        memmap.symbols = table
    for setting, value in settings.items():
        setattr(memmap, setting, value)
    return memmap


def _open_file(name: str, options: dict[str, Any], wants_view: bool) -> MemoryMap:
    """A new map of the file ``name``, its format detected (see :func:`open`)."""
    info = os.stat(name)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(21, "Is a directory", name)
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        raise FormatError(f"{name}: not a regular file or block device")
    found, sniffed = detect(name)
    for option in options:
        if option not in found.takes:
            article = "an" if found.title[0] in "AEIOU" else "a"
            raise FormatError(f"{name}: option {option}{'' if option == 'physical' else '='} "
                              f"applies to {_WHERE[option]}, not to {article} {found.title}")
    if wants_view and "physical" in found.takes:
        options["physical"] = True   # the page tables hold physical addresses
    memmap = MemoryMap()
    try:
        found.load(name, memmap, sniffed, options)
    except BaseException:
        memmap.close()
        raise
    memmap.format = found.name
    return memmap


def _virtual(physical: MemoryMap, top_table: int | None, name: str) -> MemoryMap:
    """The kernel's virtual view of ``physical`` (which it then owns)."""
    try:
        view = build_virtual_map(physical, top_table=top_table,
                                 vmcoreinfo=physical.vmcoreinfo, name=name)
    except BaseException:
        physical.close()
        raise
    memmap = view.memmap
    if not len(view.lengths):
        physical.close()
    memmap.format = physical.format
    memmap.details = [*physical.details, ("view", "kernel virtual (page tables walked)")]
    memmap.notes = view.describe()
    memmap.vmcoreinfo = physical.vmcoreinfo
    memmap.kernel_virtual = True
    memmap.symbols = physical.symbols  # a map file's own symbols name virtual addresses
    return memmap


UNREACHABLE_REGIONS = frozenset(("[vvar]", "[vvar_vclock]", "[vsyscall]"))
"""Process regions ``/proc/PID/mem`` never serves: left out of a process's map."""


def _open_process(pid: int) -> MemoryMap:
    dump = process.open_process(pid)
    memmap = MemoryMap()
    try:
        dump.add_to(memmap, [region for region in dump.regions
                             if region.path not in UNREACHABLE_REGIONS])
    except BaseException:
        dump.close()
        raise
    memmap.format = "process"
    memmap.details = [("pid", str(pid)), ("command", dump.command),
                      ("mappings", str(len(dump.regions)))]
    return memmap


def _symbol_table(text: str) -> symbols.SymbolTable:
    path, bias = symbols.parse_symbols_option(text)
    return symbols.load_symbols(path, bias=bias)


def title(memmap: MemoryMap) -> str:
    """How ``vmemfs info`` names the format a map was opened from."""
    for candidate in (*FORMATS, RAW):
        if candidate.name == memmap.format:
            return candidate.title
    return "live process" if memmap.format == "process" else "memory map"
