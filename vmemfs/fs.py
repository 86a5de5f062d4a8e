"""The pyfuse3 adapter: a protocol adapter only.

It translates FUSE requests into calls on a :class:`~vmemfs.layout.Layout` and the
layout's exceptions into errnos, in one place (:func:`_translated`):

=========================================  =========================================
raised by the layout or the map            reply
=========================================  =========================================
:class:`~vmemfs.errors.HoleError`          ``EIO``
:class:`~vmemfs.layout.NotFound`           ``ENOENT``
:class:`~vmemfs.ctl.ControlValueError`     ``EINVAL``, and one logged warning
any other exception                        ``EIO``, and a logged traceback
=========================================  =========================================

Nothing can be created, removed, renamed, linked or given extended attributes: those
requests get ``EACCES`` for every user, root included, as does opening ``mem``,
``extents/*`` or ``.ctl/maps`` for writing (SPEC §4.6).  Only the mounting user may open
the writable ``.ctl/`` files for writing.

Caching (SPEC §4.2-§4.4): ``mem`` and ``.ctl/*`` values are served with ``direct_io``
and attribute timeout 0, so a change of ``base`` or ``holes`` shows at the next read or
``stat``; ``extents/*`` and ``.ctl/maps`` never change and are served through the page
cache (``keep_cache``).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import reprlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyfuse3

from vmemfs import layout as tree
from vmemfs.ctl import ControlValueError
from vmemfs.errors import HoleError
from vmemfs.layout import Layout, NotFound

log = logging.getLogger(__name__)

STATIC_TIMEOUT = 24 * 3600.0
"""Seconds the kernel may cache names, and the attributes of nodes that never change."""

BLOCK_SIZE = 4096
"""``st_blksize`` and the ``statvfs`` block size."""

NAME_MAX = 255

assert pyfuse3.ROOT_INODE == tree.ROOT

Handler = TypeVar("Handler", bound=Callable[..., Any])


def _translated(handler: Handler) -> Handler:
    """Make a synchronous handler a pyfuse3 one whose only exception is ``FUSEError``."""

    @functools.wraps(handler)
    async def translate(*args: Any) -> Any:
        try:
            return handler(*args)
        except pyfuse3.FUSEError:
            raise
        except HoleError:
            raise pyfuse3.FUSEError(errno.EIO) from None
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except ControlValueError as error:
            log.warning("refused: %s", error)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        except Exception:
            log.exception("unexpected error in %s%s", handler.__name__, reprlib.repr(args[1:]))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return translate  # type: ignore[return-value]


def _refuse() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EACCES)


class Operations(pyfuse3.Operations):
    """pyfuse3 operations over a :class:`~vmemfs.layout.Layout`.

    ``uid`` and ``gid`` own every node (the mounting user's); ``uid`` is the only user
    allowed to write ``.ctl/``.  File handles are inode numbers: nothing is allocated per
    open.
    """

    enable_writeback_cache = False
    enable_acl = False
    supports_dot_lookup = True

    def __init__(self, layout: Layout, *, uid: int, gid: int,
                 time_ns: int | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.uid = uid
        self.gid = gid
        self.time_ns = time.time_ns() if time_ns is None else time_ns

    # ---------------------------------------------------------------- attributes

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        attributes = self.layout.attributes(inode)
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.generation = 0
        entry.entry_timeout = STATIC_TIMEOUT
        entry.attr_timeout = 0 if attributes.volatile else STATIC_TIMEOUT
        entry.st_mode = attributes.mode
        entry.st_nlink = attributes.nlink
        entry.st_uid = self.uid
        entry.st_gid = self.gid
        entry.st_rdev = 0
        entry.st_size = attributes.size
        entry.st_blksize = BLOCK_SIZE
        entry.st_blocks = attributes.blocks
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = self.time_ns
        return entry

    @_translated
    def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if name == b".":
            inode = parent_inode
        elif name == b"..":
            inode = tree.ROOT
        else:
            inode = self.layout.lookup(parent_inode, name)
        return self._entry(inode)

    @_translated
    def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    @_translated
    def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        """Accept only truncation of a ``.ctl/`` value to 0 (``O_TRUNC``), which changes
        nothing; time updates that come with it are ignored."""
        if (self.layout.control_name(inode) is None or ctx.uid != self.uid
                or fields.update_mode or fields.update_uid or fields.update_gid):
            raise _refuse()
        if fields.update_size and attr.st_size != 0:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self._entry(inode)

    # ---------------------------------------------------------------- files

    @_translated
    def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        layout = self.layout
        if layout.is_directory(inode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if layout.control_name(inode) is not None:
            if writing and ctx.uid != self.uid:
                raise _refuse()
            return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)
        layout.attributes(inode)  # NotFound for an inode the tree does not have
        if writing:
            raise _refuse()
        if inode == tree.MEM:
            return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)
        return pyfuse3.FileInfo(fh=inode, direct_io=False, keep_cache=True)

    @_translated
    def read(self, fh: int, off: int, size: int) -> Any:
        if fh == tree.MEM:
            return self.layout.read_mem(off, size)
        if fh >= tree.FIRST_EXTENT:
            return self.layout.read_extent(fh, off, size)
        return self.layout.read_text(fh, off, size)

    @_translated
    def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.layout.control_name(fh) is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return self.layout.write_control(fh, off, buf)

    @_translated
    def flush(self, fh: int) -> None:
        return None

    @_translated
    def release(self, fh: int) -> None:
        return None

    @_translated
    def fsync(self, fh: int, datasync: bool) -> None:
        return None

    # ---------------------------------------------------------------- directories

    @_translated
    def opendir(self, inode: int, ctx: Any) -> int:
        if not self.layout.is_directory(inode):
            self.layout.attributes(inode)  # NotFound first
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_translated
    def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        reply = pyfuse3.readdir_reply
        for name, inode, next_id in self.layout.entries(fh, start_id):
            if not reply(token, name, self._entry(inode), next_id):
                break

    @_translated
    def releasedir(self, fh: int) -> None:
        return None

    @_translated
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_translated
    def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK_SIZE
        data.f_blocks = -(-self.layout.mapped_bytes // BLOCK_SIZE)
        data.f_bfree = data.f_bavail = 0
        data.f_files = self.layout.inode_count
        data.f_ffree = data.f_favail = 0
        data.f_namemax = NAME_MAX
        return data

    @_translated
    def readlink(self, inode: int, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(errno.EINVAL)

    @_translated
    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # every node lives as long as the mount

    # ---------------------------------------------------------------- refused

    @_translated
    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _refuse()

    @_translated
    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: Any) -> pyfuse3.EntryAttributes:
        raise _refuse()

    @_translated
    def mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: Any) -> pyfuse3.EntryAttributes:
        raise _refuse()

    @_translated
    def symlink(self, parent_inode: int, name: bytes, target: bytes,
                ctx: Any) -> pyfuse3.EntryAttributes:
        raise _refuse()

    @_translated
    def link(self, inode: int, new_parent_inode: int, new_name: bytes,
             ctx: Any) -> pyfuse3.EntryAttributes:
        raise _refuse()

    @_translated
    def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise _refuse()

    @_translated
    def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise _refuse()

    @_translated
    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
               name_new: bytes, flags: int, ctx: Any) -> None:
        raise _refuse()

    @_translated
    def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise _refuse()

    @_translated
    def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise _refuse()

    @_translated
    def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        self.layout.attributes(inode)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_translated
    def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        self.layout.attributes(inode)
        return []
