"""``mem`` through the page cache where that is exact (SPEC §4.2.1; docs/mounting.md, "Page
cache"): the mode chosen at each open, reads that never come back short, ``cache=``,
``.ctl/cache``, the adapter dropping the kernel's copy when ``base`` or ``holes`` change,
and, through the kernel, exactness in both modes: reads that start 1 byte, 1 page and
1 MiB before a hole with ``pread``, ``dd``, ``xxd``, ``cat`` and ``mmap``, ``st_size``
after each, changes while files are open and cached, backing files that shrink, and the
size of the kernel's page-cache units (large folios would break the page-by-page retry).
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyfuse3
import pytest
import trio
from conftest import Mounts
from mounting import Mount
from treemodel import tree_of

from vmemfs import MemoryMap, fs
from vmemfs.errors import HoleError
from vmemfs.options import UsageError, parse_command_line
from vmemfs.sources import Source
from vmemfs.tree import MountState
from vmemfs.tree import files as tree

PAGE = 4096
MIB = 1 << 20
MAGIC = 0x9E3779B97F4A7C15
"""Word at address ``a`` (8-aligned) of the test image is ``a ^ MAGIC``: a byte from the
wrong place cannot pass for the right one."""


# ==================================================================== the model (no FUSE)


def map_of(ranges: list[tuple[int, int]]) -> MemoryMap:
    """A map of bytes over ``ranges`` (``[start, end)``), each byte ``address & 0xff``."""
    memory_map = MemoryMap()
    for start, end in ranges:
        memory_map.add_bytes(bytes(a & 0xFF for a in range(start, end)), start)
    return memory_map


@pytest.mark.parametrize(("ranges", "options", "mode"), [
    ([(0, 0x2000), (0x3000, 0x4000)], {}, "page"),
    ([(0, 0x2000), (0x3000, 0x4001)], {}, "page"),                  # unaligned end of mem
    ([(0, 0x2000), (0x3000, 0x4000)], {"base": 0x1000}, "page"),
    ([(0, 0x2000), (0x3000, 0x4000)], {"base": 0x10}, "direct"),      # base inside a page
    ([(0, 0x2001), (0x3000, 0x4000)], {}, "direct"),                # hole starts mid-page
    ([(0, 0x2000), (0x3001, 0x4000)], {}, "direct"),                # hole ends mid-page
    ([(0, 0x2001), (0x3000, 0x4000)], {"base": 0x3000}, "page"),    # that hole is below base
    ([(0, 0x2001), (0x3000, 0x4000)], {"holes": "zero"}, "page"),   # holes read as zeros
    ([(0, 0x2000), (0x3000, 0x4000)], {"cache": "never"}, "direct"),
    ([(0, 0x2001)], {"cache": "never", "holes": "zero"}, "direct"),
    ([(0x10, 0x20)], {"base": 0x1000}, "page"),                     # mem is empty
])
def test_mode_follows_the_layout(ranges: list[tuple[int, int]], options: dict[str, Any],
                                 mode: str) -> None:
    state = MountState(map_of(ranges), **options)
    assert state.cache_mode == mode
    handle = tree_of(state.map, **options).table.get(tree.MEM).open(False, True)
    assert (handle.direct_io, handle.keep_cache) == (mode == "direct", mode == "page")


def test_mode_changes_with_base_and_holes() -> None:
    state = MountState(map_of([(0x1000, 0x2000), (0x2800, 0x5000)]))
    assert state.cache_mode == "direct"            # 0x2000 and 0x2800 are inside mem
    state.set_base(0x3000)
    assert (state.cache_mode, state.mem_size) == ("page", 0x2000)
    state.set_base(0x3008)
    assert state.cache_mode == "direct"
    state.set_holes("zero")
    assert state.cache_mode == "page"
    state.set_holes("eio")
    state.set_base(0x1000)
    assert state.cache_mode == "direct"
    with pytest.raises(ValueError):
        MountState(state.map, cache="always")


class Volatile(Source):
    """Bytes that could change under the reader (as a live process's memory)."""

    volatile = True

    def size(self) -> int:
        return 0x2000

    def read_into(self, offset: int, buffer: memoryview) -> int:
        count = max(0, min(len(buffer), self.size() - offset))
        buffer[:count] = bytes(count)
        return count


def test_volatile_sources_are_never_cached() -> None:
    memory_map = MemoryMap()
    memory_map.add_source(Volatile(), 0)
    for holes in ("eio", "zero"):
        assert MountState(memory_map, holes=holes).cache_mode == "direct"


def reference_read(mapped: dict[int, int], top: int, base: int, zero: bool, offset: int,
                   size: int) -> bytes | int:
    """What a page-cache-mode read of ``mem`` gives, from a byte dict: all the bytes asked
    for (clipped to the end), or the first hole's address (an ``EIO``).  A request past
    the page that holds the end fails (the kernel asks for it only while it thinks
    ``mem`` larger)."""
    mem_size = max(0, top - base)
    if size > mem_size - offset and offset + size > -(-mem_size // PAGE) * PAGE:
        return base + min(offset, mem_size)
    size = max(0, min(size, mem_size - offset))
    result = bytearray()
    for address in range(base + offset, base + offset + size):
        if address in mapped:
            result.append(mapped[address])
        elif zero:
            result.append(0)
        else:
            return address
    return bytes(result)


@pytest.mark.parametrize("seed", range(8))
def test_page_reads_are_whole_or_fail(seed: int) -> None:
    """Seeded reads against a byte dict: a page-cache-mode read returns every byte asked
    for up to the end of ``mem``, or raises ``HoleError`` at the first hole; never short."""
    rng = random.Random(seed)
    mapped: dict[int, int] = {}
    memory_map = MemoryMap()
    for _ in range(rng.randrange(1, 12)):
        start = rng.randrange(0, 0x20000)
        if rng.random() < 0.5:
            start &= ~(PAGE - 1)
        data = rng.randbytes(rng.randrange(1, 3 * PAGE))
        memory_map.add_bytes(data, start)
        mapped.update(zip(range(start, start + len(data)), data, strict=True))
    top = max(mapped) + 1
    for holes in ("eio", "zero"):
        state = MountState(memory_map, holes=holes)
        for _ in range(300):
            state.set_base(rng.choice([0, PAGE, 0x10, rng.randrange(0x20000)]))
            offset = rng.randrange(0, 0x22000)
            size = rng.randrange(1, 5 * PAGE)
            expected = reference_read(mapped, top, state.base, holes == "zero", offset, size)
            if isinstance(expected, int):
                with pytest.raises(HoleError) as caught:
                    state.read_mem_pages(offset, size)
                assert caught.value.address == expected
            else:
                assert bytes(state.read_mem_pages(offset, size)) == expected
        assert not state.lost_bytes_seen                  # holes are not lost bytes


def test_a_request_past_the_last_page_fails() -> None:
    """The kernel asks past the page holding the end only while it thinks ``mem`` larger
    (``base`` moved under a read): a short reply would be taken for the end and the
    rest of the page filled with zeros, so the request fails instead."""
    state = MountState(map_of([(0, 0x2800)]))
    assert bytes(state.read_mem_pages(0x2000, PAGE)) == bytes(a & 0xFF for a in range(
        0x2000, 0x2800))                              # the page holding the end: short
    assert state.read_mem_pages(0x2800, 0x800) == b""
    for offset, size in ((0x2000, 2 * PAGE), (0x3000, PAGE), (0x1000, 3 * PAGE)):
        with pytest.raises(HoleError):
            state.read_mem_pages(offset, size)
    state.set_base(0x1000)
    with pytest.raises(HoleError):
        state.read_mem_pages(0x1000, 2 * PAGE)        # the old end's page, seen as data


def test_listeners_hear_what_changes_mem() -> None:
    state = MountState(map_of([(0, 0x2000)]))
    heard: list[str] = []
    state.listeners.append(lambda: heard.append(state.cache_mode))
    state.set_base(0x1000)
    state.set_holes("zero")
    state.set_control("wordsize", 64)                 # not what mem shows
    assert heard == ["page", "page"]


class Shrinking(Source):
    """A source that loses its bytes from ``cut`` on, as a truncated file would."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cut = len(data)

    def size(self) -> int:
        return len(self.data)

    def read_into(self, offset: int, buffer: memoryview) -> int:
        count = max(0, min(len(buffer), self.cut - offset))
        buffer[:count] = self.data[offset:offset + count]
        return count


def test_lost_bytes_turn_mem_direct() -> None:
    source = Shrinking(bytes(range(256)) * 64)
    memory_map = MemoryMap()
    memory_map.add_source(source, 0)
    state = MountState(memory_map)
    assert bytes(state.read_mem_pages(0, 0x4000)) == source.data
    source.cut = 0x1800
    with pytest.raises(HoleError) as caught:
        state.read_mem_pages(0x1000, PAGE)
    assert caught.value.address == 0x1800
    assert state.cache_mode == "direct"
    assert bytes(state.read_mem(0x1000, PAGE)) == source.data[0x1000:0x1800]   # to the byte
    state.set_holes("zero")
    assert state.cache_mode == "direct"                # for the rest of the mount


def test_a_shorter_backing_file_turns_mem_direct(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(4 * PAGE))
    memory_map = MemoryMap.of_file(path, 0)
    state = MountState(memory_map)
    mount = tree_of(memory_map)                       # another state, made before the cut
    assert state.cache_mode == "page"
    os.truncate(path, 3 * PAGE + 5)
    assert state.cache_mode == "direct"
    os.truncate(path, 4 * PAGE)                          # growing back changes nothing
    assert state.cache_mode == "direct"
    assert mount.state.cache_mode == "page"        # it checks at its opens: none was short
    os.truncate(path, PAGE)
    handle = mount.table.get(tree.MEM).open(False, True)
    assert handle.direct_io
    memory_map.close()


def test_attributes_are_kept_only_in_page_mode() -> None:
    mount = tree_of(map_of([(0, 0x2000), (0x3000, 0x4000)]))
    mem = mount.table.get(tree.MEM)
    assert not mem.attributes().volatile
    mount.state.set_base(8)
    assert mem.attributes().volatile


def test_ctl_cache() -> None:
    mount = tree_of(map_of([(0, 0x2000), (0x3000, 0x4000)]))
    cache = mount.table.get(tree.CTL_CACHE)
    assert mount.table.get(tree.CTL).lookup(b"cache") is cache
    assert cache.open(False, True).read(0, 100) == b"page\n"
    mount.state.set_base(1)
    assert cache.open(False, True).read(0, 100) == b"direct\n"
    assert cache.attributes().volatile
    with pytest.raises(tree.Refused):
        cache.open(True, True)


def test_cache_option() -> None:
    assert parse_command_line(["s", "d"]).options.cache == "auto"
    assert parse_command_line(["s", "d", "-o", "cache=NEVER"]).options.cache == "never"
    with pytest.raises(UsageError, match="option cache: 'sometimes' is not auto or never"):
        parse_command_line(["s", "d", "-o", "cache=sometimes"])


# -------------------------------------------------------------------- the adapter


def call(handler: Callable[..., Any], *args: Any) -> Any:
    async def run() -> Any:
        return await handler(*args)
    return trio.run(run)


@dataclass
class Context:
    uid: int = 1000
    gid: int = 1000
    pid: int = 1
    umask: int = 0o022


def operations(monkeypatch: pytest.MonkeyPatch,
               invalidate: Callable[[int], None]) -> fs.Operations:
    monkeypatch.setattr(pyfuse3, "invalidate_inode", invalidate)
    return fs.Operations(tree_of(map_of([(0, 0x2000), (0x3000, 0x4000)])), uid=1000,
                         gid=1000)


def handler_write(ops: fs.Operations, inode: int, value: bytes) -> int:
    info = call(ops.open, inode, os.O_WRONLY, Context())
    try:
        return int(call(ops.write, info.fh, 0, value))
    finally:
        call(ops.release, info.fh)


def test_a_control_write_drops_mems_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[int] = []
    ops = operations(monkeypatch, dropped.append)
    handler_write(ops, tree.CTL_BASE, b"0x1000\n")
    assert dropped == []                                # not mounted: no kernel to tell
    ops.init()
    handler_write(ops, tree.CTL_BASE, b"0x2000\n")
    handler_write(ops, tree.CTL_HOLES, b"zero\n")
    handler_write(ops, tree.CTL_WORDSIZE, b"64\n")
    with pytest.raises(pyfuse3.FUSEError):
        handler_write(ops, tree.CTL_BASE, b"nonsense\n")
    assert dropped == [tree.MEM, tree.MEM, tree.VIEW_CORE]   # wordsize: core.elf's headers


def test_a_control_write_waits_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may wait for a read this loop has yet to answer: the write returns
    anyway, and the invalidation finishes later in its thread."""
    release = threading.Event()
    finished = threading.Event()

    def blocked(inode: int) -> None:
        release.wait(30)
        finished.set()

    ops = operations(monkeypatch, blocked)
    monkeypatch.setattr(fs, "INVALIDATION_WAIT", 0.05)
    ops.init()
    assert handler_write(ops, tree.CTL_BASE, b"0x1000\n") == 7
    assert not finished.is_set()
    release.set()
    assert finished.wait(30)
    assert ops.tree.state.base == 0x1000


def test_an_inode_the_kernel_forgot_is_not_an_error(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def forgotten(inode: int) -> None:
        raise OSError(errno.ENOENT, "no such inode")

    ops = operations(monkeypatch, forgotten)
    ops.init()
    handler_write(ops, tree.CTL_HOLES, b"zero\n")
    assert not caplog.records


# ==================================================================== through the kernel

IMAGE_SIZE = 24 * MIB
ALIGNED = [(0, 8 * MIB), (8 * MIB + 256 * 1024, 16 * MIB), (17 * MIB, IMAGE_SIZE - 100)]
"""Page-aligned extents (the last one ends mid-page: the end of mem may)."""
GRANULAR = [*ALIGNED, (8 * MIB, 8 * MIB + 1)]
"""The same with one byte more mapped: the first hole starts inside a page."""
BACKS = (1, 1000, PAGE, PAGE + 1, MIB)
"""How far before a hole reads start."""


class Image:
    """A file whose word at offset ``a`` is ``a ^ MAGIC``, mapped at address = offset."""

    def __init__(self, path: Path) -> None:
        words = np.arange(0, IMAGE_SIZE, 8, dtype=np.uint64) ^ np.uint64(MAGIC)
        self.data = words.astype("<u8").tobytes()
        self.path = path
        path.write_bytes(self.data)

    def mapfile(self, name: str, ranges: list[tuple[int, int]]) -> Path:
        tables = [f'[[map]]\nfile = "{self.path.name}"\naddress = {start:#x}\n'
                  f"offset = {start:#x}\nlength = {end - start:#x}\n" for start, end in ranges]
        path = self.path.parent / name
        path.write_text("\n".join(tables))
        return path


class Layout:
    """What ``mem`` shows for ``ranges`` at a ``base``, under ``holes=eio``."""

    def __init__(self, image: Image, ranges: list[tuple[int, int]], base: int = 0) -> None:
        mask = np.zeros(IMAGE_SIZE, dtype=bool)
        for start, end in ranges:
            mask[start:end] = True
        self.image = image
        self.mask = mask
        self.base = base
        self.top = max(end for _, end in ranges)
        self.size = self.top - base

    def mapped(self, offset: int) -> bool:
        return bool(self.mask[self.base + offset])

    def next_data(self, offset: int) -> int:
        """The first mapped offset at or after ``offset`` (or the end of mem)."""
        window = self.mask[self.base + offset:self.top]
        data = np.flatnonzero(window)
        return offset + (int(data[0]) if len(data) else len(window))

    def next_hole(self, offset: int) -> int:
        """The first hole (or the end of mem) at or after ``offset``."""
        window = self.mask[self.base + offset:self.top]
        holes = np.flatnonzero(~window)
        return offset + (int(holes[0]) if len(holes) else len(window))

    def hole_starts(self) -> list[int]:
        """Offsets of ``mem`` where a hole starts."""
        inside = self.mask[self.base:self.top]
        return [int(i) + 1 for i in np.flatnonzero(inside[:-1] & ~inside[1:])]

    def expected(self, offset: int, size: int) -> bytes | None:
        """A ``holes=eio`` read: the bytes up to the first hole or the end, ``None`` for
        ``EIO`` (a read that starts in a hole)."""
        if offset >= self.size:
            return b""
        if not self.mapped(offset):
            return None
        stop = min(offset + size, self.next_hole(offset))
        return self.image.data[self.base + offset:self.base + stop]

    def zero_filled(self, offset: int, size: int) -> bytes:
        stop = min(offset + size, self.size)
        data = np.frombuffer(self.image.data, dtype=np.uint8)[
            self.base + offset:self.base + stop].copy()
        data[~self.mask[self.base + offset:self.base + stop]] = 0
        return data.tobytes()


@dataclass
class Case:
    name: str
    mount: Mount
    layout: Layout
    mode: str


def pread(path: Path, size: int, offset: int) -> bytes | None:
    """``pread`` on a fresh open (the mode is chosen at open); ``None`` for ``EIO``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    except OSError as error:
        assert error.errno == errno.EIO, error
        return None
    finally:
        os.close(fd)


def drop_pages(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (this file only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_up(case: Case) -> None:
    """Read every extent of ``mem`` in order with ``dd bs=1M``, as a reader would (the
    kernel's readahead grows over such runs)."""
    mem = case.mount.path("mem")
    offset = case.layout.next_data(0)
    while offset < case.layout.size:
        stop = case.layout.next_hole(offset)
        subprocess.run(["dd", f"if={mem}", "of=/dev/null", "bs=1M", f"skip={offset}",
                        f"count={stop - offset}", "iflag=skip_bytes,count_bytes",
                        "status=none"], check=True, timeout=120)
        offset = case.layout.next_data(stop)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return Image(tmp_path_factory.mktemp("image") / "image.bin")


class Cases:
    """The module's mounts, each made when first needed: the aligned map in page-cache
    mode (``page``), the same with ``cache=never`` (``direct``), and the map with one
    byte-granular mapping (``granular``, direct mode by itself)."""

    def __init__(self, image: Image, mounts: Mounts) -> None:
        self.image = image
        self.mounts = mounts
        self.made: dict[str, Case] = {}

    def __getitem__(self, name: str) -> Case:
        if name not in self.made:
            ranges = GRANULAR if name == "granular" else ALIGNED
            options = ("cache=never",) if name == "direct" else ()
            mount = self.mounts.foreground(self.image.mapfile(f"{name}.toml", ranges),
                                           *options)
            self.made[name] = Case(name, mount, Layout(self.image, ranges),
                                   "page" if name == "page" else "direct")
        return self.made[name]


@pytest.fixture(scope="module")
def cases(image: Image, module_mounts: Mounts) -> Cases:
    return Cases(image, module_mounts)


@pytest.fixture(params=["page", "direct", "granular"])
def case(request: pytest.FixtureRequest, cases: Cases) -> Case:
    return cases[request.param]


pytestmark = pytest.mark.mount


def starts_before_holes(layout: Layout) -> Iterator[tuple[int, int]]:
    """``(hole, start)``: reads that start 1 byte, 1000 bytes, 1 page, 1 page + 1 and
    1 MiB before each hole."""
    for hole in layout.hole_starts():
        for back in BACKS:
            if hole - back >= 0:
                yield hole, hole - back


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_preads_before_holes(case: Case, warm: bool) -> None:
    mem = case.mount.path("mem")
    assert case.mount.path(".ctl", "cache").read_text() == case.mode + "\n"
    drop_pages(mem)
    if warm:
        warm_up(case)
    layout = case.layout
    for hole, start in starts_before_holes(layout):
        for size in (hole - start, hole - start + 1, hole - start + 4999, 3 * MIB + 7):
            got = pread(mem, size, start)
            assert got == layout.expected(start, size), (hole, start, size)
            assert os.stat(mem).st_size == layout.size
        first_hole = layout.next_hole(start)
        assert pread(mem, 1, first_hole) is None
        assert pread(mem, 5000, first_hole + 5) is None
        assert os.stat(mem).st_size == layout.size
    # Past the holes, at and past the end.
    assert pread(mem, 100, 17 * MIB) == layout.expected(17 * MIB, 100)
    assert pread(mem, 1000, layout.size - 10) == layout.expected(layout.size - 10, 1000)
    assert pread(mem, 10, layout.size) == b""
    assert os.stat(mem).st_size == layout.size


def tool(*command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, capture_output=True, timeout=120)


def test_dd_cat_xxd_tail_before_holes(case: Case) -> None:
    mem = case.mount.path("mem")
    layout = case.layout
    drop_pages(mem)
    for hole, start in starts_before_holes(layout):
        stop = layout.next_hole(start)
        wanted = layout.image.data[start:stop]
        for block in ("1M", "4096", "1000"):
            result = tool("dd", f"if={mem}", f"bs={block}", f"skip={start}",
                          "iflag=skip_bytes", "status=none")
            assert result.stdout == wanted, (hole, start, block)
            assert b"Input/output error" in result.stderr and result.returncode != 0
        result = tool("xxd", "-s", str(start), str(mem))
        whole_lines = (stop - start) // 16 * 16
        reference = tool("xxd", "-s", str(start), "-l", str(whole_lines),
                         str(layout.image.path)).stdout if whole_lines else b""
        assert result.stdout == reference, (hole, start)
        assert b"Input/output error" in result.stderr
        result = tool("tail", "-c", f"+{start + 1}", str(mem))
        assert result.stdout == wanted and result.returncode != 0
        fd = os.open(mem, os.O_RDONLY)
        try:                                        # cat from where its stdin stands
            os.lseek(fd, start, os.SEEK_SET)
            result = subprocess.run(["cat"], stdin=fd, capture_output=True, timeout=120)
        finally:
            os.close(fd)
        assert result.stdout == wanted and b"Input/output error" in result.stderr
        assert os.stat(mem).st_size == layout.size
    result = tool("cat", str(mem))
    assert result.stdout == layout.image.data[:layout.next_hole(0)]
    assert b"Input/output error" in result.stderr
    assert os.stat(mem).st_size == layout.size


MMAP_READER = r"""
import json, mmap, os, sys
path, flag, spans = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
try:
    mapping = mmap.mmap(fd, 0, flags=getattr(mmap, flag), prot=mmap.PROT_READ)
except OSError as error:
    print(json.dumps({"errno": error.errno}))
    sys.exit(0)
result = {"size": len(mapping), "spans": [mapping[a:b].hex() for a, b in spans]}
result["st_size"] = os.fstat(fd).st_size
print(json.dumps(result), flush=True)
"""


def mmap_read(path: Path, flag: str, spans: list[tuple[int, int]]) -> tuple[int, Any]:
    """Map ``path`` in a child process and read ``spans`` from the mapping: the child's
    exit status and its report (``None`` when it died of a signal)."""
    result = subprocess.run([sys.executable, "-c", MMAP_READER, str(path), flag,
                             json.dumps(spans)], capture_output=True, timeout=120, text=True)
    report = json.loads(result.stdout) if result.returncode == 0 else None
    return result.returncode, report


def test_mmap(case: Case) -> None:
    """Page-cache mode: ``mmap`` (shared or private) shows every mapped page, and touching
    a hole's page is ``SIGBUS``, the kernel's answer for a page it cannot fill.  Direct
    mode: ``MAP_SHARED`` is refused with ``ENODEV``; a private mapping is filled through
    the page cache with direct-mode replies, so a page after a hole may fault with
    ``SIGBUS`` but no mapped byte is wrong here, where holes start on page boundaries
    (docs/mounting.md, "Page cache")."""
    mem = case.mount.path("mem")
    layout = case.layout
    drop_pages(mem)
    inside = [(0, 100), (8 * MIB - PAGE, 8 * MIB), (8 * MIB + 256 * 1024, 9 * MIB),
              (16 * MIB - 10, 16 * MIB), (17 * MIB, 17 * MIB + 5),
              (layout.size - 100, layout.size)]
    flags = ["MAP_SHARED", "MAP_PRIVATE"]
    if case.mode == "direct":
        status, report = mmap_read(mem, "MAP_SHARED", inside)
        assert report == {"errno": errno.ENODEV}
        flags = ["MAP_PRIVATE"]
    faults = 0
    for flag in flags:
        for span in inside:
            drop_pages(mem)
            status, report = mmap_read(mem, flag, [span])
            if case.mode == "direct" and status == -signal.SIGBUS and span[0] > 0:
                faults += 1
                continue
            assert status == 0, (flag, span)
            assert bytes.fromhex(report["spans"][0]) == layout.image.data[span[0]:span[1]]
            assert report["size"] == report["st_size"] == layout.size
        if case.mode == "page":
            for hole in layout.hole_starts():
                status, _ = mmap_read(mem, flag, [(hole - 10, hole), (hole, hole + 1)])
                assert status == -signal.SIGBUS, (flag, hole)
                status, _ = mmap_read(mem, flag, [(hole - 10, hole + 1)])
                assert status == -signal.SIGBUS, (flag, hole)
        assert os.stat(mem).st_size == layout.size
    assert faults < len(inside) - 1


def test_private_mmap_in_direct_mode_across_a_hole(cases: Cases) -> None:
    """What a private mapping of ``mem`` in direct mode does across a hole that starts
    inside a page (documented in docs/mounting.md): the page is filled by a short reply,
    so the bytes of the hole in it read as zeros, and the kernel takes the reply for the
    end of the file: in that process, pages after the hole fault with ``SIGBUS``.  A
    ``stat`` asks the daemon again (attributes are not cached in direct mode)."""
    case = cases["granular"]                  # a hole that starts inside a page
    mem = case.mount.path("mem")
    hole = 8 * MIB + 1
    drop_pages(mem)
    status, report = mmap_read(mem, "MAP_PRIVATE", [(hole - 1, hole + 50)])
    assert status == 0
    data = bytes.fromhex(report["spans"][0])
    assert data == case.layout.image.data[hole - 1:hole] + bytes(50)
    assert report["st_size"] == case.layout.size
    drop_pages(mem)
    status, _ = mmap_read(mem, "MAP_PRIVATE", [(hole - 1, hole), (17 * MIB, 17 * MIB + 8)])
    assert status == -signal.SIGBUS
    assert os.stat(mem).st_size == case.layout.size


KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16


def folio_pages(path: Path, spans: list[tuple[int, int]]) -> tuple[int, int]:
    """``(single pages, pages in larger folios)`` of ``path``'s page cache over ``spans``,
    from ``/proc/self/pagemap`` and ``/proc/kpageflags`` (root only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    single = compound = 0
    fd = os.open(path, os.O_RDONLY)
    length = os.fstat(fd).st_size
    address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    os.close(fd)
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as pagemap, \
                open("/proc/kpageflags", "rb", buffering=0) as kpageflags:
            for start, end in spans:
                for offset in range(start, end, PAGE):
                    ctypes.string_at(address + offset, 1)       # fault the cached page in
                    pagemap.seek((address + offset) // PAGE * 8)
                    (entry,) = struct.unpack("<Q", pagemap.read(8))
                    assert entry >> 63, f"page at {offset:#x} is not present"
                    kpageflags.seek((entry & ((1 << 55) - 1)) * 8)
                    (flags,) = struct.unpack("<Q", kpageflags.read(8))
                    if flags & (1 << KPF_COMPOUND_HEAD | 1 << KPF_COMPOUND_TAIL):
                        compound += 1
                    else:
                        single += 1
    finally:
        libc.munmap(address, length)
    return single, compound


def test_the_kernel_caches_mem_page_by_page(cases: Cases) -> None:
    """The page-by-page retry after an ``EIO`` gives the bytes before a hole only if the
    kernel's unit of caching is one page: in a larger folio, the pages before the hole
    would fail with it.  The reads above would catch that; this names the cause."""
    case = cases["page"]
    mem = case.mount.path("mem")
    drop_pages(mem)
    warm_up(case)
    spans = [(0, 8 * MIB), (17 * MIB, 17 * MIB + 4 * MIB)]
    single, compound = folio_pages(mem, spans)
    assert compound == 0, (
        f"{compound} pages of mem sit in large folios: page-cache mode is no longer exact "
        "at holes (docs/mounting.md, 'Page cache')")
    assert single == sum(end - start for start, end in spans) // PAGE


# -------------------------------------------------------------------- changes while open


@pytest.fixture
def aligned(image: Image, mounts: Mounts) -> Case:
    mount = mounts.foreground(image.mapfile("aligned.toml", ALIGNED))
    return Case("page", mount, Layout(image, ALIGNED), "page")


def write_control(mount: Mount, name: str, value: str) -> None:
    fd = os.open(mount.path(".ctl", name), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


def read_all(fd: int, offset: int, size: int) -> bytes | None:
    """``pread`` until ``size`` bytes, the end, or an error (``None`` if the first read
    fails; what was read before an error otherwise)."""
    parts: list[bytes] = []
    done = 0
    while done < size:
        try:
            chunk = os.pread(fd, size - done, offset + done)
        except OSError as error:
            assert error.errno == errno.EIO
            if not parts:
                return None
            break
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def test_holes_and_base_switched_under_open_warm_files(image: Image, aligned: Case) -> None:
    mount = aligned.mount
    mem = mount.path("mem")
    fd = os.open(mem, os.O_RDONLY)
    mapping = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        layout = Layout(image, ALIGNED)
        for start, end in ALIGNED:            # fill the cache: every page, both ways
            assert os.pread(fd, end - start, start) == image.data[start:end]
            assert mapping[start:end] == image.data[start:end]

        write_control(mount, "holes", "zero")
        assert mount.path(".ctl", "cache").read_text() == "page\n"
        assert os.pread(fd, 256 * 1024 + 200, 8 * MIB - 100) == layout.zero_filled(
            8 * MIB - 100, 256 * 1024 + 200)
        assert mapping[16 * MIB:17 * MIB] == bytes(MIB)
        write_control(mount, "holes", "eio")        # the cached zero pages must go
        assert read_all(fd, 8 * MIB - 100, 300) == image.data[8 * MIB - 100:8 * MIB]
        assert read_all(fd, 16 * MIB, 100) is None

        for base in (MIB, 17 * MIB, 0, 8 * MIB + 256 * 1024, 0):
            write_control(mount, "base", f"{base:#x}")
            layout = Layout(image, ALIGNED, base)
            assert os.fstat(fd).st_size == os.stat(mem).st_size == layout.size
            assert mount.path(".ctl", "cache").read_text() == "page\n"
            offset = 0
            while offset < layout.size:                 # every byte, through the old fd
                stop = layout.next_hole(offset)
                assert read_all(fd, offset, stop - offset + 4096) == layout.expected(
                    offset, stop - offset + 4096), (base, offset)
                assert pread(mem, stop - offset, offset) == layout.expected(
                    offset, stop - offset)
                offset = layout.next_data(stop)
            assert mapping[:64] == layout.image.data[base:base + 64]
            assert mapping[layout.size - 50:layout.size] == image.data[
                base + layout.size - 50:base + layout.size]
    finally:
        mapping.close()
        os.close(fd)


def test_a_page_file_stays_page_mode_when_base_leaves_page_boundaries(
        image: Image, aligned: Case) -> None:
    """An open file keeps its mode: with ``base`` inside a page, the file opened in
    page-cache mode fails a whole page where a hole starts (never a wrong or stale byte),
    while files opened now are in direct mode and read to the byte."""
    mount = aligned.mount
    mem = mount.path("mem")
    fd = os.open(mem, os.O_RDONLY)
    try:
        assert os.pread(fd, 9 * MIB, 0) == image.data[:8 * MIB]
        base = 0x100
        write_control(mount, "base", f"{base:#x}")
        assert mount.path(".ctl", "cache").read_text() == "direct\n"
        layout = Layout(image, ALIGNED, base)
        hole = 8 * MIB - base
        assert pread(mem, MIB, hole - 1000) == layout.expected(hole - 1000, MIB)
        for start in (hole - 1000, hole - PAGE - 1000, hole - MIB):
            got = read_all(fd, start, MIB + 1)
            whole = (hole // PAGE * PAGE) - start          # the pages before the hole's
            assert got == (layout.expected(start, whole) if whole > 0 else None), start
        assert os.fstat(fd).st_size == layout.size
        write_control(mount, "base", "0")
        assert mount.path(".ctl", "cache").read_text() == "page\n"
        assert os.pread(fd, MIB, 8 * MIB - MIB) == image.data[7 * MIB:8 * MIB]
    finally:
        os.close(fd)


def test_one_byte_granular_mapping_falls_back_to_direct(image: Image, mounts: Mounts) -> None:
    mount = mounts.foreground(image.mapfile("granular1.toml", GRANULAR))
    assert mount.path(".ctl", "cache").read_text() == "direct\n"
    write_control(mount, "holes", "zero")
    assert mount.path(".ctl", "cache").read_text() == "page\n"
    layout = Layout(image, GRANULAR)
    assert pread(mount.path("mem"), 300, 8 * MIB - 50) == layout.zero_filled(
        8 * MIB - 50, 300)
    write_control(mount, "holes", "eio")
    assert pread(mount.path("mem"), 300, 8 * MIB - 50) == image.data[8 * MIB - 50:8 * MIB + 1]
    assert pread(mount.path("mem"), 300, 8 * MIB + 1) is None


def test_a_backing_file_that_shrinks(image: Image, mounts: Mounts, tmp_path: Path) -> None:
    """docs/mounting.md, "Page cache": a file opened earlier keeps its cached pages and
    fails a whole request where bytes were lost (never short); the next open finds the
    file shorter, and ``mem`` is in direct mode from then on, to the byte."""
    copy = Image(tmp_path / "image.bin")
    mount = mounts.foreground(copy.mapfile("shrink.toml", ALIGNED))
    mem = mount.path("mem")
    fd = os.open(mem, os.O_RDONLY)
    try:
        assert os.pread(fd, MIB, 9 * MIB) == copy.data[9 * MIB:10 * MIB]     # cached
        os.posix_fadvise(fd, 10 * MIB, 0, os.POSIX_FADV_DONTNEED)          # no readahead
        cut = 12 * MIB + 1234
        os.truncate(copy.path, cut)
        assert os.pread(fd, MIB, 9 * MIB) == copy.data[9 * MIB:10 * MIB]     # the cache
        got = read_all(fd, cut - 5000, 10000)
        assert got == copy.data[cut - 5000:cut // PAGE * PAGE]
        assert read_all(fd, cut + PAGE, 100) is None
        assert os.fstat(fd).st_size == 24 * MIB - 100
        assert mount.path(".ctl", "cache").read_text() == "direct\n"
        assert pread(mem, 10000, cut - 5000) == copy.data[cut - 5000:cut]
        assert pread(mem, 100, cut) is None
        assert pread(mem, 100, 17 * MIB) is None
        assert pread(mem, 100, 8 * MIB - 100) == copy.data[8 * MIB - 100:8 * MIB]
        assert os.stat(mem).st_size == 24 * MIB - 100
        write_control(mount, "holes", "zero")
        assert mount.path(".ctl", "cache").read_text() == "direct\n"
        assert mount.alive()
    finally:
        os.close(fd)


# -------------------------------------------------------------------- under load

LOAD_SECONDS = 6.0
LOAD_BASES = (0, 2 * MIB)


def load_reader(mem: Path, image: Image, seed: int, deadline: float,
                problems: list[str], counts: dict[str, int]) -> None:
    """Random reads through one page-cache-mode file while the layout changes: every
    8-byte word read must be the word of one layout (a mapped word, or a zero of a
    ``holes=zero`` layout), a read may end early only at a hole or an end of some layout
    (each on a page boundary), and ``EIO`` only where some layout has a hole or ends."""
    rng = random.Random(seed)
    layouts = [Layout(image, ALIGNED, base) for base in LOAD_BASES]
    words = np.frombuffer(image.data, dtype="<u8")
    fd = os.open(mem, os.O_RDONLY)
    try:
        while time.monotonic() < deadline:
            offset = 8 * rng.randrange(0, IMAGE_SIZE // 8)
            size = 8 * rng.randrange(1, 64 * 1024)
            counts["reads"] += 1
            try:
                data = os.pread(fd, size, offset)
            except OSError as error:
                counts["eio"] += 1
                # EIO where a layout has a hole, or past the end of one (a read that
                # raced a change of base: the kernel still thought mem larger).
                if error.errno != errno.EIO or all(
                        offset < lay.size and lay.mapped(offset) for lay in layouts):
                    problems.append(f"pread({offset:#x}, {size}): {error}")
                continue
            got = np.frombuffer(data[:len(data) // 8 * 8], dtype="<u8")
            good = np.zeros(len(got), dtype=bool)
            for lay in layouts:
                addresses = np.arange(lay.base + offset, lay.base + offset + 8 * len(got), 8)
                inside = addresses < lay.top
                index = np.minimum(addresses // 8, len(words) - 1)
                mapped = inside & lay.mask[np.minimum(addresses, IMAGE_SIZE - 1)]
                good |= mapped & (got == words[index])
                good |= inside & ~mapped & (got == 0)
                # The kernel's own zeros after the end, in the page that holds it.
                end_page = -(-lay.top // PAGE) * PAGE
                good |= (addresses >= lay.top) & (addresses < end_page) & (got == 0)
            if not good.all():
                bad = int(np.flatnonzero(~good)[0])
                problems.append(f"pread({offset:#x}, {size}): word {bad} is wrong")
            stop = offset + len(data)
            if len(data) < size and not (
                    stop % PAGE == 0 or any(stop == lay.size for lay in layouts)
                    or (not data and any(offset >= lay.size for lay in layouts))):
                problems.append(f"pread({offset:#x}, {size}): short at {stop:#x}")
    finally:
        os.close(fd)


@pytest.mark.slow
def test_layout_changes_under_page_cache_readers(image: Image, aligned: Case) -> None:
    mount = aligned.mount
    mem = mount.path("mem")
    problems: list[str] = []
    counts = {"reads": 0, "eio": 0}
    deadline = time.monotonic() + LOAD_SECONDS
    readers = [threading.Thread(target=load_reader,
                                args=(mem, image, seed, deadline, problems, counts))
               for seed in (1, 2)]
    for reader in readers:
        reader.start()
    writes = 0
    rng = random.Random(3)
    try:
        while time.monotonic() < deadline:
            name, value = rng.choice([("base", f"{LOAD_BASES[0]:#x}"),
                                      ("base", f"{LOAD_BASES[1]:#x}"),
                                      ("holes", "eio"), ("holes", "zero")])
            write_control(mount, name, value)
            writes += 1
            assert mount.path(".ctl", "cache").read_text() == "page\n"
    finally:
        for reader in readers:
            reader.join(LOAD_SECONDS + 120)
    assert not problems, problems[:5]
    assert writes > 20 and counts["reads"] > 100 and counts["eio"] > 0, (writes, counts)
    assert mount.alive()
    write_control(mount, "base", "0")
    write_control(mount, "holes", "eio")
    for start, end in ALIGNED:
        assert pread(mem, end - start, start) == image.data[start:end]
