"""The mount as a table of nodes: the node protocol, file handles, and the inode table.

Every name in the mount is a :class:`Node`.  A node answers what its kind needs —
:meth:`~Node.attributes`, :meth:`~Node.lookup` and :meth:`~Node.entries` (directories),
:meth:`~Node.open` (files), :meth:`~Node.readlink` (symlinks) — and raises a
:class:`NodeError` (which carries its ``errno``) for what it cannot do.  The FUSE adapter
(:mod:`vmemfs.fs`) only translates requests to these calls and exceptions to errnos.

Inode numbers are allocated by kind (docs/design.md, "The node table"):

* fixed nodes (``/``, ``mem``, ``.ctl/*``, ...) have fixed numbers below
  :data:`FIRST_RANGE`;
* a *range* of numbers belongs to one directory whose children are many and known in
  advance (``extents/``): the directory resolves a number in its range to a child
  without storing one object per child;
* *dynamic* nodes (``at/ADDRESS`` and below, ``find/`` results) are made on lookup from
  :data:`FIRST_DYNAMIC` up, counted as the kernel learns of them, and dropped when the
  kernel forgets them, so the daemon's memory stays bounded however many names are
  visited.

A :class:`Handle` is what ``open`` returns: it may hold state fixed at open (a search
result, a snapshot of a value) and says how the kernel may cache the file; it lives until
``release``.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from vmemfs.sources import Buffer

FIRST_RANGE = 1 << 8
"""Fixed inode numbers are below this; ranges start here."""
FIRST_DYNAMIC = 1 << 48
"""Dynamic nodes are numbered from here up (never reused while the mount runs)."""
BLOCK_SIZE = 512
"""The unit of ``st_blocks``."""

DIRECTORY_MODE = stat.S_IFDIR | 0o555
READ_ONLY_MODE = stat.S_IFREG | 0o444
CONTROL_MODE = stat.S_IFREG | 0o644
SYMLINK_MODE = stat.S_IFLNK | 0o777


def blocks(byte_count: int) -> int:
    """``st_blocks`` for ``byte_count`` bytes (512-byte units, rounded up)."""
    return -(-byte_count // BLOCK_SIZE)


class NodeError(Exception):
    """A request a node cannot answer; the adapter replies with :attr:`errno`."""

    errno = errno.EIO


class NotFound(NodeError, LookupError):
    """No such name in a directory, or no such inode (``ENOENT``)."""

    errno = errno.ENOENT


class Refused(NodeError):
    """The node cannot be written, created, removed or renamed (``EACCES``)."""

    errno = errno.EACCES


class IsDirectory(NodeError):
    """A directory opened as a file (``EISDIR``)."""

    errno = errno.EISDIR


class NotDirectory(NodeError):
    """A file or symlink looked into or listed (``ENOTDIR``)."""

    errno = errno.ENOTDIR


class NotSymlink(NodeError):
    """``readlink`` of something that is not a symlink (``EINVAL``)."""

    errno = errno.EINVAL


class TooLarge(NodeError):
    """A value too large to serve, such as a string without a NUL (``EFBIG``)."""

    errno = errno.EFBIG


@dataclass(frozen=True, slots=True)
class Attributes:
    """What ``stat`` shows of a node, apart from its number, owner and times."""

    mode: int
    """``st_mode``, file type included."""
    size: int = 0
    nlink: int = 1
    blocks: int = 0
    """Mapped (or stored) bytes in 512-byte units, rounded up."""
    volatile: bool = False
    """The attributes can change while mounted: the kernel must not cache them."""


class Handle:
    """An open file: reads (and writes), with what the kernel may cache.

    ``direct_io`` sends every read to the daemon and lets a read be short anywhere;
    otherwise reads go through the page cache, and only the end of the file may be short.
    ``keep_cache`` keeps pages cached by an earlier open.
    """

    direct_io = False
    keep_cache = True
    asynchronous = False
    """Reads are :meth:`read_async` (long work off the request loop), not :meth:`read`."""

    def read(self, offset: int, size: int) -> Buffer:
        """Up to ``size`` bytes from ``offset``; empty at or past the end of the file."""
        raise NotImplementedError

    async def read_async(self, offset: int, size: int) -> Buffer:
        """:meth:`read` for handles whose reads wait for long work."""
        return self.read(offset, size)

    def write(self, offset: int, data: bytes) -> int:
        """Take a ``write(2)``; returns the count written.

        :raises Refused: unless the file is writable.
        """
        raise Refused(offset)

    def release(self) -> None:
        """The file was closed (by every process): drop state, stop work."""


class BytesHandle(Handle):
    """A file whose whole content was fixed at open (a value, a text)."""

    def __init__(self, content: bytes, *, direct_io: bool = True) -> None:
        self.content = content
        self.direct_io = direct_io
        self.keep_cache = not direct_io

    def read(self, offset: int, size: int) -> Buffer:
        return self.content[offset:offset + size]


class Node:
    """One name in the mount.  Subclasses override what their kind answers.

    ``inode`` is set by the :class:`NodeTable` (or fixed by the node's kind).
    """

    inode = 0
    parent: Node | None = None

    def attributes(self) -> Attributes:
        """What ``stat`` shows."""
        raise NotImplementedError

    def lookup(self, name: bytes) -> Node:
        """The child called ``name``.

        :raises NotFound: if there is none; :raises NotDirectory: for a non-directory.
        """
        raise NotDirectory(name)

    def entries(self, position: int) -> Iterator[tuple[bytes, Node, int]]:
        """``(name, child, next_position)`` from ``position`` (0 first, then one seen).

        :raises NotDirectory: for a non-directory.
        """
        raise NotDirectory(self.inode)

    def open(self, writing: bool, owner: bool) -> Handle:
        """A handle for reading (and ``writing``); ``owner`` is the mounting user.

        :raises IsDirectory: for a directory; :raises Refused: for a forbidden write.
        """
        raise IsDirectory(self.inode)

    def readlink(self) -> bytes:
        """A symlink's target.  :raises NotSymlink: for anything else."""
        raise NotSymlink(self.inode)

    def truncate(self, owner: bool) -> None:
        """``O_TRUNC`` to size 0 (the shell's ``>``): allowed only on control files.

        :raises Refused: elsewhere.
        """
        raise Refused(self.inode)

    def is_directory(self) -> bool:
        return stat.S_ISDIR(self.attributes().mode)


class RangeOwner:
    """A directory whose children have inode numbers in one range, resolved on demand."""

    def child(self, inode: int) -> Node:
        """The child numbered ``inode``.  :raises NotFound: if there is none."""
        raise NotImplementedError


class NodeTable:
    """Inode numbers to nodes: fixed nodes, ranges, and counted dynamic nodes.

    Runtime complexity: :meth:`get` is ``O(1)`` for fixed and dynamic nodes and
    ``O(r)`` for ``r`` ranges (a handful).
    """

    def __init__(self) -> None:
        self._fixed: dict[int, Node] = {}
        self._ranges: list[tuple[int, int, RangeOwner]] = []
        self._next_range = FIRST_RANGE
        self._dynamic: dict[int, Node] = {}
        self._lookups: dict[int, int] = {}
        self._by_key: dict[Hashable, int] = {}
        self._keys: dict[int, Hashable] = {}
        self._next_dynamic = FIRST_DYNAMIC

    # ---------------------------------------------------------------- allocation

    def add_fixed(self, inode: int, node: Node) -> Node:
        """Give ``node`` the fixed number ``inode`` (below :data:`FIRST_RANGE`)."""
        if not 0 < inode < FIRST_RANGE or inode in self._fixed:
            raise ValueError(f"inode {inode} is not a free fixed number")
        node.inode = inode
        self._fixed[inode] = node
        return node

    def add_range(self, count: int, owner: RangeOwner) -> int:
        """Reserve ``count`` numbers for ``owner``'s children; returns the first."""
        first = self._next_range
        if first + count > FIRST_DYNAMIC:
            raise ValueError(f"{count} inode numbers do not fit in the range space")
        self._ranges.append((first, first + count, owner))
        self._next_range = first + count
        return first

    def dynamic(self, key: Hashable, make: Callable[[], Node]) -> Node:
        """The live dynamic node for ``key``, or a new one from ``make()``.

        The same key gives the same node (and number) for as long as the kernel holds a
        lookup of it; the node is not counted until :meth:`remember`.
        """
        inode = self._by_key.get(key)
        if inode is not None:
            return self._dynamic[inode]
        node = make()
        node.inode = self._next_dynamic
        self._next_dynamic += 1
        self._dynamic[node.inode] = node
        self._lookups[node.inode] = 0
        self._by_key[key] = node.inode
        self._keys[node.inode] = key
        return node

    # ---------------------------------------------------------------- the kernel's counts

    def remember(self, node: Node) -> None:
        """The kernel was handed ``node`` in a lookup reply (one more lookup to forget)."""
        inode = node.inode
        if inode in self._lookups:
            self._lookups[inode] += 1

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped ``count`` lookups of ``inode``; a dynamic node with none
        left is removed.  Fixed and range nodes live as long as the mount."""
        left = self._lookups.get(inode)
        if left is None:
            return
        left -= count
        if left > 0:
            self._lookups[inode] = left
            return
        self.drop(inode)

    def drop(self, inode: int) -> None:
        """Remove dynamic node ``inode`` now (also for one the kernel never learnt of)."""
        self._lookups.pop(inode, None)
        self._dynamic.pop(inode, None)
        key = self._keys.pop(inode, None)
        if key is not None:
            self._by_key.pop(key, None)

    def release_unremembered(self, node: Node) -> None:
        """Drop ``node`` if it is dynamic and the kernel holds no lookup of it."""
        if self._lookups.get(node.inode) == 0:
            self.drop(node.inode)

    # ---------------------------------------------------------------- queries

    def get(self, inode: int) -> Node:
        """The node numbered ``inode``.  :raises NotFound: for an unknown number."""
        node = self._fixed.get(inode)
        if node is not None:
            return node
        if inode >= FIRST_DYNAMIC:
            node = self._dynamic.get(inode)
            if node is None:
                raise NotFound(inode)
            return node
        for first, end, owner in self._ranges:
            if first <= inode < end:
                return owner.child(inode)
        raise NotFound(inode)

    @property
    def dynamic_count(self) -> int:
        """How many dynamic nodes are alive (bounded by what the kernel holds)."""
        return len(self._dynamic)

    @property
    def node_count(self) -> int:
        """Fixed, range and live dynamic nodes."""
        return len(self._fixed) + sum(end - first for first, end, _ in self._ranges) \
            + len(self._dynamic)


class HandleTable:
    """Open file handles by number; a number is never reused while the mount runs."""

    def __init__(self) -> None:
        self._handles: dict[int, Handle] = {}
        self._next = 1

    @property
    def by_number(self) -> dict[int, Handle]:
        """The open handles by number (the adapter's read path looks up here directly)."""
        return self._handles

    def add(self, handle: Handle) -> int:
        number = self._next
        self._next += 1
        self._handles[number] = handle
        return number

    def get(self, number: int) -> Handle:
        """:raises NotFound: for a number not open."""
        try:
            return self._handles[number]
        except KeyError:
            raise NotFound(number) from None

    def release(self, number: int) -> None:
        handle = self._handles.pop(number, None)
        if handle is not None:
            handle.release()

    def __len__(self) -> int:
        return len(self._handles)
