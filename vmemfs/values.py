"""One grammar for the values users type: numbers, addresses, sizes, word size, endian,
the ``holes`` and ``cache`` policies, and hex strings.

The same text is accepted or refused the same way wherever it is given: a ``.ctl/``
write, a mount option, a ``vmemfs`` command argument, a map-file value or the settings
note of a saved core (docs/formats.md, "Values").

* **Numbers**: decimal, ``0x`` hexadecimal, ``0o`` octal or ``0b`` binary digits, with
  single underscores between digits, an optional binary suffix ``K``, ``M``, ``G`` or
  ``T`` (``4K`` = 4096), surrounding white space ignored; never negative.  A TOML
  integer (an ``int``) is taken as is.
* **Keywords** (``little``, ``be``, ``unset``, ``eio``, ...) ignore case.

Every parser raises :class:`BadValue` (a ``ValueError``) whose message is one line: the
value as given, then what is accepted, e.g. ``'48' is not 32, 64 or unset``.  Callers put
the name of the setting in front.

>>> parse_address("0xffff_ffff_8100_0000") == 0xffffffff81000000
True
>>> parse_size("4K"), parse_endian("BE"), parse_wordsize("unset")
(4096, 'big', None)
"""

from __future__ import annotations

import re
from typing import Literal

ADDRESS_LIMIT = 1 << 64

Endian = Literal["little", "big"]
Holes = Literal["eio", "zero"]
Cache = Literal["auto", "never"]

UNSET = "unset"
HOLES_EIO: Holes = "eio"
HOLES_ZERO: Holes = "zero"
CACHE_AUTO: Cache = "auto"
CACHE_NEVER: Cache = "never"

_NUMBER = re.compile(
    r"(?:0[xX](?P<hex>[0-9a-fA-F](?:_?[0-9a-fA-F])*)"
    r"|0[oO](?P<oct>[0-7](?:_?[0-7])*)"
    r"|0[bB](?P<bin>[01](?:_?[01])*)"
    r"|(?P<dec>[0-9](?:_?[0-9])*))"
    r"(?P<suffix>[kKmMgGtT])?"
)
_BASES = (("hex", 16), ("oct", 8), ("bin", 2), ("dec", 10))
_SCALE = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_LONGEST = 200
"""Longer text is refused before any parsing (no value below 2**64 needs more)."""
_ENDIANS: dict[str, Endian | None] = {
    "little": "little", "le": "little", "big": "big", "be": "big", UNSET: None}
_WORDSIZES: dict[str, int | None] = {"32": 32, "64": 64, UNSET: None}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class BadValue(ValueError):
    """A value's text is not acceptable; the message is one line (see the module doc)."""


def show(value: object, limit: int = 40) -> str:
    """``repr`` of a value as given, cut to ``limit`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_number(value: str | int, limit: int = ADDRESS_LIMIT) -> int:
    """A non-negative integer below ``limit`` from its text (or a TOML ``int``).

    >>> parse_number("0b1010"), parse_number(" 1_000 "), parse_number("0x2M")
    (10, 1000, 4194304)

    :raises BadValue: for a sign, junk, a ``bool``, or a value ``>= limit``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadValue(f"{show(value)} is not a number")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip()
        match = _NUMBER.fullmatch(text) if len(text) <= _LONGEST else None
        if match is None:
            raise BadValue(f"{show(value)} is not a decimal, 0x, 0o or 0b number "
                           "(K/M/G/T suffixes allowed)")
        number = 0
        for group, base in _BASES:
            digits = match.group(group)
            if digits is not None:
                number = int(digits.replace("_", ""), base)
                break
        suffix = match.group("suffix")
        if suffix:
            number *= _SCALE[suffix.lower()]
    if number < 0:
        raise BadValue(f"{show(value)} is negative")
    if number >= limit:
        bound = "2**64" if limit == ADDRESS_LIMIT else f"{limit:#x}"
        raise BadValue(f"{show(value)} is not below {bound}")
    return number


def parse_address(value: str | int) -> int:
    """An address in ``[0, 2**64)`` (see :func:`parse_number`).

    :raises BadValue: for anything else.
    """
    return parse_number(value, ADDRESS_LIMIT)


def parse_size(value: str | int) -> int:
    """A size, offset or length in ``[0, 2**64]`` (see :func:`parse_number`).

    :raises BadValue: for anything else.
    """
    return parse_number(value, ADDRESS_LIMIT + 1)


def _keyword(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadValue(f"{show(value)} is not a word")
    return value.strip().lower()


def parse_wordsize(value: str | int) -> int | None:
    """``32`` or ``64`` (text or int) to that int, ``unset`` to ``None``.

    :raises BadValue: for anything else.
    """
    try:
        return _WORDSIZES[_keyword(value)]
    except (KeyError, BadValue):
        raise BadValue(f"{show(value)} is not 32, 64 or unset") from None


def parse_endian(value: str) -> Endian | None:
    """``little``/``le`` to ``"little"``, ``big``/``be`` to ``"big"``, ``unset`` to ``None``.

    :raises BadValue: for anything else.
    """
    try:
        return _ENDIANS[_keyword(value)]
    except (KeyError, BadValue):
        raise BadValue(f"{show(value)} is not little, big, le, be or unset") from None


def parse_holes(value: str) -> Holes:
    """``eio`` or ``zero``: how ``mem`` reads holes.

    :raises BadValue: for anything else.
    """
    word = _keyword(value) if isinstance(value, str) else None
    if word == HOLES_EIO:
        return HOLES_EIO
    if word == HOLES_ZERO:
        return HOLES_ZERO
    raise BadValue(f"{show(value)} is not eio or zero")


def parse_cache(value: str) -> Cache:
    """``auto`` or ``never``: whether ``mem`` may be served through the page cache.

    :raises BadValue: for anything else.
    """
    word = _keyword(value) if isinstance(value, str) else None
    if word == CACHE_AUTO:
        return CACHE_AUTO
    if word == CACHE_NEVER:
        return CACHE_NEVER
    raise BadValue(f"{show(value)} is not auto or never")


def parse_hex(value: str) -> bytes:
    """Bytes from hexadecimal digit pairs; white space between digits is ignored.

    >>> parse_hex("2f 00 ff")
    b'/\\x00\\xff'

    :raises BadValue: for an odd count of digits, a non-digit, or an empty string.
    """
    if not isinstance(value, str):
        raise BadValue(f"{show(value)} is not a string of hex digits")
    digits = "".join(value.split())
    if not digits or len(digits) % 2 or not _HEX_DIGITS.issuperset(digits):
        raise BadValue(f"{show(value)} is not hexadecimal bytes (pairs of hex digits)")
    return bytes.fromhex(digits)


def format_wordsize(value: int | None) -> str:
    """``32``, ``64`` or ``unset``."""
    return UNSET if value is None else str(value)


def format_endian(value: str | None) -> str:
    """``little``, ``big`` or ``unset``."""
    return UNSET if value is None else value


def format_address(value: int) -> str:
    """``0x`` and 16 lowercase hexadecimal digits."""
    return f"{value:#018x}"
