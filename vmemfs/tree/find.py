"""``find/``: search results as files (docs/mounting.md, "Typed reads and search").

::

    find/
      text/STRING       every address where the bytes of STRING occur
      hex/HEXDIGITS     every address where those bytes occur ("2f00", "2f 00": any bytes)
      pointer/ADDRESS   every word-aligned address holding ADDRESS (decimal or 0x)

The three directories list nothing; any valid name can be looked up in them, and the
nodes made are dynamic (counted, dropped when the kernel forgets them).  Opening a result
file fixes what is searched for — the pattern, and for ``pointer/`` the word size and
endian in force — and starts the scan at once, off the request loop: one worker thread
(:func:`trio.to_thread.run_sync`) runs :func:`vmemfs.search.iter_matches` over the map,
chunk by chunk (8 MiB), so that every other request (a read of ``mem``, an ``ls``) is
answered while it runs.  Matches are kept as 64-bit integers (8 bytes each) and shown
as lines of exactly :data:`LINE_SIZE` bytes, ``0x%016x\\n``, ascending: the same list
as :meth:`~vmemfs.MemoryMap.find_all` / :meth:`~vmemfs.MemoryMap.find_pointer_all`.

A read waits until the line it starts in is found or the scan has ended, then returns
what is found from there (up to the size asked: results stream as they come).  The file
is served with ``direct_io`` and shows size 0 (the size is known only when the scan
ends).  Closing the file stops the scan at the next chunk; a scan that runs more than
:data:`AHEAD` matches ahead of its reader pauses until the reader catches up, so memory
follows what is read, not what a pathological pattern (one byte, in zeros) would find.
"""

from __future__ import annotations

import errno
import logging
import threading
from array import array
from collections.abc import Iterator

import trio

from vmemfs import typed, values
from vmemfs.errors import NoEndianError, NoWordsizeError
from vmemfs.memmap import MemoryMap
from vmemfs.search import iter_matches
from vmemfs.sources import Buffer
from vmemfs.tree.files import FIND_HEX, FIND_POINTER, FIND_TEXT, Directory
from vmemfs.tree.nodes import (
    DIRECTORY_MODE,
    READ_ONLY_MODE,
    Attributes,
    Handle,
    Node,
    NodeError,
    NodeTable,
    NotFound,
    Refused,
)
from vmemfs.tree.state import MountState

log = logging.getLogger(__name__)

TEXT = "text"
HEX = "hex"
POINTER = "pointer"
KINDS: tuple[tuple[str, int], ...] = ((TEXT, FIND_TEXT), (HEX, FIND_HEX),
                                      (POINTER, FIND_POINTER))
"""The search directories, in listing order, with their fixed inode numbers."""

LINE_SIZE = len(b"0x0000000000000000\n")
"""Every line of a result file: ``0x``, 16 hex digits, a newline (19 bytes)."""
AHEAD = 1 << 20
"""Matches a scan may find beyond the last one read before it pauses (8 MiB of them)."""


class PointerTooWide(NodeError):
    """``pointer/ADDRESS`` with an ADDRESS that does not fit in the word size
    (``EINVAL``)."""

    errno = errno.EINVAL


class _Stopped(Exception):
    """Raised in the scanning thread when the file was closed (or the mount ends)."""


def pattern_of(kind: str, name: bytes) -> bytes | int | None:
    """What a name in ``find/KIND/`` searches for: the bytes (``text``, ``hex``) or the
    address (``pointer``), or ``None`` for an invalid name.

    >>> pattern_of("hex", b"2f 00"), pattern_of("pointer", b"0x10"), pattern_of("hex", b"2")
    (b'/\\x00', 16, None)
    """
    if kind == TEXT:
        return name
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        return None
    if kind == HEX:
        try:
            return values.parse_hex(text)
        except values.BadValue:
            return None
    return typed.parse_address_name(text)


# -------------------------------------------------------------------- the scan


class SearchHandle(Handle):
    """One open result file: the scan it started and the matches found so far.

    The scanning thread appends to :attr:`matches`; readers on the request loop only
    read what is there (a match once appended is final).  :meth:`release` stops the
    scan at the next chunk.
    """

    direct_io = True
    keep_cache = False
    asynchronous = True

    def __init__(self, memory_map: MemoryMap, pattern: bytes, align: int, label: str) -> None:
        self.memory_map = memory_map
        self.pattern = pattern
        self.align = align
        self.label = label
        self.matches: array[int] = array("Q")
        self.done = False
        """The scan ended (finished, stopped or failed): no more matches will come."""
        self.finished = False
        """The scan reached the end of the map."""
        self.error: BaseException | None = None
        self.scanned = 0
        """Bytes scanned so far."""
        self.paused = False
        """The scan waits for its reader (it ran :data:`AHEAD` matches ahead)."""
        self._stop = False
        self._read_up_to = 0
        """One past the highest match index a reader has been served."""
        self._pace = threading.Condition()
        self._changed: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = False

    # ---------------------------------------------------------------- starting, stopping

    def start(self) -> None:
        """Start the scan now if called on the request loop (at open); otherwise the
        first :meth:`read_async` starts it (the adapter always opens on the loop)."""
        try:
            self._token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return
        self._started = True
        self._changed = trio.Event()
        trio.lowlevel.spawn_system_task(self._run, name=f"find {self.label}")

    def release(self) -> None:
        """The file was closed: stop the scan at the next chunk."""
        with self._pace:
            self._stop = True
            self._pace.notify_all()

    async def _run(self) -> None:
        limiter = trio.CapacityLimiter(1)  # its own thread: paused scans never starve others
        try:
            await trio.to_thread.run_sync(self._scan, abandon_on_cancel=True, limiter=limiter)
        except trio.Cancelled:
            self.release()  # the mount ends: the abandoned thread stops at its next chunk
            raise
        except BaseException as error:  # a bug: its reader gets EIO, the log a traceback
            self.error = error
            log.exception("find/%s: the scan failed", self.label)
        finally:
            self.done = True
            self._wake()

    def _scan(self) -> None:
        """The scanning thread: every match, appended ascending; stops when told."""
        append = self.matches.append
        try:
            for address in iter_matches(self.memory_map, self.pattern, align=self.align,
                                        progress=self._between_chunks):
                append(address)
        except _Stopped:
            log.debug("find/%s: stopped (closed) after %d bytes and %d matches",
                      self.label, self.scanned, len(self.matches))
            return
        self.finished = True
        log.debug("find/%s: finished: %d bytes scanned, %d matches", self.label,
                  self.scanned, len(self.matches))

    def _between_chunks(self, scanned: int) -> None:
        """Called by the scan after each chunk: publish, pause if far ahead, or stop."""
        self.scanned = scanned
        self._notify()
        with self._pace:
            while not self._stop and len(self.matches) - self._read_up_to > AHEAD:
                self.paused = True
                self._pace.wait()
            self.paused = False
            if self._stop:
                raise _Stopped

    def _notify(self) -> None:
        """From the scanning thread: wake the readers on the request loop."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass

    def _wake(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = trio.Event()
            changed.set()

    # ---------------------------------------------------------------- reading

    async def read_async(self, offset: int, size: int) -> Buffer:
        """The result text from ``offset``: up to ``size`` bytes of the lines found so
        far, waiting until the line at ``offset`` is found or the scan has ended (then
        empty at and past the end).

        Runtime complexity: ``O(size)`` formatting, once the matches are there.

        :raises: the scan's own failure (an ``EIO`` for the reader), if it failed.
        """
        if not self._started:  # opened off the request loop (a model test)
            self.start()
        first = offset // LINE_SIZE
        while first >= len(self.matches) and not self.done:
            changed = self._changed
            assert changed is not None
            with self._pace:  # the reader waits here: let a paused scan go on
                self._read_up_to = max(self._read_up_to, first)
                self._pace.notify_all()
            await changed.wait()
        if self.error is not None and first >= len(self.matches):
            raise self.error
        count = len(self.matches)
        end = min(offset + size, count * LINE_SIZE)
        if end <= offset:
            return b""
        last = -(-end // LINE_SIZE)
        text = b"".join([b"0x%016x\n" % address for address in self.matches[first:last]])
        if last > self._read_up_to:
            with self._pace:
                self._read_up_to = max(self._read_up_to, last)
                self._pace.notify_all()
        start = first * LINE_SIZE
        return text[offset - start:end - start]


# -------------------------------------------------------------------- the nodes


class ResultFile(Node):
    """``find/KIND/NAME``: the matches, computed when opened (``direct_io``, size 0)."""

    def __init__(self, state: MountState, kind: str, name: bytes, pattern: bytes | int) -> None:
        self.state = state
        self.kind = kind
        self.name = name
        self.pattern = pattern

    def attributes(self) -> Attributes:
        return Attributes(READ_ONLY_MODE, volatile=True)

    def open(self, writing: bool, owner: bool) -> Handle:
        """Start the search.

        :raises Refused: for writing.
        :raises NoWordsizeError, NoEndianError: for ``pointer/`` with the word size or
            endian unset (``ENODATA``).
        :raises PointerTooWide: for a ``pointer/`` address wider than a word (``EINVAL``).
        """
        if writing:
            raise Refused(self.inode)
        memory_map = self.state.map
        label = f"{self.kind}/{self.name.decode('utf-8', 'backslashreplace')}"
        if isinstance(self.pattern, int):
            wordsize, endian = memory_map.wordsize, memory_map.endian
            if wordsize is None:
                raise NoWordsizeError(f"find/{label}")
            if endian is None:
                raise NoEndianError(f"find/{label}")
            if self.pattern >> wordsize:
                log.info("find/%s: %#x does not fit in a %d-bit word (.ctl/wordsize)",
                         label, self.pattern, wordsize)
                raise PointerTooWide(self.pattern)
            pattern = self.pattern.to_bytes(wordsize // 8, endian)
            align = wordsize // 8
        else:
            pattern, align = self.pattern, 1
        handle = SearchHandle(memory_map, pattern, align, label)
        handle.start()
        return handle


class SearchDirectory(Node):
    """``find/text/``, ``find/hex/``, ``find/pointer/``: any valid name can be looked
    up; nothing is listed."""

    def __init__(self, state: MountState, table: NodeTable, kind: str) -> None:
        self.state = state
        self.table = table
        self.kind = kind

    def attributes(self) -> Attributes:
        return Attributes(DIRECTORY_MODE, nlink=2)

    def lookup(self, name: bytes) -> Node:
        """The result file for ``name``.  :raises NotFound: for an invalid name (hex
        digits that are not whole bytes, an address that is not a number below 2**64)."""
        pattern = pattern_of(self.kind, name)
        if pattern is None:
            raise NotFound(name)
        node = self.table.dynamic(("find", self.kind, name),
                                  lambda: ResultFile(self.state, self.kind, name, pattern))
        node.parent = self
        return node

    def entries(self, position: int) -> Iterator[tuple[bytes, Node, int]]:
        return iter(())


def find_directory(state: MountState, table: NodeTable) -> Directory:
    """``find/`` with its three search directories, given their fixed numbers in
    ``table`` (the caller numbers ``find/`` itself)."""
    directory = Directory(nlink=2 + len(KINDS))
    for kind, inode in KINDS:
        directory.add(kind.encode("ascii"),
                      table.add_fixed(inode, SearchDirectory(state, table, kind)))
    return directory
