"""``mount.vmemfs``'s command line: flags and ``-o`` options, mount(8)'s way (SPEC §5.1,
§5.2 in docs/mounting.md).  No mounting here: see :mod:`vmemfs.mount`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmemfs import ctl, values

PROGRAM = "mount.vmemfs"
EXIT_OK = 0
EXIT_USAGE = 1
EXIT_MOUNT_FAILED = 32
"""mount(8)'s exit status for "mount failure"."""

SUBTYPE = "vmemfs"
FILESYSTEM_TYPES = ("vmemfs", "fuse.vmemfs")

USAGE = f"""\
usage: {PROGRAM} SOURCE MOUNTPOINT [-o OPTION[,OPTION...]] [-f] [-v] [-n] [-s]

Mount SOURCE (an ELF core or executable, a TOML map file, a live process /proc/PID,
or any other file as raw bytes) at MOUNTPOINT: MOUNTPOINT/mem, extents/, .ctl/, at/.

options (-o, comma-separated, may be repeated):
  address=A, offset=O, length=N   place a raw SOURCE's bytes [O, O+N) at address A
                                  (decimal or 0x hex, optional K/M/G/T suffix)
  physical                        ELF: place loads at p_paddr instead of p_vaddr
  base=A                          the address shown at offset 0 of mem
  wordsize=32|64|unset            word size of the map (overrides SOURCE's)
  endian=little|big|le|be|unset   byte order of the map (overrides SOURCE's)
  holes=eio|zero                  how mem reads holes (default eio)
  cache=auto|never                auto: mem through the page cache where that is exact;
                                  never: always direct_io (default auto)
  symbols=FILE[@BIAS]             System.map, kallsyms or ELF symbols: MOUNTPOINT/sym/
  virtual[=ADDRESS]               an x86-64 Linux guest's physical dump as the kernel's
                                  virtual address space (page tables from VMCOREINFO, or
                                  the top-level table's physical address, CR3)
  allow_other                     let other users read the mount
  fsname=NAME                     what /proc/mounts shows as source
  auto_unmount                    unmount when the daemon dies
  debug                           log debug messages
  foreground                      same as -f
  ro, nodev, nosuid, noexec, ...  passed on to the kernel; rw, defaults, noauto,
                                  user, users, nofail, _netdev, x-* are accepted
flags:
  -f  stay in the foreground, log to stderr
  -v  say what was mounted, and the daemon's process id
  -s  sloppy: warn about unknown options instead of failing
  -n  accepted for mount(8) (there is no mtab to update)

example:
  {PROGRAM} vmcore /mnt/vmcore -o ro,holes=zero
"""

_FLAG_OPTIONS = frozenset({
    "physical", "allow_other", "debug", "foreground", "auto_unmount"})
_VALUE_OPTIONS = frozenset({
    "address", "offset", "length", "base", "wordsize", "endian", "holes", "cache",
    "fsname", "symbols"})
_KERNEL_FLAGS = frozenset({
    "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "sync", "async", "dirsync",
    "noatime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime"})
"""mount(8) flags handed on to libfuse, which applies them to the kernel mount."""
_DROPPED_FLAGS = frozenset({
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group",
    "nofail", "_netdev"})
"""mount(8) and fstab flags that mean nothing to a FUSE daemon."""


class UsageError(Exception):
    """A bad command line, option or source: one line, exit status 1."""


class MountError(Exception):
    """The mount itself failed (the mount point, libfuse, the kernel): exit status 32."""


# -------------------------------------------------------------------- the command line


@dataclass
class MountOptions:
    """What ``-o`` said, checked."""

    address: int | None = None
    offset: int | None = None
    length: int | None = None
    physical: bool = False
    base: int | None = None
    controls: dict[str, Any] = field(default_factory=dict)
    """``wordsize`` and ``endian`` as given (``None`` means "unset")."""

    def source_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`vmemfs.open` these options stand for."""
        result: dict[str, Any] = {"address": self.address, "offset": self.offset,
                                  "length": self.length, "physical": self.physical,
                                  "symbols": self.symbols, "virtual": self.virtual}
        result.update(self.controls)
        return result
    holes: str = values.HOLES_EIO
    cache: str = values.CACHE_AUTO
    """``auto`` (``mem`` through the page cache where that is exact) or ``never``."""
    allow_other: bool = False
    auto_unmount: bool = False
    fsname: str | None = None
    symbols: str | None = None
    virtual: bool | int = False
    """The kernel's virtual view: ``True`` (table from VMCOREINFO) or the top-level page
    table's physical address."""
    """``FILE`` or ``FILE@BIAS``: a symbol table for ``sym/``."""
    debug: bool = False
    foreground: bool = False
    kernel_flags: list[str] = field(default_factory=list)
    """mount(8) flags for libfuse (``ro``, ``nodev``, ...), in the order given."""


@dataclass
class Invocation:
    """A parsed ``mount.vmemfs`` command line."""

    source: str
    mountpoint: str
    options: MountOptions
    verbose: bool = False
    sloppy: bool = False
    warnings: list[str] = field(default_factory=list)


def parse_option(option: str, options: MountOptions, *, sloppy: bool = False) -> str | None:
    """Apply one ``-o`` option (``NAME`` or ``NAME=VALUE``) to ``options``.

    Returns a warning to print (an unknown option under ``sloppy``), else ``None``.

    :raises UsageError: for an unknown option, a bad value, a value given to a flag, or
        a missing value.
    """
    name, equals, value = option.partition("=")
    if name == "virtual":
        if not equals:
            options.virtual = True
        else:
            try:
                options.virtual = ctl.checked(name, values.parse_address, value)
            except ctl.ControlValueError as error:
                raise UsageError(f"option {error}") from None
        return None
    if name in _FLAG_OPTIONS:
        if equals:
            raise UsageError(f"option {name!r} takes no value")
        setattr(options, name, True)
        return None
    if name in _VALUE_OPTIONS:
        if not equals or not value:
            raise UsageError(f"option {name!r} needs a value: {name}=...")
        try:
            _set_value_option(options, name, value)
        except ctl.ControlValueError as error:
            raise UsageError(f"option {error}") from None
        return None
    if option in _KERNEL_FLAGS:
        options.kernel_flags.append(option)
        return None
    if option in _DROPPED_FLAGS or option.startswith(("x-", "comment=")) or not option:
        return None
    if sloppy:
        return f"ignoring unknown option {option!r}"
    raise UsageError(f"unknown option {option!r}")


_VALUE_PARSERS = {
    "address": values.parse_address, "offset": values.parse_size,
    "length": values.parse_size, "base": values.parse_address,
    "wordsize": values.parse_wordsize, "endian": values.parse_endian,
    "holes": values.parse_holes, "cache": values.parse_cache,
}


def _set_value_option(options: MountOptions, name: str, value: str) -> None:
    if name == "fsname":
        options.fsname = value
        return
    if name == "symbols":
        options.symbols = value
        return
    parsed = ctl.checked(name, _VALUE_PARSERS[name], value)
    if name in (ctl.WORDSIZE, ctl.ENDIAN):
        options.controls[name] = parsed
    else:
        setattr(options, name, parsed)


def parse_command_line(argv: Sequence[str]) -> Invocation:
    """Parse ``mount.vmemfs``'s arguments (without the program name).

    Accepts ``-o`` (repeatable, also ``-oOPTIONS``), ``-f``, ``-v``, ``-n``, ``-s``,
    the ``-t TYPE`` mount(8) adds for ``fuse.vmemfs``, and flags grouped as ``-fv``.

    :raises UsageError: for anything else, or not exactly two operands.
    """
    operands: list[str] = []
    option_texts: list[str] = []
    flags: set[str] = set()
    arguments = list(argv)
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        position += 1
        if argument == "--":
            operands.extend(arguments[position:])
            break
        if not argument.startswith("-") or argument == "-":
            operands.append(argument)
            continue
        letters = argument[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in "ot":
                if not letters:
                    if position == len(arguments):
                        raise UsageError(f"option -{letter} needs an argument")
                    letters = arguments[position]
                    position += 1
                if letter == "o":
                    option_texts.append(letters)
                elif letters not in FILESYSTEM_TYPES:
                    raise UsageError(f"-t {letters!r}: this helper mounts type vmemfs only")
                letters = ""
            elif letter in "fvns":
                flags.add(letter)
            else:
                raise UsageError(f"unknown flag {'-' + letter!r} (see {PROGRAM} --help)")
    if len(operands) != 2:
        raise UsageError(f"expected SOURCE and MOUNTPOINT, got {len(operands)} operands "
                         f"(see {PROGRAM} --help)")
    options = MountOptions(foreground="f" in flags)
    invocation = Invocation(operands[0], operands[1], options, verbose="v" in flags,
                            sloppy="s" in flags)
    for text in option_texts:
        for option in text.split(","):
            warning = parse_option(option, options, sloppy=invocation.sloppy)
            if warning:
                invocation.warnings.append(warning)
    return invocation
