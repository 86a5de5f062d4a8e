"""The pyfuse3 adapter: a protocol adapter only.

It translates FUSE requests into calls on the nodes of a :class:`~vmemfs.tree.Tree`,
and exceptions into errnos in one table (:data:`ERRNOS`, applied by :func:`_translated`):

=============================================  =========================================
raised by a node or the map                    reply
=============================================  =========================================
:class:`~vmemfs.tree.nodes.NodeError`          its ``errno`` (``ENOENT``, ``EACCES``,
                                               ``EISDIR``, ``ENOTDIR``, ``EINVAL``,
                                               ``EFBIG``)
:class:`~vmemfs.errors.HoleError`              ``EIO``
:class:`~vmemfs.errors.NoWordsizeError`,       ``ENODATA``, and one logged line naming
:class:`~vmemfs.errors.NoEndianError`          ``.ctl/wordsize`` or ``.ctl/endian``
:class:`~vmemfs.ctl.ControlValueError`         ``EINVAL``, and one logged warning
any other exception                            ``EIO``, and a logged traceback
=============================================  =========================================

Nothing can be created, removed, renamed, linked or given extended attributes: those
requests get ``EACCES`` for every user, root included (SPEC §4.6).  How the kernel may
cache a file comes from the node: its attributes say whether they are ``volatile``
(attribute timeout 0), its handle says ``direct_io`` and ``keep_cache``.  When the state
says that ``mem`` changed (a write to ``.ctl/base`` or ``.ctl/holes``), the write is
answered only once the kernel has dropped ``mem``'s cached pages and attributes
(``pyfuse3.invalidate_inode``, SPEC §4.2.1).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import reprlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar, cast

import pyfuse3
import trio

from vmemfs.ctl import ControlValueError
from vmemfs.errors import HoleError, NoEndianError, NoWordsizeError
from vmemfs.sources import Buffer
from vmemfs.tree import Tree
from vmemfs.tree.files import MEM, VIEW_CORE
from vmemfs.tree.nodes import HandleTable, Node, NodeError, Refused

log = logging.getLogger(__name__)

STATIC_TIMEOUT = 24 * 3600.0
"""Seconds the kernel may cache names, and the attributes of nodes that never change."""

BLOCK_SIZE = 4096
"""``st_blksize`` and the ``statvfs`` block size."""

NAME_MAX = 255

INVALIDATION_WAIT = 0.1
"""Seconds a write to ``.ctl/`` waits for the kernel to drop ``mem``'s cached pages.

The kernel drops a page only once no read holds it, and a page-cached read of ``mem`` in
flight holds its pages until this daemon answers it.  When another worker task answers
it, the wait ends as soon as the pages are dropped.  When the loop serves one request at
a time, that answer can only come after the write's: the write stops waiting after this
long, and the pages are dropped as soon as the read in flight is answered."""

ERRNOS: tuple[tuple[type[BaseException], int], ...] = (
    (HoleError, errno.EIO),
    (NoWordsizeError, errno.ENODATA),
    (NoEndianError, errno.ENODATA),
    (ControlValueError, errno.EINVAL),
)
"""Exceptions (other than :class:`NodeError`, which carries its own) to errnos."""

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def _errno_of(error: BaseException, where: str) -> int | None:
    """The errno that answers ``error``, logging what the table says to log; ``None``
    for an unexpected exception."""
    if isinstance(error, NodeError):
        return error.errno
    for kind, number in ERRNOS:
        if isinstance(error, kind):
            if kind is ControlValueError:
                log.warning("refused: %s", error)
            elif number == errno.ENODATA:
                setting = ".ctl/wordsize" if kind is NoWordsizeError else ".ctl/endian"
                log.info("%s: %s is unset", where, setting)
            return number
    return None


def _failure(error: Exception, handler: Callable[..., Any], args: tuple[Any, ...]) -> NoReturn:
    """Raise the ``FUSEError`` that answers ``error`` (see :data:`ERRNOS`)."""
    number = _errno_of(error, handler.__name__)
    if number is None:
        log.exception("unexpected error in %s%s", handler.__name__, reprlib.repr(args[1:]))
        number = errno.EIO
    raise pyfuse3.FUSEError(number) from None


def _translated(handler: Handler) -> Handler:
    """Make a handler one whose only exception is ``FUSEError``."""

    @functools.wraps(handler)
    async def translate(*args: Any) -> Any:
        try:
            return await handler(*args)
        except pyfuse3.FUSEError:
            raise
        except Exception as error:
            _failure(error, handler, args)

    return cast(Handler, translate)


def _invalidate_inode(inode: int) -> None:
    """``pyfuse3.invalidate_inode``; an inode the kernel does not hold (``ENOENT``) has
    nothing to drop."""
    try:
        pyfuse3.invalidate_inode(inode)
    except OSError as error:
        if error.errno != errno.ENOENT:
            log.warning("cannot drop the cached pages of inode %d: %s", inode, error)


class Operations(pyfuse3.Operations):
    """pyfuse3 operations over a :class:`~vmemfs.tree.Tree`.

    ``uid`` and ``gid`` own every node (the mounting user's); ``uid`` is the only user
    allowed to write ``.ctl/``.
    """

    enable_writeback_cache = False
    enable_acl = False
    supports_dot_lookup = True

    def __init__(self, tree: Tree, *, uid: int, gid: int, time_ns: int | None = None,
                 private: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.nodes = tree.table
        self.handles = HandleTable()
        self._open_handles = self.handles.by_number
        self.uid = uid
        self.gid = gid
        self.time_ns = time.time_ns() if time_ns is None else time_ns
        self.mode_mask = ~0o077 if private else ~0
        """``private``: no permission bits for group and others (a live process)."""
        self.mounted = False
        """Set by :meth:`init`: the kernel is there to be told what to drop."""
        self.before_first_open: Callable[[], object] | None = None
        """Called once, in the first ``open`` request, before it is answered: the kernel
        takes a file's readahead from its mount when the file is opened (``mount.vmemfs``
        raises the readahead here, after the connection's INIT has set it)."""
        self._mem_changed = False
        tree.state.listeners.append(self._note_mem_changed)
        self._settings_changed = False
        tree.state.settings_listeners.append(self._note_settings_changed)

    def init(self) -> None:
        self.mounted = True

    def _note_mem_changed(self) -> None:
        self._mem_changed = True

    def _note_settings_changed(self) -> None:
        self._settings_changed = True

    async def _drop_cache(self, inode: int) -> None:
        """Make the kernel forget ``inode``'s cached pages and attributes, waiting at most
        :data:`INVALIDATION_WAIT` seconds (in a thread: the kernel may wait for reads
        this loop has yet to answer)."""
        if not self.mounted:
            return
        with trio.move_on_after(INVALIDATION_WAIT):
            await trio.to_thread.run_sync(_invalidate_inode, inode, abandon_on_cancel=True)

    # ---------------------------------------------------------------- attributes

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attributes = node.attributes()
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.inode
        entry.generation = 0
        entry.entry_timeout = STATIC_TIMEOUT
        entry.attr_timeout = 0 if attributes.volatile else STATIC_TIMEOUT
        entry.st_mode = attributes.mode & self.mode_mask
        entry.st_nlink = attributes.nlink
        entry.st_uid = self.uid
        entry.st_gid = self.gid
        entry.st_rdev = 0
        entry.st_size = attributes.size
        entry.st_blksize = BLOCK_SIZE
        entry.st_blocks = attributes.blocks
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self.time_ns
        return entry

    def _remembered(self, node: Node) -> pyfuse3.EntryAttributes:
        """The entry for a lookup reply; counts the lookup the kernel will forget."""
        try:
            entry = self._entry(node)
        except BaseException:
            self.nodes.release_unremembered(node)
            raise
        self.nodes.remember(node)
        return entry

    @_translated
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.nodes.get(parent_inode)
        if name == b".":
            node = parent
        elif name == b"..":
            node = parent.parent or parent
        else:
            node = parent.lookup(name)
        return self._remembered(node)

    @_translated
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.nodes.get(inode))

    @_translated
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Accept only truncation of a control value to 0 (``O_TRUNC``), which changes
        nothing; time updates that come with it are ignored."""
        node = self.nodes.get(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise Refused(inode)
        node.truncate(ctx.uid == self.uid)
        if fields.update_size and attr.st_size != 0:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self._entry(node)

    @_translated
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.nodes.get(inode).readlink()

    @_translated
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        forget = self.nodes.forget
        for inode, count in inode_list:
            forget(inode, count)

    # ---------------------------------------------------------------- files

    @_translated
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.before_first_open is not None:
            hook, self.before_first_open = self.before_first_open, None
            hook()
        node = self.nodes.get(inode)
        handle = node.open(flags & os.O_ACCMODE != os.O_RDONLY, ctx.uid == self.uid)
        return pyfuse3.FileInfo(fh=self.handles.add(handle), direct_io=handle.direct_io,
                                keep_cache=handle.keep_cache)

    async def read(  # type: ignore[override]  # a buffer, not only bytes
            self, fh: int, off: int, size: int) -> Buffer:
        # The hot path: translated here rather than by _translated, to spare a coroutine.
        try:
            handle = self._open_handles[fh]
            if handle.asynchronous:
                return await handle.read_async(off, size)
            return handle.read(off, size)
        except pyfuse3.FUSEError:
            raise
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None
        except Exception as error:
            _failure(error, Operations.read, (self, fh, off, size))

    @_translated
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        count = self.handles.get(fh).write(off, buf)
        if self._mem_changed:       # base or holes: mem's size, pages and mode
            self._mem_changed = False
            await self._drop_cache(MEM)
        if self._settings_changed:  # word size or endian: views/core.elf's headers
            self._settings_changed = False
            await self._drop_cache(VIEW_CORE)
        return count

    @_translated
    async def flush(self, fh: int) -> None:
        return None

    @_translated
    async def release(self, fh: int) -> None:
        self.handles.release(fh)

    @_translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    # ---------------------------------------------------------------- directories

    @_translated
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.nodes.get(inode)
        if not node.is_directory():
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_translated
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        reply = pyfuse3.readdir_reply
        for name, node, next_id in self.nodes.get(fh).entries(start_id):
            if not reply(token, name, self._entry(node), next_id):
                self.nodes.release_unremembered(node)
                break
            self.nodes.remember(node)

    @_translated
    async def releasedir(self, fh: int) -> None:
        return None

    @_translated
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_translated
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_blocks = -(-self.tree.state.mapped_bytes // BLOCK_SIZE)
        data.f_bfree = data.f_bavail = 0
        data.f_files = self.nodes.node_count
        data.f_ffree = data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    # ---------------------------------------------------------------- refused

    @_translated
    async def create(
            self, parent_inode: int, name: bytes, mode: int, flags: int,
            ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise Refused(name)

    @_translated
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise Refused(name)

    @_translated
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise Refused(name)

    @_translated
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise Refused(name)

    @_translated
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise Refused(new_name)

    @_translated
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise Refused(name)

    @_translated
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise Refused(name)

    @_translated
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        raise Refused(name_old)

    @_translated
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        raise Refused(name)

    @_translated
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise Refused(name)

    @_translated
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self.nodes.get(inode)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_translated
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self.nodes.get(inode)
        return []
