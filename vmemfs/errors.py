"""The exceptions vmemfs raises, in one place, and the one-line messages made of them."""

from __future__ import annotations

import os


class HoleError(LookupError):
    """An address that no mapping covers was read.

    ``address`` is the first unmapped address met (bytes lost from a backing file
    that shrank while mapped count as unmapped).
    """

    def __init__(self, address: int) -> None:
        super().__init__(f"address {address:#x} is not mapped")
        self.address = address


class NoWordsizeError(RuntimeError):
    """An operation needs the map's word size, and it is unset."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"{operation} needs a word size: set wordsize to 32 or 64 first")


class NoEndianError(RuntimeError):
    """An operation needs the map's byte order, and it is unset."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"{operation} needs a byte order: set endian to 'little' or 'big' first")


class FormatError(ValueError):
    """An input file (ELF, map file) is malformed.

    The message is one line that names the file and what is wrong with it.
    """


def one_line(text: object) -> str:
    """``str(text)`` with every run of whitespace, newlines included, made one space:
    an error message fit for one line of output."""
    return " ".join(str(text).split())


def os_error_message(error: OSError, default_name: str | os.PathLike[str]) -> str:
    """One line for ``error``: the file it names (else ``default_name``), a colon, and
    the reason (``strerror``, else the whole message)."""
    name = error.filename if error.filename is not None else default_name
    return f"{os.fsdecode(name)}: {error.strerror or one_line(error)}"
