"""Control values: the text of ``.ctl/`` files and of the matching mount options.

Each control has a parser (text as written to the file or given as ``NAME=VALUE`` on the
command line, to a Python value) and a formatter (the value to the text a read returns).
The same parsers check the ``wordsize=``, ``endian=``, ``base=`` and ``holes=`` mount
options, so a value is accepted in one place exactly when it is accepted in the other
(SPEC §4.4, §5.2).

>>> parse("endian", b"be\\n")
'big'
>>> format_value("base", 0xffffffff81000000)
b'0xffffffff81000000\\n'
>>> parse("wordsize", b"48")
Traceback (most recent call last):
...
vmemfs.ctl.ControlValueError: wordsize: '48' is not 32, 64 or unset
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from vmemfs.index import ADDRESS_LIMIT

WORDSIZE = "wordsize"
ENDIAN = "endian"
BASE = "base"
HOLES = "holes"

HOLES_EIO = "eio"
HOLES_ZERO = "zero"

CONTROLS: tuple[str, ...] = (WORDSIZE, ENDIAN, BASE, HOLES)
"""The writable control files, in the order ``.ctl/`` lists them."""

_UNSET = "unset"
_ENDIANS = {"little": "little", "le": "little", "big": "big", "be": "big"}
_DECIMAL = re.compile(r"[0-9]+")
_HEXADECIMAL = re.compile(r"0[xX][0-9a-fA-F]+")
_LONGEST = 64
_SCALE = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
"""No valid value is longer than this; longer input is refused before any parsing."""


class ControlValueError(ValueError):
    """A control value (a ``.ctl/`` write or a mount option) is not acceptable.

    The message is one line: the control's name, the value as given, and what is
    accepted.
    """


def parse_wordsize(text: str) -> int | None:
    """``"32"`` or ``"64"`` to that int, ``"unset"`` to ``None``.

    :raises ControlValueError: for anything else.
    """
    if text == "32":
        return 32
    if text == "64":
        return 64
    if text == _UNSET:
        return None
    raise ControlValueError(f"{WORDSIZE}: {text!r} is not 32, 64 or unset")


def parse_endian(text: str) -> str | None:
    """``little``/``le`` to ``"little"``, ``big``/``be`` to ``"big"``, ``unset`` to ``None``.

    :raises ControlValueError: for anything else (the match is case-sensitive).
    """
    if text == _UNSET:
        return None
    try:
        return _ENDIANS[text]
    except KeyError:
        raise ControlValueError(
            f"{ENDIAN}: {text!r} is not little, big, le, be or unset") from None


def parse_address(text: str, name: str = BASE) -> int:
    """A decimal or ``0x`` hexadecimal address in ``[0, 2**64)``.

    ``name`` is used in the error message (``base``, or an option such as ``address``).

    :raises ControlValueError: for a sign, spaces, another base, or a value ``>= 2**64``.
    """
    if _DECIMAL.fullmatch(text):
        # Python refuses decimal strings of more than 4300 digits; none is below 2**64.
        digits = text.lstrip("0") or "0"
        value = int(digits, 10) if len(digits) <= _LONGEST else ADDRESS_LIMIT
    elif _HEXADECIMAL.fullmatch(text):
        value = int(text, 16)
    else:
        raise ControlValueError(
            f"{name}: {text!r} is not a decimal or 0x hexadecimal address")
    if value >= ADDRESS_LIMIT:
        raise ControlValueError(f"{name}: {text!r} is not below 2**64")
    return value


def parse_quantity(text: str, name: str) -> int:
    """An address, offset or length as given on a command line: like
    :func:`parse_address`, with an optional binary suffix K, M, G or T (``4K`` = 4096).

    >>> parse_quantity("0x10", "offset"), parse_quantity("4K", "length")
    (16, 4096)

    :raises ControlValueError: for anything else, or a value ``>= 2**64``.
    """
    suffix = text[-1:].lower()
    scale = _SCALE.get(suffix)
    if scale is None:
        return parse_address(text, name)
    try:
        value = parse_address(text[:-1], name) * scale
    except ControlValueError:
        raise ControlValueError(f"{name}: {text!r} is not a decimal or 0x hexadecimal "
                                "number with an optional K/M/G/T suffix") from None
    if value >= ADDRESS_LIMIT:
        raise ControlValueError(f"{name}: {text!r} is not below 2**64")
    return value


def parse_base(text: str) -> int:
    """The ``base`` control: see :func:`parse_address`."""
    return parse_address(text, BASE)


def parse_holes(text: str) -> str:
    """``"eio"`` or ``"zero"``, unchanged.

    :raises ControlValueError: for anything else.
    """
    if text in (HOLES_EIO, HOLES_ZERO):
        return text
    raise ControlValueError(f"{HOLES}: {text!r} is not eio or zero")


def format_wordsize(value: int | None) -> str:
    """``32``, ``64`` or ``unset``."""
    return _UNSET if value is None else str(value)


def format_endian(value: str | None) -> str:
    """``little``, ``big`` or ``unset``."""
    return _UNSET if value is None else value


def format_base(value: int) -> str:
    """``0x`` and 16 lowercase hexadecimal digits."""
    return f"{value:#018x}"


def format_holes(value: str) -> str:
    """``eio`` or ``zero``."""
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    WORDSIZE: parse_wordsize,
    ENDIAN: parse_endian,
    BASE: parse_base,
    HOLES: parse_holes,
}

FORMATTERS: dict[str, Callable[[Any], str]] = {
    WORDSIZE: format_wordsize,
    ENDIAN: format_endian,
    BASE: format_base,
    HOLES: format_holes,
}


def decode(name: str, raw: bytes) -> str:
    """The text of a ``.ctl/`` write: ASCII, with at most one trailing newline removed.

    :raises ControlValueError: for non-ASCII bytes, an over-long value, or more than one
        trailing newline.
    """
    if len(raw) > _LONGEST:
        raise ControlValueError(f"{name}: a value of {len(raw)} bytes is too long")
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ControlValueError(f"{name}: {raw!r} is not ASCII text") from None


def parse(name: str, raw: bytes | str) -> Any:
    """The value of control ``name`` from what was written (bytes) or given (str).

    Bytes may end in one newline (what ``echo`` writes); a ``str`` (a mount option's
    value) is taken as is.

    :raises ControlValueError: for a bad value.
    :raises KeyError: if ``name`` is not a control.
    """
    parser = PARSERS[name]
    text = decode(name, raw) if isinstance(raw, bytes) else raw
    return parser(text)


def format_value(name: str, value: Any) -> bytes:
    """What reading control ``name`` gives: the value's text and a newline.

    :raises KeyError: if ``name`` is not a control.
    """
    return (FORMATTERS[name](value) + "\n").encode("ascii")
