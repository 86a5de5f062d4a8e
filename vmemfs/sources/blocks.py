"""Sources whose bytes are stored as compressed blocks, decoded on demand (SPEC §1.6).

A :class:`BlockSource` serves source offsets ``0 .. size()-1`` laid out as consecutive
*blocks*: block ``i`` covers ``[start(i), start(i) + length(i))`` and is stored as
``stored_sizes[i]`` bytes at ``stored_offsets[i]`` of a :class:`StoredBytes` (a file, or
the rearranged image of a flattened file), encoded with ``codecs[i]``.  kdump pages are
fixed-size blocks (:class:`FixedBlockSource`); AVML's framed-snappy chunks are blocks of up
to 64 KiB each (:class:`VariableBlockSource`).

Reads decode whole blocks into a bounded least-recently-used cache of decoded bytes
(:data:`DEFAULT_CACHE_BYTES`, 8 MiB per source: 2,048 pages of 4 KiB, or 128 AVML chunks of
64 KiB).  A read that misses decodes the blocks it needs in one batch (at most
:data:`BATCH_BYTES` decoded), with one ``pread`` per run of blocks stored back to back.

A block that cannot be read or decoded (corrupt data, a wrong decoded size, stored bytes
past the end of the file) is a hole for that read: :meth:`BlockSource.read_into` returns a
short count there and the failure is logged once per block, as a warning naming it.  No
exception reaches the caller for bad data, so a mount keeps serving.

Every decoder is told the decoded size in advance and checks it: a block decoding to more
or fewer bytes is corrupt.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
import zlib
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from vmemfs.errors import FormatError
from vmemfs.sources import Source

_log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 8 << 20
"""Decoded bytes kept per source (least recently used blocks are dropped first)."""
BATCH_BYTES = 256 << 10
"""At most this many decoded bytes are decoded by one cache miss (whole blocks)."""

# Codec numbers, as stored in a block table (``uint8``).
RAW = 0
"""Stored as is: the stored size must equal the block's length."""
ZLIB = 1
"""A zlib stream (RFC 1950), as makedumpfile and QEMU write with ``compress2``."""
LZO = 2
"""LZO1X, decoded with ``lzo1x_decompress_safe`` from liblzo2."""
SNAPPY = 3
"""Raw snappy (no framing): a varint of the decoded length, then the elements."""
ZSTD = 4
"""One zstd frame."""
SNAPPY_CHUNK = 5
"""One chunk of a framed snappy stream, header included: type 0x00 (compressed) or 0x01
(uncompressed), 3-byte length, masked CRC-32C of the decoded bytes, data.  The CRC is
checked."""

CODEC_NAMES = {RAW: "raw", ZLIB: "zlib", LZO: "lzo", SNAPPY: "snappy", ZSTD: "zstd",
               SNAPPY_CHUNK: "snappy-framed"}

SNAPPY_STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"
"""The chunk that starts every framed snappy stream."""

_UNREADABLE = frozenset((errno.EIO, errno.EFAULT, errno.ENXIO))


class DecodeError(Exception):
    """A block could not be decoded; the message says why (one line)."""


# ---------------------------------------------------------------------- stored bytes


class StoredBytes(Protocol):
    """Where stored (compressed) blocks are read from."""

    name: str

    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``; short at the end or an unreadable byte."""
        ...

    def size(self) -> int:
        """The number of bytes that can be read."""
        ...

    def close(self) -> None:
        """Release the file."""
        ...


class FileBytes:
    """A file read with ``pread``, held open by a descriptor of its own."""

    def __init__(self, fd: int, name: str) -> None:
        """Take ownership of ``fd`` (closed by :meth:`close`)."""
        self.fd = fd
        self.name = name

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FileBytes:
        """Open ``path`` read-only.  :raises OSError: if it cannot be opened."""
        return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC), os.path.abspath(path))

    def pread(self, offset: int, size: int) -> bytes:
        chunks: list[bytes] = []
        while size > 0:
            try:
                chunk = os.pread(self.fd, size, offset)
            except OSError as error:
                if error.errno in _UNREADABLE:
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------------- codecs


_LZO_ERRORS = {-1: "error", -2: "out of memory", -3: "not compressible", -4: "input overrun",
               -5: "output overrun", -6: "lookbehind overrun", -7: "end of stream not found",
               -8: "input not consumed"}


class _Lzo:
    """``lzo1x_decompress_safe`` from Debian's liblzo2 (package liblzo2-2), via ctypes."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("lzo2") or "liblzo2.so.2"
        library = ctypes.CDLL(path)
        # lzo_init() is a macro around __lzo_init_v2; -1 skips each type-size check.
        init = getattr(library, "__lzo_init_v2")  # a private name: no mangling
        init.restype = ctypes.c_int
        init.argtypes = [ctypes.c_uint] + [ctypes.c_int] * 9
        if init(0x2080, *([-1] * 9)) != 0:
            raise OSError(f"{path}: lzo_init failed")
        self.decompress_safe = library.lzo1x_decompress_safe
        self.decompress_safe.restype = ctypes.c_int
        self.decompress_safe.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                                         ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
        self._buffer_types: dict[int, Any] = {}

    def decode(self, stored: bytes, length: int) -> bytearray:
        out = bytearray(length)
        produced = ctypes.c_size_t(length)
        buffer_type = self._buffer_types.get(length)
        if buffer_type is None:
            buffer_type = self._buffer_types.setdefault(length, ctypes.c_char * length)
        target = buffer_type.from_buffer(out) if length else None
        code = self.decompress_safe(stored, len(stored), target, ctypes.byref(produced), None)
        if code != 0:
            raise DecodeError(f"lzo: {_LZO_ERRORS.get(code, f'error {code}')}")
        if produced.value != length:
            raise DecodeError(f"lzo: {produced.value} bytes, expected {length}")
        return out


_lzo: _Lzo | None = None
_cramjam: Any = None
_codec_lock = threading.Lock()


def _load_lzo() -> _Lzo:
    global _lzo
    with _codec_lock:
        if _lzo is None:
            _lzo = _Lzo()
        return _lzo


def _load_cramjam() -> Any:
    global _cramjam
    with _codec_lock:
        if _cramjam is None:
            import cramjam

            _cramjam = cramjam
        return _cramjam


_CODEC_NEEDS = {
    LZO: ("liblzo2 (Debian package liblzo2-2)", _load_lzo),
    SNAPPY: ("the cramjam Python package", _load_cramjam),
    ZSTD: ("the cramjam Python package", _load_cramjam),
    SNAPPY_CHUNK: ("the cramjam Python package", _load_cramjam),
}


def require_codecs(codecs: Iterable[int], name: str) -> None:
    """Load the libraries that decode ``codecs``, once.

    :raises FormatError: naming ``name``, the codec and what to install, if a library is
        missing (opening fails then, rather than every block reading as a hole).
    """
    for codec in sorted(set(codecs)):
        need = _CODEC_NEEDS.get(codec)
        if need is None:
            continue
        what, load = need
        try:
            load()
        except (OSError, ImportError, AttributeError) as error:
            raise FormatError(f"{name}: {CODEC_NAMES[codec]}-compressed blocks need {what}: "
                              f"{' '.join(str(error).split())}") from None


def _snappy_length(stored: bytes | memoryview) -> int:
    """The decoded length a raw snappy block declares (its leading varint)."""
    value = shift = 0
    for position in range(min(len(stored), 5)):
        byte = stored[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    raise DecodeError("snappy: bad length header")


def decode(codec: int, stored: bytes | memoryview, length: int) -> bytes | bytearray:
    """Decode one block of ``length`` bytes.

    :raises DecodeError: with a one-line reason if the data is corrupt or does not decode
        to exactly ``length`` bytes.
    """
    try:
        if codec == RAW:
            if len(stored) != length:
                raise DecodeError(f"stored size {len(stored)}, expected {length}")
            return bytes(stored)
        if codec == ZLIB:
            inflater = zlib.decompressobj()
            inflated = inflater.decompress(stored, length)
            if not inflater.eof:
                more = "more than" if inflater.unconsumed_tail else "not"
                raise DecodeError(f"zlib: the stream does {more} fill {length} bytes")
            if len(inflated) != length:
                raise DecodeError(f"zlib: {len(inflated)} bytes, expected {length}")
            return inflated
        if codec == LZO:
            assert _lzo is not None, "require_codecs first"
            return _lzo.decode(bytes(stored), length)
        cramjam = _cramjam
        assert cramjam is not None, "require_codecs first"
        out = bytearray(length)
        if codec == SNAPPY:
            declared = _snappy_length(stored)
            if declared != length:
                raise DecodeError(f"snappy: declares {declared} bytes, expected {length}")
            count = cramjam.snappy.decompress_raw_into(bytes(stored), out)
        elif codec == ZSTD:
            count = cramjam.zstd.decompress_into(bytes(stored), out)
        elif codec == SNAPPY_CHUNK:
            # A one-chunk stream: cramjam checks the chunk's CRC-32C.
            count = cramjam.snappy.decompress_into(SNAPPY_STREAM_IDENTIFIER + bytes(stored),
                                                   out)
        else:
            raise DecodeError(f"unknown codec {codec}")
        if count != length:
            raise DecodeError(f"{CODEC_NAMES[codec]}: {count} bytes, expected {length}")
        return out
    except DecodeError:
        raise
    except (zlib.error, ValueError, OverflowError, TypeError) as error:
        raise DecodeError(f"{CODEC_NAMES.get(codec, codec)}: "
                          f"{' '.join(str(error).split())}") from None
    except Exception as error:  # cramjam.DecompressionError and its kin
        if type(error).__module__.startswith("cramjam"):
            raise DecodeError(f"{CODEC_NAMES.get(codec, codec)}: "
                              f"{' '.join(str(error).split())}") from None
        raise


# ---------------------------------------------------------------------- sources


class BlockSource(Source):
    """Bytes stored as encoded blocks, decoded on demand into a bounded LRU cache.

    Thread-safe: the cache and the warn-once set are guarded by a lock; decoding runs
    outside it (two threads may decode the same block; both get the same bytes).
    """

    def __init__(self, stored: StoredBytes, stored_offsets: np.ndarray,
                 stored_sizes: np.ndarray, codecs: np.ndarray, *, name: str,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 describe: Callable[[int], str] | None = None) -> None:
        """Serve the blocks of a table (``uint64`` offsets, ``uint32`` sizes, ``uint8``
        codecs, one entry per block, in source-offset order) read from ``stored``.

        ``describe(index)`` names a block in warnings (e.g. ``"page 0x1f (physical address
        0x1f000)"``).  The source takes ownership of ``stored`` (see :meth:`close`).
        """
        self.name = name
        self._stored = stored
        self._stored_offsets = np.ascontiguousarray(stored_offsets, dtype=np.uint64)
        self._stored_sizes = np.ascontiguousarray(stored_sizes, dtype=np.uint32)
        self._codecs = np.ascontiguousarray(codecs, dtype=np.uint8)
        self._count = len(self._codecs)
        self._cache: OrderedDict[int, bytes | bytearray] = OrderedDict()
        self._cached_bytes = 0
        self._cache_limit = max(0, cache_bytes)
        self._lock = threading.Lock()
        self._warned: set[int] = set()
        self._describe = describe
        self._shared: tuple[int, int, int, bytes | bytearray] | None = None
        """The last block read on its own: ``(stored offset, size, codec, bytes)``."""
        self.failures = 0
        """How many block reads have failed so far (each logged once per block)."""

    # Layout of the blocks, supplied by subclasses.

    @abstractmethod
    def _block_of(self, offset: int) -> int:
        """The block holding source offset ``offset`` (``0 <= offset < size()``)."""

    @abstractmethod
    def _start_of(self, index: int) -> int:
        """The source offset where block ``index`` starts."""

    @abstractmethod
    def _length_of(self, index: int) -> int:
        """The decoded length of block ``index``."""

    def describe_block(self, index: int) -> str:
        """How warnings name block ``index``."""
        if self._describe is not None:
            return self._describe(index)
        return f"block {index} (source offset {self._start_of(index):#x})"

    @property
    def block_count(self) -> int:
        """The number of blocks."""
        return self._count

    @property
    def cache_limit(self) -> int:
        """The bound on decoded bytes kept in the cache."""
        return self._cache_limit

    def cached_bytes(self) -> int:
        """Decoded bytes held in the cache now (at most :attr:`cache_limit`)."""
        return self._cached_bytes

    def read_into(self, offset: int, buffer: memoryview) -> int:
        """Copy decoded bytes from ``offset``; short at the end or at a block that fails.

        Runtime complexity: ``O(k)`` for ``k`` blocks touched, plus decoding the blocks
        not in the cache.
        """
        view = buffer if isinstance(buffer, memoryview) and buffer.format == "B" \
            else memoryview(buffer).cast("B")
        end = min(offset + len(view), self.size())
        if offset < 0 or offset >= end:
            return 0
        cache = self._cache
        lock = self._lock
        position = offset
        pending: dict[int, bytes | bytearray] = {}
        while position < end:
            index = self._block_of(position)
            block = pending.pop(index, None)
            if block is None:
                with lock:
                    block = cache.get(index)
                    if block is not None:
                        cache.move_to_end(index)
                if block is None:
                    pending = self._decode_batch(index, end)
                    block = pending.pop(index, None)
                    if block is None:
                        break
            skip = position - self._start_of(index)
            count = min(len(block) - skip, end - position)
            done = position - offset
            view[done:done + count] = memoryview(block)[skip:skip + count]
            position += count
        return position - offset

    def _decode_batch(self, first: int, end: int) -> dict[int, bytes | bytearray]:
        """Decode blocks ``first, first+1, ...`` up to source offset ``end`` (at most
        :data:`BATCH_BYTES`, at least one block), cache them and return them.

        Stops before the first block that is already cached or fails (that one is logged).
        """
        last = first + 1
        budget = BATCH_BYTES - self._length_of(first)
        limit = self._count
        with self._lock:
            while last < limit and budget > 0 and self._start_of(last) < end \
                    and last not in self._cache:
                budget -= self._length_of(last)
                last += 1
        offsets = self._stored_offsets[first:last].tolist()
        sizes = self._stored_sizes[first:last].tolist()
        codecs = self._codecs[first:last].tolist()
        decoded: dict[int, bytes | bytearray] = {}
        run = 0
        count = last - first
        while run < count:
            # A run of blocks stored back to back: one read.
            stop = run + 1
            while stop < count and offsets[stop] == offsets[stop - 1] + sizes[stop - 1]:
                stop += 1
            shared = self._shared
            if stop == run + 1 and shared is not None \
                    and shared[:3] == (offsets[run], sizes[run], codecs[run]):
                # The stored block that many blocks point at (kdump's one zero page).
                decoded[first + run] = shared[3]
                run = stop
                continue
            span = offsets[stop - 1] + sizes[stop - 1] - offsets[run]
            data = self._stored.pread(offsets[run], span)
            whole = memoryview(data)
            for position in range(run, stop):
                index = first + position
                at = offsets[position] - offsets[run]
                size = sizes[position]
                try:
                    if at + size > len(data):
                        raise DecodeError(
                            f"its {size} stored bytes at offset {offsets[position]:#x} "
                            f"pass the end of {self._stored.name}")
                    block = decode(codecs[position], whole[at:at + size],
                                   self._length_of(index))
                except DecodeError as error:
                    self._failed(index, str(error))
                    self._remember(decoded)
                    return decoded
                decoded[index] = block
            if stop == run + 1:
                self._shared = (offsets[run], sizes[run], codecs[run], block)
            run = stop
        self._remember(decoded)
        return decoded

    def _remember(self, decoded: dict[int, bytes | bytearray]) -> None:
        if not decoded or self._cache_limit <= 0:
            return
        with self._lock:
            cache = self._cache
            for index, block in decoded.items():
                old = cache.pop(index, None)
                if old is not None:
                    self._cached_bytes -= len(old)
                cache[index] = block
                self._cached_bytes += len(block)
            while self._cached_bytes > self._cache_limit and cache:
                _, dropped = cache.popitem(last=False)
                self._cached_bytes -= len(dropped)

    def _failed(self, index: int, reason: str) -> None:
        with self._lock:
            self.failures += 1
            first_time = index not in self._warned
            self._warned.add(index)
        if first_time:
            _log.warning("%s: %s cannot be decoded (%s); it reads as a hole", self.name,
                         self.describe_block(index), reason)

    def close(self) -> None:
        """Close the stored file and drop the cache."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0
        self._stored.close()


class FixedBlockSource(BlockSource):
    """Blocks of one size: block ``i`` covers ``[i * block_size, (i + 1) * block_size)``."""

    def __init__(self, stored: StoredBytes, block_size: int, stored_offsets: np.ndarray,
                 stored_sizes: np.ndarray, codecs: np.ndarray, *, name: str,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 describe: Callable[[int], str] | None = None) -> None:
        super().__init__(stored, stored_offsets, stored_sizes, codecs, name=name,
                         cache_bytes=cache_bytes, describe=describe)
        self.block_size = block_size
        self._size = self._count * block_size

    def size(self) -> int:
        return self._size

    def _block_of(self, offset: int) -> int:
        return offset // self.block_size

    def _start_of(self, index: int) -> int:
        return index * self.block_size

    def _length_of(self, index: int) -> int:
        return self.block_size


class VariableBlockSource(BlockSource):
    """Blocks of their own lengths, back to back from source offset 0."""

    def __init__(self, stored: StoredBytes, lengths: np.ndarray, stored_offsets: np.ndarray,
                 stored_sizes: np.ndarray, codecs: np.ndarray, *, name: str,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 describe: Callable[[int], str] | None = None) -> None:
        super().__init__(stored, stored_offsets, stored_sizes, codecs, name=name,
                         cache_bytes=cache_bytes, describe=describe)
        lengths = np.ascontiguousarray(lengths, dtype=np.uint64)
        ends = np.cumsum(lengths, dtype=np.uint64)
        self._starts = ends - lengths
        self._lengths = lengths.astype(np.uint32)
        self._size = int(ends[-1]) if len(ends) else 0

    def size(self) -> int:
        return self._size

    def _block_of(self, offset: int) -> int:
        return int(np.searchsorted(self._starts, np.uint64(offset), side="right")) - 1

    def _start_of(self, index: int) -> int:
        return int(self._starts[index])

    def _length_of(self, index: int) -> int:
        return int(self._lengths[index])
