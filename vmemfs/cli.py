"""The ``vmemfs`` command: mount, info, read, find, save (SPEC §5.4).

Each subcommand opens SOURCE the way ``mount.vmemfs`` does (detected by content: an ELF
file, a TOML map file, or any other file as raw bytes, SPEC §5.1) and works on the
resulting :class:`~vmemfs.MemoryMap`; ``vmemfs mount`` hands its arguments to
``mount.vmemfs`` unchanged.

User errors are one line on standard error, ``vmemfs: error: ...``, and an exit status:

====  =====================================================================
0     success
1     an input or output file cannot be used (missing, unreadable, malformed,
      an option that does not apply to it, a write failure)
2     a bad command line (unknown option, bad number, a search that needs a
      word size or byte order the map does not have)
3     a read met a hole (the bytes before it were written first)
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
from vmemfs import values
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
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for ``cat`` stopped by a closed pipe."""

READ_CHUNK = 1 << 20
"""Bytes copied to standard output per step of ``vmemfs read``."""

_NOT_GIVEN = object()
"""Default of ``--wordsize``/``--endian``: leave the map's value alone."""
_SOURCE_OPTIONS = ("address", "offset", "length", "physical", "wordsize", "endian",
                   "virtual")

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
  130  interrupted;  141  standard output closed early (e.g. by head)
"""

NUMBER_HELP = """\
numbers: decimal or 0x hexadecimal, optionally with a K, M, G or T suffix (powers
of 1024): 4096, 0x1000, 4K and 0x4K are the same.
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
        parse: Callable[[str], object] = {"wordsize": _wordsize, "endian": _endian}.get(
            name, parse_number)
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
    return settings


def open_map(source: str, settings: SourceSettings) -> MemoryMap:
    """Open ``source`` as a memory map (SPEC §5.1) with ``settings`` applied.

    Cost: reading the ELF headers or the map file; data is not read.

    :raises CommandError: (status 1) for a missing, unreadable or malformed source, or an
        option that does not apply to it.
    """
    try:
        return vmemfs.open(source, address=settings.address, offset=settings.offset,
                           length=settings.length, physical=settings.physical,
                           virtual=settings.virtual,
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
    address: int = args.address
    length: int = args.length
    if address + length > ADDRESS_LIMIT:
        raise CommandError(f"{address:#x} + {length:#x} passes the end of the address "
                           "space (2**64)", EXIT_USAGE)
    memmap = open_map(args.source, _settings(args))
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
            value = parse_number(text)
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
    start: int | None = args.start
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
             "(ELF: use p_paddr), wordsize=32|64|unset, endian=little|big|unset")
    parser.add_argument("--wordsize", type=_wordsize, default=_NOT_GIVEN,
                        metavar="32|64|unset", help="override the map's word size")
    parser.add_argument("--endian", type=_endian, default=_NOT_GIVEN,
                        metavar="little|big|unset", help="override the map's byte order")


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
    read.add_argument("address", metavar="ADDRESS", type=parse_number,
                      help="the first address")
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
    find.add_argument("--start", metavar="ADDRESS", type=parse_number, default=None,
                      help="only matches at or above ADDRESS")
    find.add_argument("--max", metavar="N", type=_positive, default=None,
                      help="stop after N matches")
    find.set_defaults(handler=command_find)

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
