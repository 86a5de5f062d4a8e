"""Sources whose bytes are stored as compressed blocks, decoded on demand (SPEC §1.6).

A :class:`BlockSource` serves source offsets ``0 .. size()-1`` laid out as consecutive
*blocks*: block ``i`` covers ``[start(i), start(i) + length(i))`` and is stored as
``stored_sizes[i]`` bytes at ``stored_offsets[i]`` of a :class:`StoredBytes` (a file, or
the rearranged image of a flattened file), encoded with ``codecs[i]``.  kdump pages are
fixed-size blocks (:class:`FixedBlockSource`); AVML's framed-snappy chunks are blocks of up
to 64 KiB each (:class:`VariableBlockSource`).

Small reads decode whole blocks into a bounded least-recently-used cache of decoded bytes
(:data:`DEFAULT_CACHE_BYTES`, 8 MiB per source: 2,048 pages of 4 KiB, or 128 AVML chunks of
64 KiB).  A read that misses decodes the blocks it needs in one batch (at most
:data:`BATCH_BYTES` decoded), with one ``pread`` per run of blocks stored back to back.

Large reads (:data:`BULK_BYTES` or more, as the kernel's 1 MiB readahead of ``extents/``
and ``dd`` of ``mem`` send) decode the blocks they cover whole straight into the caller's
buffer and leave the cache alone: a run of uncompressed blocks is one ``preadv`` into the
buffer, a stored block that many blocks share (kdump's zero page) is decoded once, and
zlib blocks are decoded on up to :data:`DECODE_THREADS` threads at once (zlib runs without
Python's global lock).  Only the partial blocks at either end of such a
read go through the cache.

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
import logging
import os
import threading
import zlib
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from vmemfs.errors import FormatError
from vmemfs.sources import UNREADABLE, Source, pread_into

_log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 8 << 20
"""Decoded bytes kept per source (least recently used blocks are dropped first)."""
BATCH_BYTES = 256 << 10
"""At most this many decoded bytes are decoded by one cache miss (whole blocks)."""
BULK_BYTES = 64 << 10
"""Reads of at least this many bytes decode the whole blocks they cover straight into the
caller's buffer, bypassing the cache."""
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads that decode the zlib blocks of one large read."""
PARALLEL_BLOCKS = 64
"""A large read decodes on several threads only if it has at least this many zlib blocks
(fewer do not repay the hand-over)."""

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
                if error.errno in UNREADABLE:
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readinto(self, offset: int, buffer: memoryview) -> int:
        """Fill ``buffer`` from ``offset``; the count is short at the end of the file or
        at an unreadable byte."""
        return pread_into(self.fd, offset, buffer)

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
        self.decompress_safe.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
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
        if code != 0 or produced.value != length:
            raise _lzo_failure(code, produced.value, length)
        return out


def _lzo_failure(code: int, produced: int, length: int) -> DecodeError:
    """Why ``lzo1x_decompress_safe`` failed: its error ``code``, or a count other than
    ``length``."""
    if code != 0:
        return DecodeError(f"lzo: {_LZO_ERRORS.get(code, f'error {code}')}")
    return DecodeError(f"lzo: {produced} bytes, expected {length}")


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
    if codec == ZLIB:
        return _inflate(stored, length)
    if codec == LZO:
        assert _lzo is not None, "require_codecs first"
        return _lzo.decode(bytes(stored), length)
    out = bytearray(length)
    decode_into(codec, stored, memoryview(out))
    return out


def _inflate(stored: bytes | memoryview, length: int) -> bytes:
    """One zlib stream that must decode to exactly ``length`` bytes.

    :raises DecodeError: if it is corrupt, or decodes to more or fewer bytes.
    """
    try:
        inflated = zlib.decompress(stored, 15, length)
    except zlib.error as error:
        raise DecodeError(f"zlib: {' '.join(str(error).split())}") from None
    if len(inflated) != length:
        raise DecodeError(f"zlib: {len(inflated)} bytes, expected {length}")
    return inflated


def decode_into(codec: int, stored: bytes | memoryview, out: memoryview) -> None:
    """Decode one block into ``out``, which it must fill exactly.

    :raises DecodeError: with a one-line reason if the data is corrupt or does not decode
        to exactly ``len(out)`` bytes.
    """
    length = len(out)
    try:
        if codec == RAW:
            if len(stored) != length:
                raise DecodeError(f"stored size {len(stored)}, expected {length}")
            out[:] = stored
            return
        if codec == ZLIB:
            out[:] = _inflate(stored, length)
            return
        if codec == LZO:
            assert _lzo is not None, "require_codecs first"
            out[:] = _lzo.decode(bytes(stored), length)
            return
        cramjam = _cramjam
        assert cramjam is not None, "require_codecs first"
        if codec == SNAPPY:
            declared = _snappy_length(stored)
            if declared != length:
                raise DecodeError(f"snappy: declares {declared} bytes, expected {length}")
            count = cramjam.snappy.decompress_raw_into(stored, out)
        elif codec == ZSTD:
            count = cramjam.zstd.decompress_into(stored, out)
        elif codec == SNAPPY_CHUNK:
            # A one-chunk stream: cramjam checks the chunk's CRC-32C.
            count = cramjam.snappy.decompress_into(SNAPPY_STREAM_IDENTIFIER + bytes(stored),
                                                   out)
        else:
            raise DecodeError(f"unknown codec {codec}")
        if count != length:
            raise DecodeError(f"{CODEC_NAMES[codec]}: {count} bytes, expected {length}")
    except DecodeError:
        raise
    except (ValueError, OverflowError, TypeError) as error:
        raise DecodeError(f"{CODEC_NAMES.get(codec, codec)}: "
                          f"{' '.join(str(error).split())}") from None
    except Exception as error:  # cramjam.DecompressionError and its kin
        if type(error).__module__.startswith("cramjam"):
            raise DecodeError(f"{CODEC_NAMES.get(codec, codec)}: "
                              f"{' '.join(str(error).split())}") from None
        raise


_PARALLEL_CODECS = frozenset((ZLIB,))
"""Codecs worth decoding on several threads: zlib runs without Python's global lock and
long enough per block (LZO also drops the lock, but its blocks decode in a few microseconds
and the threads then mostly wait for the lock)."""
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0

class _Plan:
    """The blocks of one large read that need decoding, as parallel lists (one entry per
    block, in block order), and the buffers holding their stored bytes."""

    __slots__ = ("bases", "buffers", "codecs", "lengths", "positions", "sizes", "starts",
                 "targets", "views")

    def __init__(self, positions: list[int], codecs: list[int], buffers: list[int],
                 starts: list[int], sizes: list[int], targets: list[int],
                 lengths: list[int], views: list[memoryview], bases: list[int]) -> None:
        self.positions = positions
        """Each block's position in the read."""
        self.codecs = codecs
        self.buffers = buffers
        """Which of :attr:`views` holds each block's stored bytes ..."""
        self.starts = starts
        """... from which offset in it, ..."""
        self.sizes = sizes
        """... and how many."""
        self.targets = targets
        """Where each block goes in the read's buffer, and its decoded length."""
        self.lengths = lengths
        self.views = views
        """Buffers of stored bytes, one per run of blocks stored back to back."""
        self.bases = bases
        """Their addresses (0 for one without LZO blocks)."""

    def part(self, begin: int, end: int) -> _Plan:
        """The blocks ``begin .. end-1`` of this plan."""
        return _Plan(self.positions[begin:end], self.codecs[begin:end],
                     self.buffers[begin:end], self.starts[begin:end], self.sizes[begin:end],
                     self.targets[begin:end], self.lengths[begin:end], self.views, self.bases)


def _decode_pool() -> ThreadPoolExecutor | None:
    """The threads that decode large reads (``None`` on one CPU); made once per process,
    so that a daemon which forked after opening gets its own."""
    global _pool, _pool_pid
    if DECODE_THREADS < 2:
        return None
    with _codec_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(DECODE_THREADS - 1, thread_name_prefix="vmemfs-decode")
            _pool_pid = os.getpid()
        return _pool


def _decode_plan(plan: _Plan, view: memoryview) -> tuple[int, str] | None:
    """Decode the blocks of ``plan`` into ``view``: on several threads when it has
    :data:`PARALLEL_BLOCKS` blocks of :data:`_PARALLEL_CODECS` or more.  Returns the first
    failing position and its reason, or ``None``."""
    count = len(plan.positions)
    if not count:
        return None
    target_base = 0
    anchor = None
    if any(plan.bases):
        anchor = (ctypes.c_char * len(view)).from_buffer(view)
        target_base = ctypes.addressof(anchor)
    try:
        parallel = sum(plan.codecs.count(codec) for codec in _PARALLEL_CODECS)
        threads = _decode_pool() if parallel >= PARALLEL_BLOCKS else None
        if threads is None:
            return _decode_part(plan, view, target_base)
        share = -(-count // DECODE_THREADS)
        parts = [plan.part(at, at + share) for at in range(0, count, share)]
        futures = [threads.submit(_decode_part, part, view, target_base)
                   for part in parts[1:]]
        problems = [_decode_part(parts[0], view, target_base)]
        problems += [future.result() for future in futures]
        found = [problem for problem in problems if problem is not None]
        return min(found) if found else None
    finally:
        del anchor


def _decode_part(plan: _Plan, view: memoryview, target_base: int) -> tuple[int, str] | None:
    """Decode the blocks of ``plan`` in order; stop at the first that fails and return
    its position and reason."""
    produced = ctypes.c_size_t()
    produced_at = ctypes.byref(produced)
    lzo = _lzo.decompress_safe if _lzo is not None else None
    views = plan.views
    bases = plan.bases
    for position, codec, buffer, start, size, target, length in zip(
            plan.positions, plan.codecs, plan.buffers, plan.starts, plan.sizes, plan.targets,
            plan.lengths, strict=True):
        try:
            if codec == LZO and lzo is not None:
                # Called here, with addresses, to spare every Python step around the call
                # that can be spared: it is most of an LZO block's cost.
                produced.value = length
                code = lzo(bases[buffer] + start, size, target_base + target, produced_at,
                           None)
                if code != 0 or produced.value != length:
                    raise _lzo_failure(code, produced.value, length)
            elif codec == ZLIB:
                view[target:target + length] = _inflate(views[buffer][start:start + size],
                                                        length)
            else:
                decode_into(codec, views[buffer][start:start + size],
                            view[target:target + length])
        except DecodeError as error:
            return position, str(error)
    return None


def _copy_into(buffer: bytearray, data: bytes) -> int:
    """Copy ``data`` to the start of ``buffer``; the count copied."""
    buffer[:len(data)] = data
    return len(data)


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
        not in the cache (a large read decodes every whole block it covers).
        """
        view = buffer if isinstance(buffer, memoryview) and buffer.format == "B" \
            else memoryview(buffer).cast("B")
        end = min(offset + len(view), self.size())
        if offset < 0 or offset >= end:
            return 0
        if end - offset < BULK_BYTES:
            return self._read_cached(offset, end, view)
        # Whole blocks straight into the buffer; the partial ones at the ends, cached.
        first = self._block_of(offset)
        whole_start = self._start_of(first)
        if whole_start < offset:
            first += 1
            whole_start = self._start_of(first) if first < self._count else end
        stop = self._block_of(end - 1)
        whole_end = self._start_of(stop) + self._length_of(stop)
        if whole_end > end:
            whole_end = self._start_of(stop)
        else:
            stop += 1
        if stop - first < 2:
            return self._read_cached(offset, end, view)
        if whole_start > offset:
            count = self._read_cached(offset, whole_start, view)
            if count < whole_start - offset:
                return count
        count = self._read_whole(first, stop, view[whole_start - offset:whole_end - offset])
        if count < whole_end - whole_start:
            return whole_start - offset + count
        if whole_end < end:
            return whole_end - offset + self._read_cached(whole_end, end,
                                                          view[whole_end - offset:])
        return end - offset

    def _read_cached(self, offset: int, end: int, view: memoryview) -> int:
        """Copy source bytes ``[offset, end)`` into ``view`` (which starts at ``offset``)
        through the cache; short at a block that fails."""
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

    @abstractmethod
    def _layout(self, first: int, stop: int) -> tuple[list[int], list[int]]:
        """Where blocks ``first .. stop-1`` start, relative to the start of ``first``,
        and their decoded lengths."""

    def _read_whole(self, first: int, stop: int, view: memoryview) -> int:
        """Decode blocks ``first .. stop-1`` into ``view``, which spans exactly them.

        Returns the bytes served: all of them, or the bytes before the first block that
        cannot be read or decoded (logged as :meth:`_failed` does).  The cache is neither
        read nor filled; a stored block that several of these blocks share is decoded once.
        """
        count = stop - first
        offsets_array = self._stored_offsets[first:stop]
        sizes_array = self._stored_sizes[first:stop].astype(np.uint64)
        codecs_array = self._codecs[first:stop]
        targets, lengths = self._layout(first, stop)
        # Runs of blocks stored back to back; a run of uncompressed blocks whose stored
        # size is their length is read in place.
        ends_array = offsets_array + sizes_array
        breaks = np.ones(count, dtype=bool)
        np.not_equal(offsets_array[1:], ends_array[:-1], out=breaks[1:])
        run_firsts_array = np.flatnonzero(breaks)
        run_of_block = np.cumsum(breaks) - 1
        not_plain = (codecs_array != RAW) | (sizes_array != np.asarray(lengths, np.uint64))
        plain_runs = (np.add.reduceat(not_plain, run_firsts_array) == 0).tolist()
        run_firsts = run_firsts_array.tolist()
        run_stops = [*run_firsts[1:], count]
        offsets = offsets_array.tolist()
        sizes = sizes_array.tolist()
        codecs = codecs_array.tolist()
        stored = self._stored
        readinto = getattr(stored, "readinto", None)
        failure = count                    # the first block not served
        reasons: dict[int, str] = {}
        buffer_of_run = np.full(len(run_firsts), -1, dtype=np.int64)
        views: list[memoryview] = []
        bases: list[int] = []
        anchors: list[Any] = []            # ctypes views of the buffers LZO decodes from
        copies: list[tuple[int, int]] = []  # (block, an earlier block it shares storage with)
        singles: dict[tuple[int, int, int], int] = {}
        shared = self._shared
        for run, (begin, end) in enumerate(zip(run_firsts, run_stops, strict=True)):
            at = offsets[begin]
            span = offsets[end - 1] + sizes[end - 1] - at
            target = targets[begin]
            if end == begin + 1:
                key = (at, sizes[begin], codecs[begin])
                if shared is not None and shared[:3] == key:
                    view[target:target + lengths[begin]] = shared[3]
                    continue
                earlier = singles.get(key)
                if earlier is not None:
                    copies.append((begin, earlier))
                    continue
                singles[key] = begin
            if readinto is not None and plain_runs[run]:
                got = readinto(at, view[target:target + span])
                if got < span:
                    failure = self._short_stored(begin, end, offsets, sizes, at + got,
                                                 reasons)
                    break
                continue
            data = bytearray(span)
            got = readinto(at, memoryview(data)) if readinto is not None \
                else _copy_into(data, stored.pread(at, span))
            buffer_of_run[run] = len(views)
            views.append(memoryview(data))
            if LZO in codecs[begin:end]:
                anchor = (ctypes.c_char * span).from_buffer(data)
                anchors.append(anchor)
                bases.append(ctypes.addressof(anchor))
            else:
                bases.append(0)
            if got < span:
                failure = self._short_stored(begin, end, offsets, sizes, at + got, reasons)
                break
        try:
            plan = self._plan(buffer_of_run, run_of_block, run_firsts_array, failure,
                              codecs_array, sizes_array, offsets_array, targets, lengths,
                              views, bases)
            problem = _decode_plan(plan, view)
        finally:
            del anchors
        if problem is not None and problem[0] < failure:
            failure, reasons[problem[0]] = problem
        for position, earlier in copies:
            if position < failure:
                target = targets[position]
                source_at = targets[earlier]
                view[target:target + lengths[position]] = \
                    view[source_at:source_at + lengths[earlier]]
        if copies:
            position = copies[-1][1]
            if position < failure:
                target = targets[position]
                self._shared = (offsets[position], sizes[position], codecs[position],
                                bytes(view[target:target + lengths[position]]))
        if failure < count:
            self._failed(first + failure, reasons[failure])
            return targets[failure]
        return len(view)

    @staticmethod
    def _plan(buffer_of_run: np.ndarray, run_of_block: np.ndarray,
              run_firsts: np.ndarray, failure: int, codecs: np.ndarray, sizes: np.ndarray,
              offsets: np.ndarray, targets: list[int], lengths: list[int],
              views: list[memoryview], bases: list[int]) -> _Plan:
        """The blocks before ``failure`` whose stored bytes were read into a buffer."""
        buffers = buffer_of_run[run_of_block[:failure]]
        positions = np.flatnonzero(buffers >= 0)
        runs = run_of_block[positions]
        starts = offsets[positions] - offsets[run_firsts[runs]]
        wanted = positions.tolist()
        return _Plan(wanted, codecs[positions].tolist(), buffers[positions].tolist(),
                     starts.tolist(), sizes[positions].tolist(),
                     [targets[position] for position in wanted],
                     [lengths[position] for position in wanted], views, bases)

    def _short_stored(self, position: int, run_stop: int, offsets: list[int],
                      sizes: list[int], readable_end: int, reasons: dict[int, str]) -> int:
        """The first block of ``position .. run_stop-1`` whose stored bytes pass
        ``readable_end`` (where the stored file's bytes ended); its reason is recorded."""
        while position < run_stop - 1 and offsets[position] + sizes[position] <= readable_end:
            position += 1
        reasons[position] = (f"its {sizes[position]} stored bytes at offset "
                             f"{offsets[position]:#x} pass the end of {self._stored.name}")
        return position

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

    def _layout(self, first: int, stop: int) -> tuple[list[int], list[int]]:
        size = self.block_size
        return list(range(0, (stop - first) * size, size)), [size] * (stop - first)


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

    def _layout(self, first: int, stop: int) -> tuple[list[int], list[int]]:
        starts = self._starts[first:stop]
        return (starts - starts[0]).tolist(), self._lengths[first:stop].tolist()
