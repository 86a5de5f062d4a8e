"""Write a cpio archive in the "newc" format (magic ``070701``), as the kernel unpacks an
initramfs from it.

Each entry is a 110-byte ASCII header (13 fields of 8 hex digits after the magic), the
NUL-terminated name padded to a multiple of 4 bytes (counting from the header's start),
then the data padded to a multiple of 4. The archive ends with an entry named
``TRAILER!!!``. Owners are root, times are 0, so the same entries give the same bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: ``name`` without a leading slash, ``mode`` with its type bits
    (``stat.S_IFREG | 0o755``...), ``data`` (a file's bytes or a symlink's target), and
    ``rdev`` (major, minor) for device nodes."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(name: str) -> Entry:
    """A directory entry, mode 0755."""
    return Entry(name, stat.S_IFDIR | 0o755)


def file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    """A regular file holding ``data``."""
    return Entry(name, stat.S_IFREG | mode, data)


def symlink(name: str, target: str) -> Entry:
    """A symbolic link to ``target``."""
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    """A character device node (``/dev/console`` is 5, 1)."""
    return Entry(name, stat.S_IFCHR | mode, rdev=(major, minor))


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(inode: int, entry: Entry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (
        inode, entry.mode, 0, 0,  # ino, mode, uid, gid
        2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
        0, len(entry.data),  # mtime, filesize
        0, 0,  # devmajor, devminor (of the file system holding it)
        entry.rdev[0], entry.rdev[1],
        len(name), 0,  # namesize (with the NUL), check (unused by newc)
    )
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    return header + name + _pad4(len(header) + len(name)) + entry.data + _pad4(len(entry.data))


def newc_archive(entries: Iterable[Entry]) -> bytes:
    """Return the newc archive of ``entries`` in the given order (parents before children),
    closed by the trailer. Inode numbers are 1, 2, ... in order; the trailer's is 0.

    :raises ValueError: if a name is empty, absolute, or a value does not fit 32 bits.
    """
    parts = []
    for inode, entry in enumerate(entries, start=1):
        if not entry.name or entry.name.startswith("/"):
            raise ValueError(f"cpio: entry name {entry.name!r}: must be relative and not empty")
        if len(entry.data) >= 1 << 32:
            raise ValueError(f"cpio: entry {entry.name!r}: {len(entry.data)} bytes is too large")
        parts.append(_member(inode, entry))
    parts.append(_member(0, Entry(TRAILER, 0)))
    return b"".join(parts)
