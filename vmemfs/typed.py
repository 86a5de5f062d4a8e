"""Typed reads at an address, as text: what ``at/ADDRESS/*`` and ``vmemfs at`` show
(SPEC §4.8 in docs/mounting.md).  No FUSE here.

Every value is computed from the map's current word size and endian:

========  ===================================================================
field     text
========  ===================================================================
int8 ...  ``int8 uint8 int16 uint16 int32 uint32 int64 uint64``: decimal
int       C int (32 bits), signed, decimal
long      C long (word size bits), signed, decimal
pointer   the word at the address, ``0x`` and word size / 4 hex digits
string    the bytes up to (not including) the next NUL
========  ===================================================================

each followed by a newline; and the links ``deref`` (the pointer's value), ``next`` and
``prev`` (one word on, one word back, modulo 2**64).
"""

from __future__ import annotations

import re

from vmemfs.errors import HoleError, NoEndianError, NoWordsizeError
from vmemfs.memmap import MemoryMap

INTEGERS: dict[str, tuple[int, bool]] = {
    "int8": (1, True), "uint8": (1, False), "int16": (2, True), "uint16": (2, False),
    "int32": (4, True), "uint32": (4, False), "int64": (8, True), "uint64": (8, False),
}
VALUES = (*INTEGERS, "int", "long", "pointer", "string")
"""The value fields, in listing order."""
LINKS = ("deref", "next", "prev")
"""The link fields: each names another address."""
FIELDS = (*VALUES, *LINKS)

STRING_LIMIT = 1 << 20
"""A string must end (NUL) within this many bytes."""

_ADDRESS_NAME = re.compile(r"(?:0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20})")
_MASK64 = (1 << 64) - 1


class StringTooLong(ValueError):
    """No NUL within :data:`STRING_LIMIT` bytes of the address."""


def parse_address_name(name: str) -> int | None:
    """The address a name of ``at/`` stands for (decimal or ``0x`` hex below 2**64), or
    ``None``."""
    if _ADDRESS_NAME.fullmatch(name) is None:
        return None
    address = int(name, 0) if name[:2].lower() == "0x" else int(name, 10)
    return address if address <= _MASK64 else None


def address_name(address: int) -> str:
    """The canonical name of an address: ``0x%016x``."""
    return f"0x{address:016x}"


def _read(memmap: MemoryMap, address: int, size: int, zero_holes: bool) -> bytes:
    if address + size > 1 << 64:
        raise HoleError(1 << 64)
    if zero_holes:
        return bytes(memmap.read_zero_filled(address, size))
    return memmap.get_bytes(address, size)


def _word(memmap: MemoryMap, what: str) -> int:
    if memmap.wordsize is None:
        raise NoWordsizeError(what)
    return memmap.wordsize // 8


def _endian(memmap: MemoryMap, what: str) -> str:
    if memmap.endian is None:
        raise NoEndianError(what)
    return memmap.endian


def integer(memmap: MemoryMap, address: int, size: int, signed: bool, what: str,
            zero_holes: bool = False) -> int:
    """The ``size``-byte integer at ``address`` in the map's endian.

    :raises NoEndianError: if the endian is unset (for ``size > 1``).
    :raises HoleError: at the first unmapped byte (unless ``zero_holes``).
    """
    order = _endian(memmap, what) if size > 1 else "little"
    data = _read(memmap, address, size, zero_holes)
    return int.from_bytes(data, order, signed=signed)  # type: ignore[arg-type]


def string(memmap: MemoryMap, address: int, zero_holes: bool = False) -> bytes:
    """The bytes from ``address`` up to the next NUL.

    :raises StringTooLong: with no NUL within :data:`STRING_LIMIT` bytes.
    :raises HoleError: at the first unmapped byte before the NUL (unless ``zero_holes``,
        where a hole reads as a NUL).
    """
    parts: list[bytes] = []
    cursor = address
    step = 256
    total = 0
    while total < STRING_LIMIT:
        want = min(step, STRING_LIMIT - total, (1 << 64) - cursor)
        if want <= 0:
            raise HoleError(cursor)
        chunk = memmap.read(cursor, want)
        if not chunk and zero_holes:
            return b"".join(parts)
        nul = chunk.find(b"\0")
        if nul >= 0:
            parts.append(chunk[:nul])
            return b"".join(parts)
        parts.append(chunk)
        cursor += len(chunk)
        total += len(chunk)
        if len(chunk) < want and not zero_holes:
            raise HoleError(cursor)
        step = min(step * 4, 1 << 20)
    raise StringTooLong(f"no NUL within {STRING_LIMIT} bytes of {address:#x}")


def value(memmap: MemoryMap, address: int, field: str, zero_holes: bool = False) -> bytes:
    """The text of value ``field`` at ``address`` (see the module doc), newline included.

    :raises KeyError: for a field that is not a value.
    :raises NoWordsizeError: for ``long``/``pointer`` with the word size unset.
    :raises NoEndianError: for a multi-byte value with the endian unset.
    :raises HoleError: at the first unmapped byte (unless ``zero_holes``).
    :raises StringTooLong: for ``string`` without a NUL within 1 MiB.
    """
    if field in INTEGERS:
        size, signed = INTEGERS[field]
        return b"%d\n" % integer(memmap, address, size, signed, field, zero_holes)
    if field == "int":
        return b"%d\n" % integer(memmap, address, 4, True, field, zero_holes)
    if field == "long":
        return b"%d\n" % integer(memmap, address, _word(memmap, field), True, field,
                                 zero_holes)
    if field == "pointer":
        word = _word(memmap, field)
        pointer = integer(memmap, address, word, False, field, zero_holes)
        return b"0x%0*x\n" % (word * 2, pointer)
    if field == "string":
        return string(memmap, address, zero_holes) + b"\n"
    raise KeyError(field)


def link(memmap: MemoryMap, address: int, field: str, zero_holes: bool = False) -> int:
    """The address link ``field`` at ``address`` names: ``deref`` (the pointer held
    there), ``next`` / ``prev`` (one word on / back, modulo 2**64).

    :raises KeyError: for a field that is not a link.
    :raises NoWordsizeError: if the word size is unset.
    :raises NoEndianError: for ``deref`` with the endian unset.
    :raises HoleError: for ``deref`` at an unmapped byte (unless ``zero_holes``).
    """
    word = _word(memmap, field)
    if field == "deref":
        return integer(memmap, address, word, False, field, zero_holes)
    if field == "next":
        return (address + word) & _MASK64
    if field == "prev":
        return (address - word) & _MASK64
    raise KeyError(field)
