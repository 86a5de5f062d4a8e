"""Where mapped bytes come from: regions of files held open, and byte strings.

A source is addressed by *source offset*; the memory map decides which offsets serve
which addresses.  Two ways out:

* :meth:`Source.read_into` / :meth:`Source.pread` copy bytes with ``preadv(2)``.  A backing
  file that shrank gives a short count, never a signal.
* :meth:`Source.view` returns a zero-copy buffer (a slice of an ``mmap`` for files) meant
  to be handed to the kernel only, as the payload of a FUSE reply.  The kernel copies it
  with ``copy_from_user``: if the file shrank in the meantime, that copy fails with
  ``EFAULT`` (the reader sees ``EIO``) instead of the ``SIGBUS`` that touching the same
  page from Python would raise.  :meth:`view` also clips to the file's current size first,
  so the race is limited to a truncation during the reply itself.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import stat
import weakref
from abc import ABC, abstractmethod
from typing import BinaryIO

Buffer = memoryview | bytes | bytearray
"""What a read hands back: bytes, or a zero-copy view of them."""

UNREADABLE = frozenset((errno.EIO, errno.EFAULT, errno.ENXIO))
"""Errors of ``pread`` that mean "these bytes cannot be served": a hole, not a failure."""


def pread_into(fd: int, offset: int, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``offset`` of ``fd`` with ``preadv``, however many calls it
    takes; the count is short at the end of the file or at an unreadable byte
    (:data:`UNREADABLE`).

    :raises OSError: for any other error.
    """
    done = 0
    total = len(buffer)
    while done < total:
        try:
            count = os.preadv(fd, [buffer[done:]], offset + done)
        except OSError as error:
            if error.errno in UNREADABLE:
                break
            raise
        if count <= 0:
            break
        done += count
    return done


def close_quietly(fd: int) -> None:
    """Close ``fd``, ignoring errors (for finalizers)."""
    try:
        os.close(fd)
    except OSError:
        pass

SourceSpec = str | os.PathLike[str] | bytes | int | BinaryIO
"""What ``add_file`` accepts: a path, a file descriptor or a binary file object."""


class Source(ABC):
    """A readable run of bytes at source offsets ``0 .. size()-1`` (SPEC §1.6).

    Subclass it (or follow the same protocol) to map anything with
    :meth:`vmemfs.MemoryMap.add_source`: a file, bytes, a live process, a compressed dump.
    Only :meth:`size` and :meth:`read_into` are required.

    Contract of :meth:`read_into`: it copies as many bytes as it can from ``offset`` and
    returns the count; the count is short where a byte cannot be served (past the end, a
    page the source left out, an ``EIO``/``EFAULT`` from the operating system).  Bytes it
    cannot serve read as holes; it raises only for bugs, never for a byte it lacks.
    """

    name: str = "<source>"
    """How the source is shown to users: an absolute path, ``fd:N``, ``<bytes>``, ..."""

    volatile: bool = False
    """The bytes can change under the reader (live memory): nothing read is cached."""

    @abstractmethod
    def size(self) -> int:
        """The current number of bytes (a file may shrink while mapped)."""

    @abstractmethod
    def read_into(self, offset: int, buffer: memoryview) -> int:
        """Copy bytes from ``offset`` into ``buffer``; return the count, short at a hole."""

    def view(self, offset: int, length: int) -> Buffer:
        """Up to ``length`` bytes from ``offset``, short at the first byte not served.

        Sources that can do it without a copy (an ``mmap`` of a file) return a zero-copy
        view meant for the kernel only (see the module docstring); the default copies
        with :meth:`read_into`.
        """
        buffer = bytearray(max(0, length))
        count = self.read_into(offset, memoryview(buffer))
        del buffer[count:]
        return buffer

    def pread(self, offset: int, length: int) -> bytes:
        """Copy up to ``length`` bytes from ``offset`` (short at the end or a hole)."""
        return bytes(self.view(offset, length))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the source holds open."""


class BytesSource(Source):
    """Bytes held in memory (an immutable copy of what was given)."""

    def __init__(self, data: bytes | bytearray | memoryview, name: str = "<bytes>") -> None:
        self._data = bytes(data)
        self._view = memoryview(self._data)
        self.name = name

    def size(self) -> int:
        return len(self._data)

    def read_into(self, offset: int, buffer: memoryview) -> int:
        chunk = self._view[offset:offset + len(buffer)]
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def view(self, offset: int, length: int) -> memoryview:
        return self._view[offset:offset + length]


class FileSource(Source):
    """A file held open by a descriptor of its own (``O_RDONLY | O_CLOEXEC``).

    Regular files and block devices are also mapped with ``mmap`` (lazily, at the size
    they had when first viewed) so that :meth:`view` needs no copy.
    """

    def __init__(self, fd: int, name: str, *, private_offset: bool = False) -> None:
        """Take ownership of ``fd`` (closed by :meth:`close`).

        ``private_offset``: no one else shares ``fd``'s file offset (it was opened from a
        path, not duplicated from a caller's descriptor), so the size can be asked with
        ``lseek``, which moves that offset: a quarter of the cost of ``fstat``, on every
        read.  Reads never use the offset (``pread``).  A file that is not regular (a
        block device) is always sized with ``lseek``: ``fstat`` does not give its size.
        """
        self.fd = fd
        self.name = name
        st = os.fstat(fd)
        self._regular = stat.S_ISREG(st.st_mode)
        self.identity = (st.st_dev, st.st_ino)
        self._seek_size = private_offset or not self._regular
        self._map: mmap.mmap | None = None
        self._map_view: memoryview | None = None
        self._map_tried = False
        # A map dropped without close() must not leak its descriptors.
        self._closer = weakref.finalize(self, close_quietly, fd)

    def size(self) -> int:
        if self._seek_size:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    def read_into(self, offset: int, buffer: memoryview) -> int:
        return pread_into(self.fd, offset, buffer)

    def view(self, offset: int, length: int) -> memoryview:
        # The size now, every time: a file that shrank must not be read past its end.
        # (size(), inlined: this is the read path of mem.)
        if self._seek_size:
            size = os.lseek(self.fd, 0, os.SEEK_END)
        else:
            size = os.fstat(self.fd).st_size
        if offset + length > size:
            length = max(0, size - offset)
        if length == 0:
            return memoryview(b"")
        map_view = self._map_view
        if map_view is None or offset + length > len(map_view):
            map_view = self._remap(size)
            if map_view is None:  # not mappable (a FUSE file with direct_io, a pipe)
                return memoryview(super().view(offset, length))
        return map_view[offset:offset + length]

    def _remap(self, size: int) -> memoryview | None:
        """Map the file at its current size; ``None`` where mmap is not possible."""
        if self._map_tried and self._map is None:
            return None
        self._map_tried = True
        try:
            new_map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError):
            self._map = None
            return None
        # The old map stays alive while views of it are still referenced.
        self._map = new_map
        self._map_view = memoryview(new_map)
        return self._map_view

    def close(self) -> None:
        self._map_view = None
        self._map = None
        self._closer()


def open_file_source(spec: SourceSpec) -> Source:
    """Open what ``add_file`` was given as a :class:`Source`.

    Paths are opened read-only; a descriptor is duplicated (the caller keeps its own);
    a file object with a descriptor is duplicated too, and one without (``io.BytesIO``)
    is read whole into memory from its start.

    :raises OSError: if the path cannot be opened.
    :raises TypeError: for anything else.
    """
    if isinstance(spec, (str, bytes, os.PathLike)):
        path = os.fsdecode(spec)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise IsADirectoryError(f"{path}: is a directory")
        except BaseException:
            os.close(fd)
            raise
        return FileSource(fd, os.path.abspath(path), private_offset=True)
    if isinstance(spec, int):
        return FileSource(os.dup(spec), f"fd:{spec}")
    fileno = getattr(spec, "fileno", None)
    if fileno is not None:
        try:
            descriptor: int | None = fileno()
        except (OSError, io.UnsupportedOperation):
            descriptor = None
        if descriptor is not None:
            name = getattr(spec, "name", None)
            label = os.path.abspath(name) if isinstance(name, str) else f"fd:{descriptor}"
            return FileSource(os.dup(descriptor), label)
    read = getattr(spec, "read", None)
    if read is None:
        raise TypeError(f"cannot map a {type(spec).__name__}: give a path, fd or file object")
    seek = getattr(spec, "seek", None)
    if seek is not None:
        seek(0)
    return BytesSource(read(), "<file object>")
