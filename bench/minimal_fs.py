"""The floor of any pyfuse3 design that sends every read to the daemon.

``python -m bench.minimal_fs FILE MOUNTPOINT [--tasks N] [--page-cache]`` mounts one file,
``MOUNTPOINT/data``, served by a read handler that returns a ``memoryview`` slice of the
file's ``mmap`` and does nothing else: no index, no checks.  By default the file is served
with ``direct_io`` and pyfuse3 runs with its default number of worker tasks (up to 99);
``--tasks N`` caps them (``mount.vmemfs`` runs up to 8), ``--page-cache`` serves the file
through the page cache (``keep_cache``) instead.  It runs until unmounted or sent
``SIGTERM``.  ``mount_bench`` compares ``mem`` with it.
"""

from __future__ import annotations

import argparse
import errno
import mmap
import os
import signal
import stat

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
DATA = ROOT + 1
NAME = b"data"
TIMEOUT = 24 * 3600.0


class Floor(pyfuse3.Operations):
    """One read-only file over an ``mmap``."""

    def __init__(self, path: str, *, page_cache: bool = False) -> None:
        super().__init__()
        self.page_cache = page_cache
        fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.view = memoryview(self.map)

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.entry_timeout = entry.attr_timeout = TIMEOUT
        if inode == ROOT:
            entry.st_mode = stat.S_IFDIR | 0o555
            entry.st_nlink = 2
        else:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_nlink = 1
            entry.st_size = self.size
        entry.st_uid, entry.st_gid = os.getuid(), os.getgid()
        entry.st_blksize = 4096
        return entry

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode not in (ROOT, DATA):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != ROOT or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(DATA)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._entry(DATA), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, direct_io=not self.page_cache,
                                keep_cache=self.page_cache)

    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        return self.view[off:off + size]


async def serve(tasks: int | None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def stop() -> None:
                async for _ in signals:
                    pyfuse3.terminate()
                    return
            nursery.start_soon(stop)
            if tasks is None:
                await pyfuse3.main()
            else:
                await pyfuse3.main(min_tasks=1, max_tasks=tasks)
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("mountpoint")
    parser.add_argument("--tasks", type=int, default=None,
                        help="at most this many worker tasks (default: pyfuse3's)")
    parser.add_argument("--page-cache", action="store_true",
                        help="serve the file through the page cache, not direct_io")
    args = parser.parse_args()
    operations = Floor(args.file, page_cache=args.page_cache)
    pyfuse3.init(operations, args.mountpoint, {"fsname=floor", "subtype=floor",
                                               "default_permissions"})
    try:
        trio.run(serve, args.tasks)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
