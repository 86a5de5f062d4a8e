"""The pyfuse3 adapter's handlers, awaited directly (no mount): replies and errnos."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pyfuse3
import pytest
import trio
from treemodel import tree_of

from vmemfs import MemoryMap
from vmemfs.fs import STATIC_TIMEOUT, Operations
from vmemfs.tree import files as tree

OWNER = 1000
OTHER = 1001


@dataclass
class Context:
    """What pyfuse3 passes as ``ctx``: the calling process's ids."""

    uid: int = OWNER
    gid: int = OWNER
    pid: int = 1
    umask: int = 0o022


@dataclass
class Fields:
    """Stands in for ``pyfuse3.SetattrFields`` (whose attributes are read-only)."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


def call(handler: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    async def run() -> Any:
        return await handler(*args)
    return trio.run(run)


def fuse_errno(handler: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as caught:
        call(handler, *args)
    return caught.value.errno


@pytest.fixture
def memory_map() -> MemoryMap:
    """``"A"*0x2000`` at 0x1000, a hole, ``"B"*16`` at 0x5000."""
    result = MemoryMap.of_bytes(b"A" * 0x2000, 0x1000)
    result.add_bytes(b"B" * 16, 0x5000)
    return result


@pytest.fixture
def ops(memory_map: MemoryMap) -> Operations:
    return Operations(tree_of(memory_map), uid=OWNER, gid=OWNER, time_ns=1_700_000_000 * 10**9)


def test_lookup_and_getattr(ops: Operations) -> None:
    entry = call(ops.lookup, tree.ROOT, b"mem", Context())
    assert (entry.st_ino, entry.st_size, entry.st_mode) == (tree.MEM, 0x5010, 0o100444)
    assert (entry.st_uid, entry.st_gid) == (OWNER, OWNER)
    assert entry.attr_timeout == STATIC_TIMEOUT         # page-cached; dropped on .ctl/base
    assert entry.entry_timeout == STATIC_TIMEOUT
    assert entry.st_blocks == 17
    assert entry.st_mtime_ns == 1_700_000_000 * 10**9
    extent = call(ops.lookup, tree.EXTENTS, b"0000000000001000-0000000000003000", Context())
    assert (extent.st_ino, extent.st_size) == (tree.FIRST_EXTENT, 0x2000)
    assert extent.attr_timeout == STATIC_TIMEOUT
    control = call(ops.getattr, tree.CTL_BASE, Context())
    assert (control.st_mode, control.attr_timeout) == (0o100644, 0)
    assert call(ops.lookup, tree.CTL, b"..", Context()).st_ino == tree.ROOT
    assert call(ops.lookup, tree.CTL, b".", Context()).st_ino == tree.CTL
    assert fuse_errno(ops.lookup, tree.ROOT, b"nothing", Context()) == errno.ENOENT
    assert fuse_errno(ops.getattr, 12345, Context()) == errno.ENOENT


def test_open_modes(ops: Operations) -> None:
    mem = call(ops.open, tree.MEM, os.O_RDONLY, Context())
    assert (mem.direct_io, mem.keep_cache) == (False, True)   # page-aligned: page cache
    extent = call(ops.open, tree.FIRST_EXTENT, os.O_RDONLY, Context())
    assert (extent.direct_io, extent.keep_cache) == (False, True)
    control = call(ops.open, tree.CTL_HOLES, os.O_WRONLY | os.O_TRUNC, Context())
    assert control.direct_io
    other = call(ops.open, tree.CTL_HOLES, os.O_RDONLY, Context(uid=OTHER))
    # Handles are numbered apart from inodes, one per open, freed at release.
    assert len({mem.fh, extent.fh, control.fh, other.fh}) == 4
    assert len(ops.handles) == 4
    for info in (mem, extent, control, other):
        call(ops.release, info.fh)
    assert len(ops.handles) == 0
    assert fuse_errno(ops.read, mem.fh, 0, 1) == errno.EBADF


@pytest.mark.parametrize("inode", [tree.MEM, tree.FIRST_EXTENT, tree.CTL_MAPS])
@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC])
@pytest.mark.parametrize("uid", [0, OWNER])
def test_data_files_refuse_writers_even_root(ops: Operations, inode: int, flags: int,
                                             uid: int) -> None:
    assert fuse_errno(ops.open, inode, flags, Context(uid=uid)) == errno.EACCES


def test_only_the_owner_may_write_controls(ops: Operations) -> None:
    for uid in (0, OTHER):
        assert fuse_errno(ops.open, tree.CTL_BASE, os.O_WRONLY, Context(uid=uid)) == errno.EACCES
        assert fuse_errno(ops.setattr, tree.CTL_BASE, pyfuse3.EntryAttributes(),
                          Fields(update_size=True), None, Context(uid=uid)) == errno.EACCES


def test_open_odd_inodes(ops: Operations) -> None:
    assert fuse_errno(ops.open, tree.EXTENTS, os.O_RDONLY, Context()) == errno.EISDIR
    assert fuse_errno(ops.open, 999, os.O_RDONLY, Context()) == errno.ENOENT
    assert fuse_errno(ops.opendir, tree.MEM, Context()) == errno.ENOTDIR
    assert fuse_errno(ops.opendir, 999, Context()) == errno.ENOENT


def test_the_first_open_runs_its_hook_once_before_answering(ops: Operations) -> None:
    calls: list[int] = []
    ops.before_first_open = lambda: calls.append(len(ops.handles.by_number))
    assert fuse_errno(ops.open, 999, os.O_RDONLY, Context()) == errno.ENOENT
    assert calls == [0]           # even a failing open: the hook ran before the answer
    opened(ops, tree.MEM)
    opened(ops, tree.MEM)
    assert calls == [0] and ops.before_first_open is None


def opened(ops: Operations, inode: int, flags: int = os.O_RDONLY) -> int:
    """The handle of ``inode`` opened by its owner."""
    info: pyfuse3.FileInfo = call(ops.open, inode, flags, Context())
    return int(info.fh)


def test_read(memory_map: MemoryMap) -> None:
    ops = Operations(tree_of(memory_map, cache="never"), uid=OWNER, gid=OWNER)
    mem = opened(ops, tree.MEM)
    assert bytes(call(ops.read, mem, 0x2ffe, 100)) == b"AA"
    assert call(ops.read, mem, 0x5010, 100) == b""
    assert fuse_errno(ops.read, mem, 0x3000, 100) == errno.EIO
    assert bytes(call(ops.read, opened(ops, tree.FIRST_EXTENT + 1), 8, 100)) == b"B" * 8
    assert call(ops.read, opened(ops, tree.CTL_HOLES), 0, 100) == b"eio\n"
    assert call(ops.read, opened(ops, tree.CTL_MAPS), 0, 1 << 20).count(b"\n") == 2


def test_control_write_and_truncate(ops: Operations, memory_map: MemoryMap,
                                    caplog: pytest.LogCaptureFixture) -> None:
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 0
    entry = call(ops.setattr, tree.CTL_WORDSIZE, attr,
                 Fields(update_size=True, update_mtime=True), None, Context())
    assert entry.st_size == len(b"unset\n")             # O_TRUNC changes nothing
    wordsize = opened(ops, tree.CTL_WORDSIZE, os.O_WRONLY)
    base = opened(ops, tree.CTL_BASE, os.O_WRONLY)
    mem = opened(ops, tree.MEM)
    assert call(ops.write, wordsize, 0, b"64\n") == 3
    assert memory_map.wordsize == 64
    assert call(ops.getattr, tree.CTL_WORDSIZE, Context()).st_size == 3
    assert call(ops.write, base, 0, b"0x5000\n") == 7
    assert call(ops.getattr, tree.MEM, Context()).st_size == 0x10
    assert bytes(call(ops.read, mem, 0, 100)) == b"B" * 16
    with caplog.at_level(logging.WARNING, logger="vmemfs.fs"):
        assert fuse_errno(ops.write, wordsize, 0, b"16\n") == errno.EINVAL
        assert fuse_errno(ops.write, wordsize, 1, b"4") == errno.EINVAL
    assert memory_map.wordsize == 64
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "wordsize: '16'" in warnings[0].getMessage()
    assert "offset 1" in warnings[1].getMessage()
    attr.st_size = 3
    assert fuse_errno(ops.setattr, tree.CTL_WORDSIZE, attr, Fields(update_size=True), None,
                      Context()) == errno.EINVAL
    assert fuse_errno(ops.setattr, tree.CTL_WORDSIZE, attr, Fields(update_mode=True), None,
                      Context()) == errno.EACCES
    assert fuse_errno(ops.setattr, tree.MEM, attr, Fields(update_mtime=True), None,
                      Context()) == errno.EACCES
    assert fuse_errno(ops.write, mem, 0, b"x") == errno.EACCES   # a read-only handle


def test_namespace_changes_are_refused(ops: Operations) -> None:
    ctx = Context(uid=0)
    assert fuse_errno(ops.create, tree.ROOT, b"new", 0o644, os.O_WRONLY, ctx) == errno.EACCES
    assert fuse_errno(ops.mknod, tree.ROOT, b"new", 0o644, 0, ctx) == errno.EACCES
    assert fuse_errno(ops.mkdir, tree.ROOT, b"new", 0o755, ctx) == errno.EACCES
    assert fuse_errno(ops.symlink, tree.ROOT, b"new", b"mem", ctx) == errno.EACCES
    assert fuse_errno(ops.link, tree.MEM, tree.ROOT, b"new", ctx) == errno.EACCES
    assert fuse_errno(ops.unlink, tree.ROOT, b"mem", ctx) == errno.EACCES
    assert fuse_errno(ops.rmdir, tree.ROOT, b"extents", ctx) == errno.EACCES
    assert fuse_errno(ops.rename, tree.ROOT, b"mem", tree.ROOT, b"m", 0, ctx) == errno.EACCES
    assert fuse_errno(ops.setxattr, tree.MEM, b"user.x", b"1", ctx) == errno.EACCES
    assert fuse_errno(ops.removexattr, tree.MEM, b"user.x", ctx) == errno.EACCES
    assert fuse_errno(ops.getxattr, tree.MEM, b"user.x", ctx) == pyfuse3.ENOATTR
    assert call(ops.listxattr, tree.MEM, ctx) == []
    assert fuse_errno(ops.readlink, tree.MEM, ctx) == errno.EINVAL


def test_readdir(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    replies: list[tuple[bytes, int, int]] = []
    room = [3]

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if not room[0]:
            return False
        room[0] -= 1
        replies.append((name, attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    assert call(ops.opendir, tree.CTL, Context()) == tree.CTL
    call(ops.readdir, tree.CTL, 0, object())
    assert replies == [(b"wordsize", tree.CTL_WORDSIZE, 1), (b"endian", tree.CTL_ENDIAN, 2),
                       (b"base", tree.CTL_BASE, 3)]
    room[0] = 10
    call(ops.readdir, tree.CTL, 3, object())
    assert [name for name, _, _ in replies[3:]] == [b"holes", b"maps", b"cache"]
    replies.clear()
    call(ops.readdir, tree.EXTENTS, 0, object())
    assert [inode for _, inode, _ in replies] == [tree.FIRST_EXTENT, tree.FIRST_EXTENT + 1]


def test_statfs(ops: Operations) -> None:
    data = call(ops.statfs, Context())
    assert data.f_blocks == 3                            # 0x2010 bytes in 4 KiB blocks
    assert data.f_files == 20                 # with .ctl/cache, find/ (4), views/ (3)
    assert data.f_bfree == data.f_bavail == 0


class Broken:
    """A node table and nodes whose every method fails as a bug would."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any) -> Any:
            raise ZeroDivisionError(f"bug in {name}")
        return fail

    def __getitem__(self, key: object) -> Any:
        raise ZeroDivisionError(f"bug in [{key!r}]")


def test_an_unexpected_exception_becomes_eio_and_is_logged(
        caplog: pytest.LogCaptureFixture, memory_map: MemoryMap) -> None:
    ops = Operations(tree_of(memory_map), uid=OWNER, gid=OWNER)
    mem = opened(ops, tree.MEM)
    ops.nodes = Broken()  # type: ignore[assignment]
    ops.handles = Broken()  # type: ignore[assignment]
    ops._open_handles = Broken()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="vmemfs.fs"):
        assert fuse_errno(ops.read, mem, 0, 4096) == errno.EIO
        assert fuse_errno(ops.getattr, tree.ROOT, Context()) == errno.EIO
        assert fuse_errno(ops.lookup, tree.ROOT, b"mem", Context()) == errno.EIO
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 3
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ZeroDivisionError
    assert "read" in errors[0].getMessage()


def test_handlers_only_raise_fuse_errors(ops: Operations) -> None:
    """Every public handler is wrapped: a bad argument is an errno, never a TypeError."""
    with pytest.raises(pyfuse3.FUSEError):
        call(ops.read, "not an inode", 0, 1)


def test_forget_and_release_are_quiet(ops: Operations) -> None:
    assert call(ops.forget, [(tree.MEM, 1)]) is None
    assert call(ops.release, tree.MEM) is None
    assert call(ops.releasedir, tree.ROOT) is None
    assert call(ops.flush, tree.MEM) is None
    assert call(ops.fsync, tree.MEM, False) is None
