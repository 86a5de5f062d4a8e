"""A live process as a memory map: ``/proc/PID`` or ``pid:PID`` (SPEC §3.7).

The layout is a snapshot: ``/proc/PID/maps`` is read once, when the process is opened,
and each of its lines becomes one mapping, in file order, at the addresses it gives.
The bytes are not: every read goes to ``/proc/PID/mem`` with ``preadv(2)`` at that
moment (never ``mmap``, never cached), so a map of a running process shows its memory as
it is now.  Every mapping's source is marked volatile.

What reads as a hole (SPEC §1.6) although its address is mapped:

* pages the kernel refuses to copy out: ``[vvar]`` and ``[vvar_vclock]`` (I/O mappings),
  pages behind a guard installed with ``madvise(MADV_GUARD_INSTALL)``, the pages of a
  file mapping past the end of the file, and pages unmapped since the snapshot;
* ``[vsyscall]`` (``0xffffffffff600000``): it stays in the map, so ``.ctl/maps`` shows
  it, but always reads as a hole: ``pread(2)`` cannot address the upper half of the
  address space, and on kernels in ``vsyscall=xonly`` mode the page is not readable at all;
* every page, once the process has ended: reads then return no bytes (``EIO`` on a
  mount) and never raise.

A page mapped ``PROT_NONE`` is *not* a hole: ``/proc/PID/mem`` reads with the rights
of a debugger (``FOLL_FORCE``), as ``gdb`` does, and serves its bytes.

Each mapping's :class:`~vmemfs.memmap.Mapping` shows the line it came from: ``kind`` is
the permissions (``r-xp``, ``rw-s``, ...) and ``source`` the path (``[heap]``,
``[stack]``, a file, ``[anon]`` for an anonymous mapping).  Its ``offset`` is the
offset in the mapped file for a file mapping (as the ``offset`` column of
``/proc/PID/maps``: the mapping with offset 0 of an executable is its load base), and
the address itself for anything else.

Reading needs the right to ``ptrace`` the process (``PTRACE_MODE_ATTACH``): root, or the
same user where ``kernel.yama.ptrace_scope`` allows it.  Without it the open fails with a
one-line :class:`ProcessAccessError`.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from vmemfs.errors import FormatError
from vmemfs.sources import Source, close_quietly

if TYPE_CHECKING:
    from vmemfs.memmap import MemoryMap

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
"""The host's page size: ``/proc/PID/mem`` fails or succeeds a page at a time."""

ADDRESS_SPACE = 1 << 64
"""Every per-mapping source spans the whole address space (offset = address)."""

PREAD_LIMIT = 1 << 63
"""``pread(2)`` takes a signed offset: addresses from here up read as holes."""

ANONYMOUS = "[anon]"
"""The name shown for a mapping that ``/proc/PID/maps`` gives no path for."""

HOST_WORDSIZE = 8 * struct.calcsize("P")
"""The host's word size in bits (64 on x86-64)."""
HOST_ENDIAN: Literal["little", "big"] = "little" if sys.byteorder == "little" else "big"
"""The host's byte order, ``"little"`` or ``"big"``."""

_SPEC_PROC = re.compile(r"/proc/([0-9]+)/?")
_SPEC_PID = re.compile(r"pid:([0-9]+)")
_MAPS_LINE = re.compile(
    r"([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) ([0-9]+)"
    r"(?: +(.*))?")


class ProcessAccessError(OSError):
    """A process cannot be opened: it does not exist, or its memory may not be read.

    ``filename`` is ``/proc/PID`` and ``strerror`` the reason, so that ``str()`` and
    :func:`vmemfs.errors.os_error_message` both give one line such as
    ``/proc/1234: cannot read its memory: Permission denied (needs the right to ptrace
    it)``.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def parse_process_spec(text: str) -> int | None:
    """The PID named by ``/proc/PID``, ``/proc/PID/`` or ``pid:PID``; ``None`` otherwise.

    >>> parse_process_spec("/proc/1234/"), parse_process_spec("pid:7")
    (1234, 7)
    >>> parse_process_spec("/proc/self") is None, parse_process_spec("core") is None
    (True, True)
    """
    match = _SPEC_PROC.fullmatch(text) or _SPEC_PID.fullmatch(text)
    if match is None:
        return None
    pid = int(match.group(1))
    return pid if pid > 0 else None


@dataclass(frozen=True)
class ProcessRegion:
    """One line of ``/proc/PID/maps``: ``[start, end)`` with its permissions and path."""

    start: int
    end: int
    permissions: str
    """Four characters: ``r``/``-``, ``w``/``-``, ``x``/``-``, then ``p`` or ``s``."""
    file_offset: int
    device: str
    inode: int
    path: str
    """The path column, or :data:`ANONYMOUS` when it is empty."""

    @property
    def length(self) -> int:
        """The number of bytes covered."""
        return self.end - self.start

    @property
    def file_backed(self) -> bool:
        """Whether a file (``inode != 0``) backs the mapping."""
        return self.inode != 0

    @property
    def source_offset(self) -> int:
        """The offset shown with the mapping: the file offset for a file mapping, else
        the start address."""
        return self.file_offset if self.file_backed else self.start


def parse_maps(text: str, name: str) -> list[ProcessRegion]:
    """The regions of a ``/proc/PID/maps`` text, in file order.

    Runtime complexity: ``O(lines)``.

    :raises FormatError: ``NAME/maps: line N at offset 0x..: ...`` for a line that is
        not ``START-END PERMS OFFSET DEV INODE [PATH]`` or whose range is empty or
        reversed.
    """
    regions: list[ProcessRegion] = []
    position = 0
    for number, line in enumerate(text.split("\n"), start=1):
        at = position
        position += len(line) + 1
        if not line:
            continue
        match = _MAPS_LINE.fullmatch(line)
        if match is None:
            raise FormatError(f"{name}/maps: line {number} at offset {at:#x}: not "
                              f"'START-END PERMS OFFSET DEV INODE [PATH]': {line[:80]!r}")
        start, end = int(match.group(1), 16), int(match.group(2), 16)
        if not start < end <= ADDRESS_SPACE:
            raise FormatError(f"{name}/maps: line {number} at offset {at:#x}: empty or "
                              f"reversed range {start:#x}-{end:#x}")
        regions.append(ProcessRegion(
            start, end, match.group(3), int(match.group(4), 16), match.group(5),
            int(match.group(6)), match.group(7) or ANONYMOUS))
    return regions


class ProcessMemory:
    """``/proc/PID/mem`` held open (``O_RDONLY``): the bytes of a process, by address.

    One descriptor serves every mapping of the process.  It stays bound to the address
    space that was there at open: a later ``exec`` or the process's end turns every read
    into a short one (0 bytes), never into another process's memory.
    """

    def __init__(self, fd: int, name: str) -> None:
        """Take ownership of ``fd`` (closed by :meth:`close`, or when dropped)."""
        self.fd = fd
        self.name = name
        self._closer = weakref.finalize(self, close_quietly, fd)

    def read_into(self, address: int, buffer: memoryview) -> int:
        """Copy the process's bytes from ``address`` into ``buffer``; return the count.

        The count is short at the first byte that cannot be read: a page the kernel
        refuses (``EIO``), an address at or past ``2**63``, the end of the process, or a
        closed descriptor.  A request that fails is retried page by page, so a read that
        spans an unreadable page returns exactly the bytes before it.  Never raises for
        an unreadable byte.

        Runtime complexity: one ``preadv`` per call when every page reads, one per page
        from the first failure on.
        """
        fd = self.fd
        total = len(buffer)
        if address + total > PREAD_LIMIT:
            total = max(0, PREAD_LIMIT - address)
        done = 0
        paged = False
        while done < total and fd >= 0:
            at = address + done
            want = total - done
            if paged:
                want = min(want, PAGE_SIZE - at % PAGE_SIZE)
            try:
                count = os.preadv(fd, [buffer[done:done + want]], at)
            except OSError:
                # EIO for an unreadable page (some kernels fail a whole request that
                # reaches one), ESRCH or EFAULT as the process goes: retry this page alone.
                if paged or want <= PAGE_SIZE - at % PAGE_SIZE:
                    break
                paged = True
                continue
            if count <= 0:
                break
            done += count
        return done

    def close(self) -> None:
        """Close the descriptor; later reads return 0 bytes."""
        self.fd = -1
        self._closer()


class ProcessMappingSource(Source):
    """One mapping of a live process, as a :class:`~vmemfs.sources.Source`.

    Offsets run from ``delta`` up; offset ``o`` is the process's address
    ``o - delta``: ``delta`` is 0 for an anonymous mapping (offset = address) and the
    file offset minus the start address for a file mapping (offset = file offset).
    Volatile: nothing read is cached.  :meth:`close` closes the shared descriptor.
    """

    volatile = True

    def __init__(self, memory: ProcessMemory, name: str, delta: int) -> None:
        self.memory = memory
        self.name = name
        self.delta = delta

    def size(self) -> int:
        return ADDRESS_SPACE

    def read_into(self, offset: int, buffer: memoryview) -> int:
        return self.memory.read_into((offset - self.delta) % ADDRESS_SPACE, buffer)

    def close(self) -> None:
        self.memory.close()


class ProcessDump:
    """A running process opened for reading: its layout, and its memory descriptor.

    ``regions`` is the snapshot of ``/proc/PID/maps``; :meth:`add_to` maps them.
    """

    def __init__(self, pid: int, memory: ProcessMemory, regions: list[ProcessRegion],
                 command: str, machine: int | None = None) -> None:
        self.pid = pid
        self.name = f"/proc/{pid}"
        self.memory = memory
        self.regions: tuple[ProcessRegion, ...] = tuple(regions)
        self.command = command
        """The command name (``/proc/PID/comm``) at open, ``?`` if it could not be read."""
        self.machine = machine
        """The ELF ``e_machine`` of the process's executable (``None``: unknown), kept
        in a saved core."""
        self.wordsize = HOST_WORDSIZE
        self.endian = HOST_ENDIAN

    @property
    def info(self) -> list[str]:
        """Lines describing the process, for ``vmemfs info``."""
        return ["format:    live process", f"pid:       {self.pid}",
                f"command:   {self.command}", f"mappings:  {len(self.regions)}"]

    def add_to(self, memmap: MemoryMap,
               regions: Iterable[ProcessRegion] | None = None) -> None:
        """Map every region (or only ``regions``) at its addresses, in order; set the
        map's word size and byte order to the host's, and its ``machine`` (when unset) to
        the executable's ``e_machine``.

        Each region becomes one mapping of ``kind`` = its permissions and source name =
        its path (see the module doc).  ``regions`` may be any regions of this process,
        pieces of its own included (to leave pages out, for instance).

        Runtime complexity: amortised ``O(log n)`` per region.

        :raises FormatError: if the map's word size or byte order is already set to
            something else; nothing is added then.
        """
        if memmap.wordsize not in (None, self.wordsize):
            raise FormatError(f"{self.name}: a {self.wordsize}-bit process, but the map's "
                              f"wordsize is already {memmap.wordsize}")
        if memmap.endian not in (None, self.endian):
            raise FormatError(f"{self.name}: a {self.endian}-endian process, but the map's "
                              f"endian is already {memmap.endian}")
        for region in self.regions if regions is None else regions:
            delta = (region.source_offset - region.start) % ADDRESS_SPACE
            source = ProcessMappingSource(self.memory, region.path, delta)
            memmap.add_source(source, region.start, offset=region.source_offset,
                              length=region.length, kind=region.permissions)
        memmap.wordsize = self.wordsize
        memmap.endian = self.endian
        if self.machine is not None and memmap.machine is None:
            memmap.machine = self.machine

    def read_into(self, address: int, buffer: memoryview) -> int:
        """Read the process's memory directly (see :meth:`ProcessMemory.read_into`)."""
        return self.memory.read_into(address, buffer)

    def close(self) -> None:
        """Close ``/proc/PID/mem``: maps built from this process read holes from then on."""
        self.memory.close()


def open_process(pid: int) -> ProcessDump:
    """Open the process ``pid``: ``/proc/PID/mem`` read-only, and a snapshot of its maps.

    :raises ProcessAccessError: (an ``OSError``, one line) if there is no such process
        (``ESRCH``), or its memory may not be read (``EACCES``/``EPERM``: the caller
        needs the right to ``ptrace`` it).
    :raises FormatError: if ``/proc/PID/maps`` holds a line it cannot parse.
    :raises ValueError: if ``pid`` is not positive.
    """
    pid = int(pid)
    if pid <= 0:
        raise ValueError(f"a process id must be positive, not {pid}")
    name = f"/proc/{pid}"
    try:
        fd = os.open(f"{name}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise _access_error(error, name) from None
    memory = ProcessMemory(fd, name)
    try:
        with open(f"{name}/maps", "rb") as stream:
            text = stream.read().decode("utf-8", "surrogateescape")
        _check_readable(memory, name)
    except OSError as error:
        memory.close()
        raise _access_error(error, name) from None
    except BaseException:
        memory.close()
        raise
    try:
        regions = parse_maps(text, name)
    except FormatError:
        memory.close()
        raise
    return ProcessDump(pid, memory, regions, _command(name), _machine(name))


def load_process(pid: int) -> MemoryMap:
    """A new map of the process ``pid`` (see :func:`open_process` and
    :meth:`ProcessDump.add_to`).

    :raises ProcessAccessError: as :func:`open_process`.
    """
    from vmemfs.memmap import MemoryMap

    dump = open_process(pid)
    memmap = MemoryMap()
    try:
        dump.add_to(memmap)
    except BaseException:
        dump.close()
        raise
    return memmap


def _check_readable(memory: ProcessMemory, name: str) -> None:
    """Raise ``PermissionError`` if reading is refused (an open that succeeded may still
    be refused at read time on some kernels); every other outcome is accepted."""
    try:
        os.pread(memory.fd, 1, 0)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM):
            raise
    # Address 0 is never mapped: EIO is the normal answer.


def _access_error(error: OSError, name: str) -> ProcessAccessError:
    if isinstance(error, FileNotFoundError) or error.errno == errno.ESRCH:
        return ProcessAccessError(errno.ESRCH, "no such process", name)
    if error.errno in (errno.EACCES, errno.EPERM):
        return ProcessAccessError(
            error.errno, f"cannot read its memory: {os.strerror(error.errno)} "
            "(needs the right to ptrace it)", name)
    return ProcessAccessError(error.errno, f"cannot read its memory: "
                              f"{error.strerror or error}", name)


def _command(name: str) -> str:
    try:
        with open(f"{name}/comm", "rb") as stream:
            return stream.read().decode("utf-8", "replace").rstrip("\n") or "?"
    except OSError:
        return "?"


def _machine(name: str) -> int | None:
    """``e_machine`` from the ELF header of ``NAME/exe``, or ``None``."""
    try:
        with open(f"{name}/exe", "rb") as stream:
            header = stream.read(20)
    except OSError:
        return None
    if len(header) < 20 or not header.startswith(b"\x7fELF") or header[5] not in (1, 2):
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
