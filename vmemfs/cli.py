"""The ``vmemfs`` command: mount, info, read, find, at, save (SPEC §5.4).

Each subcommand opens SOURCE the way ``mount.vmemfs`` does (detected by content: an ELF
file, a TOML map file, or any other file as raw bytes, SPEC §5.1) and works on the
resulting :class:`~vmemfs.MemoryMap`; ``vmemfs mount`` hands its arguments to
``mount.vmemfs`` unchanged.  With a symbol table (``--symbols FILE[@BIAS]``, or a map
file's ``symbols``), a symbol name, or ``NAME+OFFSET``, is taken wherever an address is.

User errors are one line on standard error, ``vmemfs: error: ...``, and an exit status:

====  =====================================================================
0     success
1     an input or output file cannot be used (missing, unreadable, malformed,
      an option that does not apply to it, a write failure)
2     a bad command line (unknown option, bad number, unknown symbol, a search or
      value that needs a word size or byte order the map does not have)
3     a read met a hole (the bytes before it were written first)
4     ``vmemfs at``: a string with no NUL within 1 MiB
130   interrupted (Ctrl-C)
141   standard output was closed early (``vmemfs read ... | head -c 10``)
====  =====================================================================

``vmemfs mount`` exits as ``mount.vmemfs`` does (0, 1 for usage, 32 for a failed mount).
Tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, NoReturn

import vmemfs
from vmemfs import typed, values
from vmemfs.errors import (
    HoleError,
    NoEndianError,
    NoWordsizeError,
    one_line,
    os_error_message,
)
from vmemfs.index import ADDRESS_LIMIT
from vmemfs.opening import title
from vmemfs.progress import ProgressBar, format_size

if TYPE_CHECKING:
    from vmemfs.memmap import MemoryMap

PROGRAM = "vmemfs"

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_HOLE = 3
EXIT_TOO_LONG = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for ``cat`` stopped by a closed pipe."""

READ_CHUNK = 1 << 20
"""Bytes copied to standard output per step of ``vmemfs read``."""

_NOT_GIVEN = object()
"""Default of ``--wordsize``/``--endian``: leave the map's value alone."""
_SOURCE_OPTIONS = ("address", "offset", "length", "physical", "wordsize", "endian",
                   "virtual", "symbols")

MACHINES = {
    2: "SPARC", 3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "S/390",
    40: "ARM", 43: "SPARC V9", 50: "IA-64", 62: "x86-64", 183: "AArch64", 243: "RISC-V",
    258: "LoongArch",
}
"""Names of common ELF ``e_machine`` values, for ``vmemfs info``."""

EXIT_STATUS_HELP = """\
exit status:
  0    success
  1    SOURCE or an output file cannot be used (missing, malformed, unwritable)
  2    bad command line (including --pointer/--align on a map without a word size)
  3    a read met a hole (the bytes before it were written first)
  4    at: a string with no NUL within 1 MiB
  130  interrupted;  141  standard output closed early (e.g. by head)
"""

NUMBER_HELP = """\
numbers: decimal or 0x hexadecimal, optionally with a K, M, G or T suffix (powers
of 1024): 4096, 0x1000, 4K and 0x4K are the same.  With --symbols (or a map file's
symbols), an address may also be a symbol name, or NAME+OFFSET / NAME-OFFSET.
"""

SOURCE_HELP = """\
SOURCE is detected by content: an ELF file (core or executable), a TOML map file with
[[map]] tables, or any other file as raw bytes at address 0 (see -o address=).
"""


class CommandError(Exception):
    """A user error: its message (one line) and the exit status to leave with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``vmemfs: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        self.exit(EXIT_USAGE, f"{PROGRAM}: error: {one_line(message)}{hint}\n")


# -------------------------------------------------------------------- argument types


def parse_number(text: str) -> int:
    """A decimal or ``0x`` hexadecimal integer with an optional K/M/G/T suffix (binary).

    >>> parse_number("0x1000"), parse_number("4K"), parse_number("1M")
    (4096, 4096, 1048576)

    :raises argparse.ArgumentTypeError: for anything else, or a value ``>= 2**64``.
    """
    try:
        return values.parse_address(text)
    except values.BadValue as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    value = parse_number(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive")
    return value


def _wordsize(text: str) -> int | None:
    try:
        return values.parse_wordsize(text)
    except values.BadValue as error:
        raise argparse.ArgumentTypeError(f"wordsize: {error}") from None


def _endian(text: str) -> str | None:
    try:
        return values.parse_endian(text)
    except values.BadValue as error:
        raise argparse.ArgumentTypeError(f"endian: {error}") from None


def address_argument(text: str) -> int | str:
    """An ADDRESS argument: a number, or a symbol name (``NAME``, ``NAME+OFFSET``,
    ``NAME-OFFSET``) kept as text, to be looked up by :func:`resolve_address` once
    SOURCE (and its symbol table) is open.

    Text that starts with a digit is a number, or an error: no symbol starts with one.

    :raises argparse.ArgumentTypeError: for a bad number.
    """
    try:
        return parse_number(text)
    except argparse.ArgumentTypeError:
        if not text or text[0].isdigit() or text[0] in "+-" or text.strip() != text:
            raise
        return text


def resolve_address(memmap: MemoryMap, value: int | str, what: str) -> int:
    """The address an :func:`address_argument` stands for, in ``memmap``'s symbols.

    ``NAME+OFFSET`` (or ``-OFFSET``) is the symbol's address plus (minus) a number, when
    no symbol is called that whole text.  Runtime complexity: ``O(1)``.

    :raises CommandError: (status 2) for a name without a symbol table, a name the table
        does not hold (with a close match where there is one), or an address that an
        offset moves out of ``[0, 2**64)``.
    """
    if isinstance(value, int):
        return value
    table = memmap.symbols
    if table is None:
        raise CommandError(f"{what}: {value!r} is not a number (a symbol name needs "
                           "--symbols FILE)", EXIT_USAGE)
    if value in table:
        return table[value]
    cut = max(value.rfind("+"), value.rfind("-"))
    if cut > 0 and value[:cut] in table:
        try:
            offset = values.parse_size(value[cut + 1:])
        except values.BadValue as error:
            raise CommandError(f"{what}: {value!r}: offset {error}", EXIT_USAGE) from None
        address = table[value[:cut]] + (offset if value[cut] == "+" else -offset)
        if not 0 <= address < ADDRESS_LIMIT:
            raise CommandError(f"{what}: {value!r} is outside [0, 2**64)", EXIT_USAGE)
        return address
    try:
        return table[value]
    except KeyError as error:  # SymbolNotFoundError: its one-line message
        raise CommandError(f"{what}: {error}", EXIT_USAGE) from None


def _text(text: str) -> str:
    return text


def _source_options(text: str) -> list[tuple[str, object]]:
    """One ``-o`` argument: comma-separated ``NAME=VALUE`` or ``physical``."""
    result: list[tuple[str, object]] = []
    for option in filter(None, text.split(",")):
        name, equals, value = option.partition("=")
        if name not in _SOURCE_OPTIONS:
            raise argparse.ArgumentTypeError(
                f"unknown option {name!r} (known: {', '.join(_SOURCE_OPTIONS)})")
        if name == "physical":
            if equals:
                raise argparse.ArgumentTypeError("option 'physical' takes no value")
            result.append((name, True))
            continue
        if name == "virtual" and not equals:
            result.append((name, True))
            continue
        if not value:
            raise argparse.ArgumentTypeError(f"option {name!r} needs a value: {name}=...")
        parsers: dict[str, Callable[[str], object]] = {
            "wordsize": _wordsize, "endian": _endian, "symbols": _text}
        parse = parsers.get(name, parse_number)
        try:
            result.append((name, parse(value)))
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"option {name}: {error}") from None
    return result


# -------------------------------------------------------------------- opening SOURCE


@dataclass
class SourceSettings:
    """How to open SOURCE: ``-o`` options, then ``--wordsize``/``--endian`` on top."""

    address: int | None = None
    offset: int | None = None
    length: int | None = None
    physical: bool = False
    virtual: bool | int = False
    """The kernel's virtual view (``True``, or the top-level table's physical address)."""
    symbols: str | None = None
    """A symbol table, ``FILE`` or ``FILE@BIAS`` (it replaces a map file's own)."""
    overrides: dict[str, object] = field(default_factory=dict)
    """``wordsize``/``endian`` to set after opening (``None`` as a value: unset)."""


def _settings(args: argparse.Namespace) -> SourceSettings:
    settings = SourceSettings()
    for options in args.options or ():
        for name, value in options:
            if name in ("wordsize", "endian"):
                settings.overrides[name] = value
            else:
                setattr(settings, name, value)
    for name in ("wordsize", "endian"):
        value = getattr(args, name, _NOT_GIVEN)
        if value is not _NOT_GIVEN:
            settings.overrides[name] = value
    if getattr(args, "symbols", None) is not None:
        settings.symbols = args.symbols
    return settings


def open_map(source: str, settings: SourceSettings) -> MemoryMap:
    """Open ``source`` as a memory map (SPEC §5.1) with ``settings`` applied.

    Cost: reading the ELF headers or the map file; data is not read.

    :raises CommandError: (status 1) for a missing, unreadable or malformed source or
        symbol table, or an option that does not apply to the source.
    """
    try:
        return vmemfs.open(source, address=settings.address, offset=settings.offset,
                           length=settings.length, physical=settings.physical,
                           virtual=settings.virtual, symbols=settings.symbols,
                           **settings.overrides)  # type: ignore[arg-type]
    except OSError as error:
        raise CommandError(os_error_message(error, source), EXIT_INPUT) from None
    except ValueError as error:  # FormatError included
        raise CommandError(one_line(error), EXIT_INPUT) from None


# -------------------------------------------------------------------- info


def _describe_machine(machine: int | None) -> str:
    if machine is None:
        return "unknown"
    name = MACHINES.get(machine)
    return f"{machine} ({name})" if name else str(machine)


def _range_line(start: int, end: int) -> str:
    length = end - start
    size = f"{length} bytes" if length < 1024 else f"{length} bytes ({format_size(length)})"
    return f"  {start:#018x}-{end:#018x}  {size}"


def info_lines(memmap: MemoryMap, source: str) -> list[str]:
    """The text ``vmemfs info`` prints, one string per line."""
    extents = memmap.extents()
    mappings = memmap.mappings
    lines = [
        f"source:    {source} ({title(memmap)})",
        f"wordsize:  {values.format_wordsize(memmap.wordsize)}",
        f"endian:    {values.format_endian(memmap.endian)}",
        f"machine:   {_describe_machine(memmap.machine)}",
    ]
    lines.extend(f"{label + ':':<10} {text}" for label, text in memmap.details)
    lines.extend(memmap.notes)
    table = memmap.symbols
    if table is not None:
        where = getattr(table, "source", "the map file")
        bias = getattr(table, "bias", 0)
        lines.append(f"symbols:   {len(table)} from {where}"
                     + (f" (bias {bias:#x})" if bias else ""))
    preferred = memmap.preferred_base
    if preferred is not None:
        lines.append(f"base:      {preferred:#018x} (from the map file)")
    lines.append(f"mappings:  {len(mappings)} (in order; later ones take precedence)")
    lines.extend(f"  {mapping}" for mapping in mappings)
    lines.append(f"extents:   {len(extents)}")
    lines.extend(_range_line(start, end) for start, end in extents)
    holes = [(extents[i][1], extents[i + 1][0]) for i in range(len(extents) - 1)]
    lines.append(f"holes:     {len(holes)} (between extents)")
    lines.extend(_range_line(start, end) for start, end in holes)
    mapped = memmap.mapped_bytes()
    summary = f"{mapped} bytes"
    if mapped >= 1024:
        summary += f" ({format_size(mapped)})"
    if extents:
        summary += f" from {extents[0][0]:#x} to {extents[-1][1]:#x}"
    lines.append(f"mapped:    {summary}")
    if holes:
        lines.append("hint:      tools that read mem front to back (volatility, dd) stop at its "
                     "first hole; a mount's views/lime and views/core.elf have none")
    return lines


def command_info(args: argparse.Namespace) -> int:
    """``vmemfs info``: print what SOURCE maps."""
    memmap = open_map(args.source, _settings(args))
    write = sys.stdout.write
    for line in info_lines(memmap, args.source):
        write(line + "\n")
    sys.stdout.flush()
    return EXIT_OK


# -------------------------------------------------------------------- read


def command_read(args: argparse.Namespace) -> int:
    """``vmemfs read``: copy LENGTH bytes from ADDRESS to standard output."""
    memmap = open_map(args.source, _settings(args))
    address = resolve_address(memmap, args.address, "ADDRESS")
    length: int = args.length
    if address + length > ADDRESS_LIMIT:
        raise CommandError(f"{address:#x} + {length:#x} passes the end of the address "
                           "space (2**64)", EXIT_USAGE)
    out = sys.stdout.buffer
    buffer = bytearray(min(length, READ_CHUNK))
    view = memoryview(buffer)
    position, end = address, address + length
    show = not _is_terminal(sys.stdout)  # never draw over bytes shown on the terminal
    with ProgressBar("reading", length, show=show) as bar:
        while position < end:
            want = min(len(buffer), end - position)
            count = memmap.read_into(position, view[:want])
            if count:
                out.write(view[:count])
            position += count
            bar.update(position - address)
            if count < want:
                out.flush()
                raise CommandError(
                    f"address {position:#x} is not mapped ({position - address} of "
                    f"{length} bytes written)", EXIT_HOLE)
    out.flush()
    return EXIT_OK


# -------------------------------------------------------------------- find


def search_pattern(memmap: MemoryMap, args: argparse.Namespace) -> tuple[bytes, int]:
    """The bytes to look for and the alignment of matches, from ``args``.

    :raises CommandError: (status 2) for an empty or malformed pattern, or a pointer or
        alignment the map's word size / byte order cannot give.
    """
    text: str = args.pattern
    align = 1
    if args.mode == "pointer":
        try:
            value = resolve_address(memmap, address_argument(text), "--pointer")
        except argparse.ArgumentTypeError as error:
            raise CommandError(f"--pointer: {error}", EXIT_USAGE) from None
        word = _word_bytes(memmap, "--pointer")
        if memmap.endian is None:
            raise CommandError("--pointer needs a byte order: the map has none "
                               "(give --endian little or --endian big)", EXIT_USAGE)
        if value >= 1 << (8 * word):
            raise CommandError(f"--pointer: {value:#x} does not fit in {8 * word} bits",
                               EXIT_USAGE)
        pattern = value.to_bytes(word, memmap.endian)
        align = word
    elif args.mode == "hex":
        digits = text.strip()
        if digits[:2] in ("0x", "0X"):
            digits = digits[2:]
        try:
            pattern = bytes.fromhex(digits.replace(":", " "))
        except ValueError:
            raise CommandError(f"--hex: {text!r} is not hexadecimal bytes (e.g. 'deadbeef' "
                               "or 'de ad be ef')", EXIT_USAGE) from None
    else:
        pattern = os.fsencode(text)
    if not pattern:
        raise CommandError("the pattern is empty", EXIT_USAGE)
    if args.align:
        align = _word_bytes(memmap, "--align")
    return pattern, align


def _word_bytes(memmap: MemoryMap, what: str) -> int:
    if memmap.wordsize is None:
        raise CommandError(f"{what} needs a word size: the map has none "
                           "(give --wordsize 32 or --wordsize 64)", EXIT_USAGE)
    return memmap.wordsize // 8


def command_find(args: argparse.Namespace) -> int:
    """``vmemfs find``: print the address of every match, one per line."""
    from vmemfs.search import iter_matches

    memmap = open_map(args.source, _settings(args))
    pattern, align = search_pattern(memmap, args)
    start = None if args.start is None else resolve_address(memmap, args.start, "--start")
    total = memmap.mapped_bytes(start or 0, ADDRESS_LIMIT)
    limit: int | None = args.max
    found = 0
    with ProgressBar("searching", total) as bar:
        # Matches on the terminal the bar is drawn on: erase the bar, print at once.
        interleaved = bar.enabled and _is_terminal(sys.stdout)
        writer = AddressWriter(sys.stdout.buffer, immediate=interleaved)

        def progress(scanned: int) -> None:
            writer.tick()
            bar.update(scanned)

        for address in iter_matches(memmap, pattern, start, align=align,
                                    progress=progress):
            if interleaved:
                bar.clear()
            writer.add(address)
            found += 1
            if found == limit:
                break
        writer.flush()
    return EXIT_OK


class AddressWriter:
    """Prints addresses as ``0x%016x`` lines, in batches.

    A batch is written when it holds :attr:`BATCH` addresses, at a :meth:`tick` at
    least :attr:`INTERVAL` seconds after the last write (so a slow search shows its
    matches as it goes), at :meth:`flush`, or at once when ``immediate``.  One write of
    many lines costs far less than a write per line (1.5 million matches: 0.5 s
    instead of 12 s).
    """

    BATCH = 4096
    INTERVAL = 0.2

    def __init__(self, stream: BinaryIO, *, immediate: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.immediate = immediate
        self.clock = clock
        self.pending: list[int] = []
        self._next_write = clock() + self.INTERVAL

    def add(self, address: int) -> None:
        """Queue one address; write the batch if it is full (or ``immediate``)."""
        self.pending.append(address)
        if self.immediate or len(self.pending) >= self.BATCH:
            self.flush()

    def tick(self) -> None:
        """Write what is queued if the last write is ``INTERVAL`` seconds old."""
        if self.pending and self.clock() >= self._next_write:
            self.flush()

    def flush(self) -> None:
        """Write and flush everything queued."""
        if self.pending:
            self.stream.write("".join([f"{a:#018x}\n" for a in self.pending]).encode())
            self.pending.clear()
        self.stream.flush()
        self._next_write = self.clock() + self.INTERVAL


# -------------------------------------------------------------------- at


def field_path(text: str) -> tuple[list[str], str]:
    """A FIELD argument of ``vmemfs at``: the links to follow and the last field.

    ``FIELD`` is a name of ``at/ADDRESS/`` or a path of them, as in the mount:
    ``deref/next/deref/string`` follows ``deref``, ``next`` and ``deref`` (links) and
    shows ``string`` at the address reached.

    :raises CommandError: (status 2) for a name that is not a field, or a value field
        before the end of the path.
    """
    names = text.split("/")
    for number, name in enumerate(names):
        if name not in typed.FIELDS:
            raise CommandError(f"FIELD {text!r}: {name!r} is not a field (fields: "
                               f"{' '.join(typed.FIELDS)})", EXIT_USAGE)
        if number < len(names) - 1 and name not in typed.LINKS:
            raise CommandError(f"FIELD {text!r}: {name!r} is a value, not a link "
                               f"({', '.join(typed.LINKS)}) to go through", EXIT_USAGE)
    return names[:-1], names[-1]


def at_text(memmap: MemoryMap, address: int, links: Sequence[str], last: str) -> bytes:
    """What ``cat at/ADDRESS/LINK/.../LAST`` shows in a mount: a value's text (see
    :mod:`vmemfs.typed`); for a link, the address it names as ``0x%016x`` and a newline
    (what ``readlink`` shows, without the ``../``).

    :raises CommandError: status 2 for an unset word size or byte order (``ENODATA`` in
        the mount), 3 at a hole (``EIO``), 4 for a string with no NUL within 1 MiB
        (``EFBIG``).
    """
    field = last
    try:
        for field in links:
            address = typed.link(memmap, address, field)
        field = last
        if last in typed.LINKS:
            return typed.address_name(typed.link(memmap, address, last)).encode() + b"\n"
        return typed.value(memmap, address, last)
    except NoWordsizeError:
        raise CommandError(f"{field} at {address:#x} needs a word size: the map has none "
                           "(give --wordsize 32 or --wordsize 64)", EXIT_USAGE) from None
    except NoEndianError:
        raise CommandError(f"{field} at {address:#x} needs a byte order: the map has none "
                           "(give --endian little or --endian big)", EXIT_USAGE) from None
    except HoleError as error:
        raise CommandError(f"{field} at {address:#x}: {error}", EXIT_HOLE) from None
    except typed.StringTooLong:
        raise CommandError(f"string at {address:#x}: no NUL within "
                           f"{typed.STRING_LIMIT >> 20} MiB", EXIT_TOO_LONG) from None


STRING_SHOWN = 200
"""Bytes of a string ``vmemfs at`` shows in its overview (the field itself shows all)."""


def quoted(data: bytes) -> str:
    r"""``data`` in double quotes, with C escapes for what is not printable ASCII.

    >>> print(quoted(b'say "hi"\n\xff'))
    "say \"hi\"\n\xff"
    """
    escapes = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}
    parts = []
    for byte in data:
        if byte in escapes:
            parts.append(escapes[byte])
        elif 0x20 <= byte < 0x7F:
            parts.append(chr(byte))
        else:
            parts.append(f"\\x{byte:02x}")
    return '"' + "".join(parts) + '"'


def overview_lines(memmap: MemoryMap, address: int) -> list[str]:
    """``vmemfs at SOURCE ADDRESS`` without FIELD: every field, one per line, with its
    value, or in brackets why it has none (``(word size unset)``, ``(not mapped at
    0x...)``, ``(no NUL within 1 MiB)``).  Strings are quoted and escaped, and cut at
    :data:`STRING_SHOWN` bytes."""
    lines = [f"address  {typed.address_name(address)}"]
    for name in typed.FIELDS:
        try:
            if name in typed.LINKS:
                shown = typed.address_name(typed.link(memmap, address, name))
            elif name == "string":
                data = typed.string(memmap, address)
                shown = quoted(data[:STRING_SHOWN]) + ("..." if len(data) > STRING_SHOWN
                                                      else "")
            else:
                shown = typed.value(memmap, address, name).decode("ascii").rstrip("\n")
        except NoWordsizeError:
            shown = "(word size unset)"
        except NoEndianError:
            shown = "(byte order unset)"
        except HoleError as error:
            shown = f"(not mapped at {error.address:#x})"
        except typed.StringTooLong:
            shown = f"(no NUL within {typed.STRING_LIMIT >> 20} MiB)"
        lines.append(f"{name:<8} {shown}")
    return lines


def command_at(args: argparse.Namespace) -> int:
    """``vmemfs at``: the values of ``at/ADDRESS/FIELD`` (or an overview of all)."""
    paths = [field_path(text) for text in args.fields]
    memmap = open_map(args.source, _settings(args))
    address = resolve_address(memmap, args.address, "ADDRESS")
    out = sys.stdout.buffer
    if not paths:
        out.write("".join(line + "\n" for line in overview_lines(memmap, address)).encode())
    for links, last in paths:
        try:
            text = at_text(memmap, address, links, last)
        except CommandError:
            out.flush()
            raise
        out.write(text)
    out.flush()
    return EXIT_OK


# -------------------------------------------------------------------- save


def command_save(args: argparse.Namespace) -> int:
    """``vmemfs save``: write SOURCE's map as an ELF core file OUT."""
    from vmemfs.formats.save import save

    memmap = open_map(args.source, _settings(args))
    with ProgressBar("saving", memmap.mapped_bytes()) as bar:
        try:
            save(memmap, args.out, progress=bar.update)
        except OSError as error:
            raise CommandError(os_error_message(error, args.out), EXIT_INPUT) from None
    return EXIT_OK


# -------------------------------------------------------------------- mount


MOUNT_PREFACE = """\
vmemfs mount SOURCE MOUNTPOINT [-o OPTIONS] [-f] [-v] [-n] [-s]

Runs mount.vmemfs with the same arguments; its help follows.

"""


def command_mount(arguments: Sequence[str]) -> int:
    """``vmemfs mount``: ``mount.vmemfs`` with the same arguments; its exit status."""
    from vmemfs import mount

    if any(argument in ("-h", "--help") for argument in arguments):
        sys.stdout.write(MOUNT_PREFACE)
        sys.stdout.flush()
    return mount.main(list(arguments))


# -------------------------------------------------------------------- the parser


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="an ELF file, a TOML map file, or a raw file")
    parser.add_argument(
        "-o", dest="options", metavar="OPTIONS", action="append", type=_source_options,
        help="comma-separated: address=A, offset=O, length=N (raw SOURCE), physical "
             "(ELF: use p_paddr), wordsize=32|64|unset, endian=little|big|unset, "
             "symbols=FILE[@BIAS]")
    parser.add_argument("--wordsize", type=_wordsize, default=_NOT_GIVEN,
                        metavar="32|64|unset", help="override the map's word size")
    parser.add_argument("--endian", type=_endian, default=_NOT_GIVEN,
                        metavar="little|big|unset", help="override the map's byte order")
    parser.add_argument(
        "--symbols", metavar="FILE[@BIAS]", default=None,
        help="a symbol table: System.map, /proc/kallsyms, or an ELF file's .symtab/.dynsym "
             "(@BIAS is added to every symbol: a PIE or library's load base); symbol "
             "names are then taken wherever an address is")


def _subparser(commands: argparse._SubParsersAction, name: str, summary: str,
               description: str, examples: str) -> argparse.ArgumentParser:
    paragraphs = description.split("\n\n")
    wrapped = "\n\n".join([textwrap.fill(paragraphs[0], 86), *paragraphs[1:]])
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=wrapped,
        epilog=f"examples:\n{examples}\n{NUMBER_HELP}\n{EXIT_STATUS_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``vmemfs`` argument parser (``mount`` is listed but dispatched before it)."""
    from vmemfs import __version__

    parser = _Parser(
        prog=PROGRAM,
        description="Inspect, search, save and mount memory maps: ELF cores and "
                    "executables, TOML map files, raw dumps.\n\n" + SOURCE_HELP,
        epilog="examples:\n"
               "  vmemfs info vmcore\n"
               "  vmemfs read vmcore 0xffffffff81000000 64 | xxd\n"
               "  vmemfs find vmcore 'Linux version'\n"
               "  vmemfs at vmcore --symbols System.map init_task pointer\n"
               "  vmemfs save guest.toml guest.core\n"
               "  vmemfs mount vmcore /mnt/vmcore -o holes=zero\n\n"
               "Run 'vmemfs COMMAND --help' for each command's options.\n\n"
               + EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    commands.add_parser(
        "mount", help="mount SOURCE as files (same as mount.vmemfs)", add_help=False)

    info = _subparser(
        commands, "info", "show word size, byte order, mappings, extents and holes",
        "Show what SOURCE maps: word size, byte order, ELF machine, every mapping in "
        "order, the extents (runs without holes), the holes between them, and the number "
        "of mapped bytes.\n\n" + SOURCE_HELP,
        "  vmemfs info vmcore\n"
        "  vmemfs info guest.toml\n"
        "  vmemfs info ram.bin -o address=0x100000,offset=4K,length=1M\n"
        "  vmemfs info vmlinux -o physical\n")
    _add_source_arguments(info)
    info.set_defaults(handler=command_info)

    read = _subparser(
        commands, "read", "write LENGTH bytes at ADDRESS to standard output",
        "Write the LENGTH bytes at ADDRESS to standard output, raw.  If the range meets a "
        "hole, the bytes before it are written, then an error names the hole's address "
        "and the exit status is 3.\n\n" + SOURCE_HELP,
        "  vmemfs read vmcore 0xffffffff81000000 256 | xxd\n"
        "  vmemfs read guest.toml 0x1000 4K > page.bin\n"
        "  vmemfs read ram.bin 0x7c00 512 -o address=0 | ndisasm -b16 -\n")
    _add_source_arguments(read)
    read.add_argument("address", metavar="ADDRESS", type=address_argument,
                      help="the first address (or a symbol, with --symbols)")
    read.add_argument("length", metavar="LENGTH", type=parse_number,
                      help="how many bytes")
    read.set_defaults(handler=command_read)

    find = _subparser(
        commands, "find", "print the addresses where a pattern lies",
        "Print every address where PATTERN lies in mapped memory, ascending, one per "
        "line as 0x%016x.  Matches may overlap; they never span a hole.  PATTERN is "
        "text (UTF-8) by default.  A progress bar is shown on a terminal.\n\n"
        + SOURCE_HELP,
        "  vmemfs find vmcore 'Linux version'\n"
        "  vmemfs find vmcore --hex 'de ad be ef' --max 1\n"
        "  vmemfs find vmcore --pointer 0xffffffff81000000\n"
        "  vmemfs find dump.bin --pointer 0x8049000 --wordsize 32 --endian little\n"
        "  vmemfs find vmcore --text init_task --align --start 0xffffffff80000000\n")
    _add_source_arguments(find)
    find.add_argument("pattern", metavar="PATTERN", help="what to look for")
    mode = find.add_mutually_exclusive_group()
    mode.add_argument("--text", dest="mode", action="store_const", const="text",
                      help="PATTERN is text, encoded as UTF-8 (the default)")
    mode.add_argument("--hex", dest="mode", action="store_const", const="hex",
                      help="PATTERN is hexadecimal bytes ('deadbeef', 'de ad be ef')")
    mode.add_argument("--pointer", dest="mode", action="store_const", const="pointer",
                      help="PATTERN is a number, stored as one word in the map's word "
                           "size and byte order, at word-aligned addresses")
    find.set_defaults(mode="text")
    find.add_argument("--align", action="store_true",
                      help="only matches at multiples of the word size")
    find.add_argument("--start", metavar="ADDRESS", type=address_argument, default=None,
                      help="only matches at or above ADDRESS")
    find.add_argument("--max", metavar="N", type=_positive, default=None,
                      help="stop after N matches")
    find.set_defaults(handler=command_find)

    at = _subparser(
        commands, "at", "typed values at an address, as a mount's at/ADDRESS/ shows them",
        "Print the values at ADDRESS as a mount shows them in at/ADDRESS/FIELD: "
        "int8 uint8 int16 uint16 int32 uint32 int64 uint64 (in the map's byte order), "
        "int (32 bits) and long (word size), signed, in decimal; pointer (0x and word "
        "size / 4 hex digits); string (the bytes up to the next NUL).  Each FIELD's text "
        "is printed in order, each ending with a newline.  deref, next and prev are links: "
        "as a FIELD they print the address they name (the pointer's value, one word on, "
        "one word back); in a path they are followed: deref/next/deref/string.  Without "
        "FIELD, every field is shown, one per line.\n\n" + SOURCE_HELP,
        "  vmemfs at vmcore 0xffffffff82a0c940 pointer\n"
        "  vmemfs at core.1234 --symbols ./app HEAD deref/string deref/next/deref/string\n"
        "  vmemfs at words.elf 0x2000000 uint32 --endian little\n"
        "  vmemfs at vmcore --symbols System.map init_task+0x10\n")
    _add_source_arguments(at)
    at.add_argument("address", metavar="ADDRESS", type=address_argument,
                    help="the address (or a symbol, with --symbols)")
    at.add_argument("fields", metavar="FIELD", nargs="*",
                    help="a field of at/ADDRESS/, or a path of links ending in one")
    at.set_defaults(handler=command_at)

    save = _subparser(
        commands, "save", "write SOURCE's map as an ELF core file",
        "Write the map SOURCE describes as an ELF core file OUT: one PT_LOAD per "
        "extent, readable by readelf, gdb, drgn and vmemfs, keeping every byte, every "
        "hole, the word size and the byte order.  OUT is replaced atomically.  A "
        "progress bar is shown on a terminal.\n\n" + SOURCE_HELP,
        "  vmemfs save guest.toml guest.core\n"
        "  vmemfs save ram.bin ram.core -o address=0x100000 --wordsize 64 --endian little\n"
        "  readelf -lW guest.core\n")
    _add_source_arguments(save)
    save.add_argument("out", metavar="OUT", help="the ELF core file to write")
    save.set_defaults(handler=command_save)
    return parser


# -------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """The ``vmemfs`` command; returns the exit status (see the module doc)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            if arguments and arguments[0] == "mount":
                return command_mount(arguments[1:])
            try:
                args = build_parser().parse_args(arguments)
            except SystemExit as stop:  # --help, --version, or a usage error
                return stop.code if isinstance(stop.code, int) else EXIT_USAGE
            return int(args.handler(args))
        except CommandError as error:
            _error(str(error))
            return error.status
        except HoleError as error:
            _error(str(error))
            return EXIT_HOLE
        except (NoWordsizeError, NoEndianError) as error:
            _error(str(error))
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _error(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"{PROGRAM}: error: {one_line(message)}\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so that the flush at exit cannot fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


if __name__ == "__main__":
    sys.exit(main())
