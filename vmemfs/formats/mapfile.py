"""Map files: a TOML description of a memory map (SPEC §3.3).

A map file lists mappings in order, later ones winning where they overlap::

    wordsize = 64                      # optional: 32 | 64 | "unset"
    endian = "little"                  # optional: little | big | le | be | "unset"
    base = "0xffffffff80000000"        # optional: where a mount's ``mem`` starts
    symbols = "System.map"             # optional: a symbol table (FILE or FILE@BIAS)
    virtual = true                     # optional: the kernel's virtual view (or a CR3)

    [[map]]
    file = "ram.bin"                   # raw bytes of a file (path relative to this file)
    address = "0xffffffff81000000"
    offset = 0x1000                    # optional, default 0
    length = "65_536"                  # optional, default: to the end of the file

    [[map]]
    elf = "vmcore"                     # every PT_LOAD of an ELF
    physical = true                    # optional: place loads at p_paddr

    [[map]]
    hex = "de ad be ef"                # inline bytes
    address = 0x1000

    [[map]]
    text = "hello"                     # inline UTF-8 text (no NUL added)
    address = 0x2000

Integers are TOML integers or strings (``"0xffffffff81000000"``, ``"0o17"``,
``"0b101"``, ``"4096"``; underscores allowed), because TOML integers stop at
``2**63 - 1``.  Every error is a :class:`~vmemfs.errors.FormatError` whose one-line
message names the map file, the table (``map[2]``, counting from 0) and the key.

The top-level ``wordsize`` and ``endian`` are applied after every ``[[map]]`` table, so
they take precedence over what an ELF header says.  ``base`` is a mount preference,
not part of the map: it is returned as the attribute ``preferred_base`` of the map.
``symbols`` names a symbol table as the ``symbols=`` option does (a ``System.map`` or
``kallsyms`` text or an ELF file, ``@BIAS`` to add a load bias; docs/formats.md), its path
relative to the map file's folder; it becomes the map's ``symbols``.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Callable
from typing import Any

from vmemfs import values
from vmemfs.errors import FormatError, one_line, os_error_message
from vmemfs.formats.elf import add_elf
from vmemfs.formats.symbols import SymbolTable, load_symbols, parse_symbols_option
from vmemfs.memmap import MemoryMap

MAX_MAPFILE_SIZE = 16 << 20
"""A map file is read whole; anything larger is not taken for one."""

_MAP_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*map[ \t]*\]\]", re.MULTILINE)

_KINDS = ("file", "elf", "hex", "text")
_KEYS = {
    "file": ("address", "offset", "length"),
    "elf": ("physical",),
    "hex": ("address",),
    "text": ("address",),
}
_TOP_KEYS = ("wordsize", "endian", "base", "symbols", "virtual", "map")


def parse_int(value: object) -> int:
    """The non-negative integer a map-file value stands for (see :mod:`vmemfs.values`).

    >>> parse_int("0xffff_ffff_8100_0000")
    18446744071578845184
    >>> parse_int(4096), parse_int("4K")
    (4096, 4096)

    :raises BadValue: (a ``ValueError``) for anything else.
    """
    return values.parse_size(value)  # type: ignore[arg-type]  # checked there


def parse_address(value: object) -> int:
    """``value`` as an address in ``[0, 2**64)`` (see :mod:`vmemfs.values`).

    :raises BadValue: (a ``ValueError``) for anything else.
    """
    return values.parse_address(value)  # type: ignore[arg-type]  # checked there


def looks_like_mapfile(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) may be a map file worth parsing.

    Cheap: no NUL byte and valid UTF-8 (a character cut at the end is allowed).
    """
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # A multi-byte character cut by the end of the sample is fine.
        return error.start >= len(head) - 3 and error.reason == "unexpected end of data"
    return True


def parse_mapfile_text(text: str, name: str) -> dict[str, Any] | None:
    """Parse a candidate map file's text; ``None`` when it is not a map file.

    A document is a map file when it is TOML with at least one ``[[map]]`` table.  Text
    that is not valid TOML but has a ``[[map]]`` header line is taken as a broken map
    file rather than as raw data: that is a :class:`FormatError`.

    :raises FormatError: ``NAME: not valid TOML: ...`` for such text.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        document = tomllib.loads(text)
    except (ValueError, RecursionError) as error:
        # Besides TOMLDecodeError: tomllib recurses into nested arrays and inline tables
        # (a few thousand "[" exhaust the stack), and int() refuses integers of more than
        # 4300 digits with a plain ValueError.  Such text is raw data, or a broken map file.
        if _MAP_HEADER.search(text):
            reason = "nested too deeply" if isinstance(error, RecursionError) else error
            raise FormatError(f"{name}: not valid TOML: {reason}") from None
        return None
    tables = document.get("map")
    if not isinstance(tables, list) or not tables:
        return None
    if not all(isinstance(table, dict) for table in tables):
        if _MAP_HEADER.search(text):
            raise FormatError(f"{name}: map: must be an array of tables ([[map]])")
        return None
    return document


def read_mapfile(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read and parse ``path`` if it is a map file, else return ``None``.

    :raises FormatError: for a broken map file (see :func:`parse_mapfile_text`).
    :raises OSError: if the file cannot be read.
    """
    name = os.fsdecode(path)
    with open(path, "rb") as stream:
        raw = stream.read(MAX_MAPFILE_SIZE + 1)
    if len(raw) > MAX_MAPFILE_SIZE or not looks_like_mapfile(raw):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return parse_mapfile_text(text, name)


def load_mapfile(path: str | os.PathLike[str]) -> MemoryMap:
    """A new map holding the mappings of the map file at ``path``.

    Mappings are added in table order (later tables win where they overlap); then the
    top-level ``wordsize`` and ``endian`` are applied, and ``base`` is kept as the map's
    ``preferred_base``.

    Cost: reads the map file whole; data files are opened and held, never read, except
    for ELF headers.

    :raises FormatError: one line ``FILE: map[i].KEY: what is wrong`` for an unknown
        key, a missing or unreadable file, a bad value, a file that is not a TOML map
        file, or a broken ELF named in it.  Nothing is returned half-built.
    :raises OSError: if the map file itself cannot be read.
    """
    name = os.fsdecode(path)
    document = read_mapfile(path)
    if document is None:
        raise FormatError(f"{name}: not a map file (a TOML document with [[map]] tables)")
    memmap = MemoryMap()
    build_map(document, name, os.path.dirname(os.path.abspath(path)), memmap, _identity(path))
    return memmap


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def build_map(
    document: dict[str, Any],
    name: str,
    folder: str,
    memmap: MemoryMap,
    identity: tuple[int, int] | None = None,
) -> None:
    """Fill ``memmap`` from a parsed map-file ``document`` (see :func:`load_mapfile`).

    ``name`` is used in messages, ``folder`` resolves relative paths, ``identity``
    (``(st_dev, st_ino)`` of the map file) lets a table that names the map file itself
    be refused.  On an error the files opened so far are closed.
    """

    for key in document:
        if key not in _TOP_KEYS:
            raise FormatError(
                f"{name}: {key}: unknown key (top-level keys: {', '.join(_TOP_KEYS)})"
            )
    wordsize = _top_value(document, "wordsize", name, values.parse_wordsize)
    endian = _top_value(document, "endian", name, values.parse_endian)
    base = _top_value(document, "base", name, parse_address)
    virtual = _top_value(document, "virtual", name, _parse_virtual)
    symbols = None
    if "symbols" in document:
        symbols = _symbols(document["symbols"], name, folder, identity)

    tables = document.get("map")
    if not isinstance(tables, list) or not tables:
        raise FormatError(f"{name}: map: no [[map]] tables")
    try:
        for index, table in enumerate(tables):
            where = f"{name}: map[{index}]"
            if not isinstance(table, dict):
                raise FormatError(f"{where}: not a table")
            _add_table(memmap, table, where, folder, identity)
    except BaseException:
        memmap.close()      # the files opened for the tables before the bad one
        raise
    if "wordsize" in document:
        memmap.wordsize = wordsize
    if "endian" in document:
        memmap.endian = endian
    memmap.preferred_base = base
    memmap.requested_view = virtual
    if symbols is not None:
        memmap.symbols = symbols


def _parse_virtual(value: object) -> bool | int:
    """``virtual``: ``true``/``false``, or the top-level page table's physical address."""
    if isinstance(value, bool):
        return value
    return values.parse_address(value)  # type: ignore[arg-type]  # checked there


def _symbols(value: object, name: str, folder: str,
             identity: tuple[int, int] | None) -> SymbolTable:
    """The symbol table a top-level ``symbols`` names (``FILE`` or ``FILE@BIAS``).

    :raises FormatError: ``NAME: symbols: ...`` for a value that is not such a string,
        a missing or unreadable file, or a malformed symbol table.
    """
    where = f"{name}: symbols"
    if not isinstance(value, str):
        raise FormatError(f"{where}: not a string: {values.show(value)}")
    try:
        path, bias = parse_symbols_option(value)
    except ValueError as error:
        raise FormatError(f"{name}: {one_line(error)}") from None
    path = _data_path(path, where, folder, identity)
    try:
        return load_symbols(path, bias=bias)
    except OSError as error:
        raise FormatError(f"{where}: {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise FormatError(f"{where}: {one_line(error)}") from None


def _top_value(
    document: dict[str, Any], key: str, name: str, parse: Callable[[Any], Any]
) -> Any:
    if key not in document:
        return None
    try:
        return parse(document[key])
    except ValueError as error:
        raise FormatError(f"{name}: {key}: {error}") from None




def _add_table(
    memmap: MemoryMap,
    table: dict[str, Any],
    where: str,
    folder: str,
    identity: tuple[int, int] | None,
) -> None:
    kinds = [kind for kind in _KINDS if kind in table]
    if not kinds:
        raise FormatError(f"{where}: needs one of the keys {', '.join(_KINDS)}")
    if len(kinds) > 1:
        raise FormatError(f"{where}: has both {kinds[0]} and {kinds[1]}; give exactly one")
    kind = kinds[0]
    allowed = _KEYS[kind]
    for key in table:
        if key != kind and key not in allowed:
            takers = [k for k in _KINDS if key in _KEYS[k]]
            if takers:
                raise FormatError(
                    f"{where}.{key}: not allowed with {kind} (only with {', '.join(takers)})"
                )
            raise FormatError(
                f"{where}.{key}: unknown key ({kind} tables take: {', '.join(allowed)})"
            )

    def value(key: str, parse: Callable[[object], Any], default: Any = None) -> Any:
        if key not in table:
            if default is _REQUIRED:
                raise FormatError(f"{where}.{key}: missing (a {kind} table needs it)")
            return default
        try:
            return parse(table[key])
        except ValueError as error:
            raise FormatError(f"{where}.{key}: {error}") from None

    if kind == "file":
        path = _data_path(table["file"], f"{where}.file", folder, identity)
        address = value("address", parse_address, _REQUIRED)
        offset = value("offset", parse_int, 0)
        length = value("length", parse_int, None)
        try:
            memmap.add_file(path, address, offset=offset, length=length)
        except OSError as error:
            raise FormatError(f"{where}.file: {os_error_message(error, path)}") from None
        except ValueError as error:
            raise FormatError(f"{where}.file: {one_line(error)}") from None
    elif kind == "elf":
        path = _data_path(table["elf"], f"{where}.elf", folder, identity)
        physical = value("physical", _parse_bool, False)
        try:
            add_elf(memmap, path, physical=physical)
        except OSError as error:
            raise FormatError(f"{where}.elf: {os_error_message(error, path)}") from None
        except ValueError as error:
            raise FormatError(f"{where}.elf: {one_line(error)}") from None
    else:
        data = value(kind, _parse_hex if kind == "hex" else _parse_text)
        address = value("address", parse_address, _REQUIRED)
        try:
            memmap.add_bytes(data, address)
        except ValueError as error:
            raise FormatError(f"{where}.{kind}: {one_line(error)}") from None


_REQUIRED = object()


def _parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"not true or false: {values.show(value)}")
    return value


def _parse_hex(value: object) -> bytes:
    if value == "":
        return b""  # an empty mapping is allowed and covers nothing
    return values.parse_hex(value)  # type: ignore[arg-type]  # checked there


def _parse_text(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"not a string: {values.show(value)}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"not encodable as UTF-8: {values.show(value)}") from None


def _data_path(
    value: object, where: str, folder: str, identity: tuple[int, int] | None
) -> str:
    """Resolve a ``file``/``elf`` value and check it names something mappable."""
    if not isinstance(value, str) or not value:
        raise FormatError(f"{where}: not a path: {values.show(value)}")
    if "\0" in value:
        raise FormatError(f"{where}: not a path (contains NUL): {values.show(value)}")
    path = value if os.path.isabs(value) else os.path.join(folder, value)
    try:
        info = os.stat(path)
    except OSError as error:
        raise FormatError(f"{where}: {os_error_message(error, path)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise FormatError(f"{where}: {path}: is a directory")
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        raise FormatError(f"{where}: {path}: not a regular file or block device")
    if identity is not None and (info.st_dev, info.st_ino) == identity:
        raise FormatError(f"{where}: {path}: names the map file itself")
    return path
