"""Control values: the text of ``.ctl/`` files and of the matching mount options.

Each control has a parser (text as written to the file or given as ``NAME=VALUE`` on the
command line, to a Python value) and a formatter (the value to the text a read returns).
Parsing is :mod:`vmemfs.values`, the one grammar every entry point shares, so a value is
accepted in a ``.ctl/`` file exactly when it is accepted as a mount option, a command
argument or a map-file value (SPEC §4.4, §5.2 in docs/mounting.md).

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

from collections.abc import Callable
from typing import Any

from vmemfs import values

WORDSIZE = "wordsize"
ENDIAN = "endian"
BASE = "base"
HOLES = "holes"

HOLES_EIO = values.HOLES_EIO
HOLES_ZERO = values.HOLES_ZERO

CONTROLS: tuple[str, ...] = (WORDSIZE, ENDIAN, BASE, HOLES)
"""The writable control files, in the order ``.ctl/`` lists them."""

_LONGEST = 64
"""No valid value is longer than this; longer input is refused before any parsing."""


class ControlValueError(ValueError):
    """A control value (a ``.ctl/`` write or a mount option) is not acceptable.

    The message is one line: the control's name, the value as given, and what is
    accepted.
    """


PARSERS: dict[str, Callable[[str], Any]] = {
    WORDSIZE: values.parse_wordsize,
    ENDIAN: values.parse_endian,
    BASE: values.parse_address,
    HOLES: values.parse_holes,
}

FORMATTERS: dict[str, Callable[[Any], str]] = {
    WORDSIZE: values.format_wordsize,
    ENDIAN: values.format_endian,
    BASE: values.format_address,
    HOLES: str,
}


def checked(name: str, parser: Callable[[str], Any], text: str) -> Any:
    """``parser(text)``, with a refusal re-raised as :class:`ControlValueError` naming ``name``.

    :raises ControlValueError: ``NAME: <what values said>``.
    """
    try:
        return parser(text)
    except values.BadValue as error:
        raise ControlValueError(f"{name}: {error}") from None


def decode(name: str, raw: bytes) -> str:
    """The text of a ``.ctl/`` write: ASCII, with at most one trailing newline removed.

    :raises ControlValueError: for non-ASCII bytes, an over-long value, or more than one
        trailing newline.
    """
    if len(raw) > _LONGEST:
        raise ControlValueError(f"{name}: a value of {len(raw)} bytes is too long")
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if b"\n" in raw:
        raise ControlValueError(f"{name}: {raw!r} holds more than one line")
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
    return checked(name, parser, text)


def format_value(name: str, value: Any) -> bytes:
    """What reading control ``name`` gives: the value's text and a newline.

    :raises KeyError: if ``name`` is not a control.
    """
    return (FORMATTERS[name](value) + "\n").encode("ascii")
