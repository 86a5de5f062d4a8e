"""``views/core.elf`` and ``views/lime``: the map in other tools' formats, on the fly.

* The model, without FUSE: ``core.elf`` is byte for byte what :func:`save` writes (for
  every word size and byte order, ``PN_XNUM`` included), ``lime`` what a naive LiME
  writer gives, at random offsets and sizes; reads across headers, padding and data; a
  byte a source cannot serve fails the read (``HoleError`` at that address), never a short
  read; how the kernel may cache each file.
* Through the kernel, with the real tools: ``readelf``, ``gdb -c`` with the executable,
  ``cmp`` against ``vmemfs save`` (also after ``.ctl/`` changes), ``dd`` with odd block
  sizes, ``cp`` then :func:`vmemfs.open`, volatility3's LiME layer and its
  ``banners.Banners``, drgn; a QEMU guest's dumps; live processes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from artifacts.build import ToolMissing, build_marker
from conftest import Mounts
from dumpwriters import write_avml, write_kdump, write_lime
from elftools import readelf_loads
from guestdumps import Guest

import vmemfs
from vmemfs import HoleError, MemoryMap
from vmemfs.cli import info_lines
from vmemfs.formats.lime import open_lime
from vmemfs.formats.limelayout import lime_layout
from vmemfs.formats.save import save
from vmemfs.sources import BytesSource
from vmemfs.tree import MountState, NodeTable, build
from vmemfs.tree import files as tree
from vmemfs.tree.nodes import Node, Refused
from vmemfs.tree.views import Splice, ViewHandle
from vmemfs.values import Endian

MARKER = b"vmemfs-artifact-marker: 0123456789abcdef"
LIME_HEADER = struct.Struct("<IIQQ8s")
PAGE = 4096
VENV_BIN = Path(sys.executable).parent


# ==================================================================== helpers


def views_of(memory_map: MemoryMap) -> tuple[MountState, NodeTable]:
    """The state and node table of a mount of ``memory_map``."""
    state = MountState(memory_map)
    return state, build(state).table


def opened(node: Node) -> ViewHandle:
    """``node`` opened for reading, as the adapter opens it."""
    handle = node.open(False, True)
    assert isinstance(handle, ViewHandle)
    return handle


def open_view(memory_map: MemoryMap, inode: int) -> ViewHandle:
    _, table = views_of(memory_map)
    return opened(table.get(inode))


def saved(memory_map: MemoryMap, folder: Path) -> bytes:
    path = folder / f"saved-{random.getrandbits(32):08x}.core"
    save(memory_map, path)
    return path.read_bytes()


def naive_lime(memory_map: MemoryMap) -> bytes:
    """LiME of ``memory_map`` written the plain way: header, bytes, for each extent."""
    return b"".join(LIME_HEADER.pack(0x4C694D45, 1, start, end - 1, bytes(8))
                    + memory_map.get_bytes(start, end - start)
                    for start, end in memory_map.extents())


def read_whole(handle: ViewHandle, step: int) -> bytes:
    """The whole file, read in ``step``-byte requests (each must be full but the last)."""
    size = handle.splice.size
    chunks = []
    for offset in range(0, size, step):
        chunk = bytes(handle.read(offset, step))
        assert len(chunk) == min(step, size - offset), offset
        chunks.append(chunk)
    assert handle.read(size, step) == b""
    return b"".join(chunks)


def random_map(seed: int, extents: int = 12) -> MemoryMap:
    """Extents made of several overlapping mappings (bytes and a file region), some one
    byte long, some page sized, near 0 and near the top of 32 bits."""
    rng = random.Random(seed)
    memory_map = MemoryMap()
    address = rng.randrange(0, 4 * PAGE)
    for _ in range(extents):
        length = rng.choice([1, 3, 31, 32, 33, PAGE - 1, PAGE, PAGE + 5, 3 * PAGE])
        memory_map.add_bytes(rng.randbytes(length), address)
        if length > 8 and rng.random() < 0.5:       # an override inside: two pieces or more
            inner = rng.randrange(1, length - 4)
            memory_map.add_bytes(rng.randbytes(rng.randrange(1, 4)), address + inner)
        address += length + rng.randrange(1, 3 * PAGE)
    memory_map.add_bytes(rng.randbytes(77), 2**32 - 200)
    return memory_map


def random_reads(handle: ViewHandle, expected: bytes, seed: int, count: int = 400) -> None:
    rng = random.Random(seed)
    size = len(expected)
    for _ in range(count):
        offset = rng.randrange(size + 100)
        length = rng.choice([1, 7, 32, 33, PAGE, 3 * PAGE + 1, rng.randrange(1, 20000)])
        assert bytes(handle.read(offset, length)) == expected[offset:offset + length], \
            (offset, length)


# ==================================================================== the model


SETTINGS: list[tuple[int | None, Endian | None]] = [
    (None, None), (32, "big"), (32, "little"), (64, "little"), (64, "big"), (None, "big"),
    (32, None)]


@pytest.mark.parametrize(("wordsize", "endian"), SETTINGS)
def test_core_elf_is_what_save_writes(wordsize: int | None, endian: Endian | None,
                                      tmp_path: Path) -> None:
    memory_map = random_map(len(str((wordsize, endian))))
    memory_map.wordsize, memory_map.endian = wordsize, endian
    expected = saved(memory_map, tmp_path)
    _, table = views_of(memory_map)
    assert table.get(tree.VIEW_CORE).attributes().size == len(expected)
    handle = opened(table.get(tree.VIEW_CORE))
    for step in (1 << 20, 4093, PAGE):
        assert read_whole(handle, step) == expected
    random_reads(handle, expected, seed=7)


def test_lime_is_one_record_per_extent(tmp_path: Path) -> None:
    memory_map = random_map(3)
    expected = naive_lime(memory_map)
    _, table = views_of(memory_map)
    assert table.get(tree.VIEW_LIME).attributes().size == len(expected)
    handle = open_view(memory_map, tree.VIEW_LIME)
    for step in (1 << 20, 31, 33, PAGE + 1):
        assert read_whole(handle, step) == expected
    random_reads(handle, expected, seed=8)
    # vmemfs's own LiME reader gives the map back.
    copy = tmp_path / "copy.lime"
    copy.write_bytes(expected)
    again = MemoryMap()
    open_lime(copy).add_to(again)
    assert again.extents() == memory_map.extents()
    for start, end in memory_map.extents():
        assert again.get_bytes(start, end - start) == memory_map.get_bytes(start, end - start)
    again.close()


def test_the_views_follow_wordsize_and_endian(tmp_path: Path) -> None:
    memory_map = MemoryMap()
    for number in range(100):      # ELF32 headers fit in one page, ELF64 ones do not
        memory_map.add_bytes(bytes([number]) * 64, 0x10000 + number * 0x1000)
    memory_map.wordsize, memory_map.endian = 32, "big"
    state, table = views_of(memory_map)
    core = table.get(tree.VIEW_CORE)
    lime = table.get(tree.VIEW_LIME)
    before = opened(core)
    first = saved(memory_map, tmp_path)
    assert first[4] == 1 and core.attributes().size == len(first) == PAGE + 6400
    lime_size = lime.attributes().size
    # core.elf's attributes may be cached: a settings change drops them (the adapter).
    assert not core.attributes().volatile and not lime.attributes().volatile
    state.set_control("wordsize", 64)
    state.set_control("endian", "little")
    second = saved(memory_map, tmp_path)
    assert second[4] == 2 and core.attributes().size == len(second) == 2 * PAGE + 6400
    after = opened(core)
    assert read_whole(after, 1000) == second
    assert read_whole(before, 1000) == first           # fixed for the open
    assert lime.attributes().size == lime_size
    state.set_control("wordsize", None)
    state.set_control("endian", None)
    third = opened(core)
    assert read_whole(third, 1 << 20) == saved(memory_map, tmp_path)
    assert b"wordsize=unset\nendian=unset\n" in bytes(third.read(0, 2 * PAGE))


def test_reads_across_headers_padding_and_data(tmp_path: Path) -> None:
    memory_map = MemoryMap()
    memory_map.add_bytes(b"A" * 100, 0x1000)
    memory_map.add_bytes(b"B" * 10, 0x2000)
    memory_map.add_bytes(b"C" * 3, 0x2000 + 4)         # three pieces in one extent
    memory_map.add_bytes(b"D", 0x9000)
    core = open_view(memory_map, tree.VIEW_CORE)
    expected = saved(memory_map, tmp_path)
    data = PAGE                                          # the first extent's data
    assert expected[data:data + 100] == b"A" * 100
    cases = [
        (data - 5, 10),             # padding into the first extent
        (0, data + 1),              # headers, note, padding, one data byte
        (data + 99, 2),             # last A, first B: two extents, adjacent in the file
        (data + 100, 10),           # exactly the second extent, across its three pieces
        (data + 103, 8),            # from inside the override into the third extent
        (data + 110, 1),            # the one-byte extent, the last byte of the file
        (data + 110, 100),          # short only at the end of the file
        (data + 111, 1),            # at the end
        (data + 500, 1),            # past it
        (data, 0),
    ]
    for offset, size in cases:
        assert bytes(core.read(offset, size)) == expected[offset:offset + size], (offset, size)
    lime = open_view(memory_map, tree.VIEW_LIME)
    expected = naive_lime(memory_map)
    second = 32 + 100                                    # the second record's header
    for offset, size in [(0, 32), (31, 2), (32 + 99, 2), (second - 1, 34), (second, 32 + 10),
                         (second + 32 + 9, 1 + 32 + 1), (len(expected) - 1, 9),
                         (len(expected), 1), (0, len(expected) + 9)]:
        assert bytes(lime.read(offset, size)) == expected[offset:offset + size], (offset, size)


def test_many_extents_use_pn_xnum(tmp_path: Path) -> None:
    memory_map = MemoryMap()
    source = tmp_path / "pages.bin"
    source.write_bytes(random.Random(1).randbytes(70_000 * 8))
    memory_map.add_file_regions(source, ((0x10_0000 + 16 * i, 8 * i, 8) for i in range(70_000)))
    expected = saved(memory_map, tmp_path)
    core = open_view(memory_map, tree.VIEW_CORE)
    assert core.splice.size == len(expected)
    assert hashlib.sha256(read_whole(core, 1 << 20)).digest() == \
        hashlib.sha256(expected).digest()
    random_reads(core, expected, seed=3, count=200)
    lime = open_view(memory_map, tree.VIEW_LIME)
    random_reads(lime, naive_lime(memory_map), seed=4, count=200)
    memory_map.close()


def test_a_single_extent_read_is_not_copied(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(bytes(range(256)) * 64)
    memory_map = MemoryMap.of_file(source, 0x40000)
    core = open_view(memory_map, tree.VIEW_CORE)
    piece = core.read(PAGE + 256, 1024)
    assert isinstance(piece, memoryview) and bytes(piece) == bytes(range(256)) * 4
    lime = open_view(memory_map, tree.VIEW_LIME)
    assert isinstance(lime.read(32, 512), memoryview)
    memory_map.close()


class FailingSource(BytesSource):
    """Bytes that cannot be served from offset ``broken`` on for ``length`` bytes (a page
    that went away, a corrupt compressed page); optionally volatile."""

    def __init__(self, data: bytes, broken: int, length: int, *,
                 volatile: bool = False) -> None:
        super().__init__(data)
        self.broken = broken
        self.broken_end = broken + length
        self.volatile = volatile

    def read_into(self, offset: int, buffer: memoryview) -> int:
        if self.broken <= offset < self.broken_end:
            return 0
        if offset < self.broken:
            buffer = buffer[:self.broken - offset]
        return super().read_into(offset, buffer)

    def view(self, offset: int, length: int) -> memoryview:
        buffer = bytearray(length)
        count = self.read_into(offset, memoryview(buffer))
        return memoryview(buffer)[:count]


def failing_map() -> tuple[MemoryMap, int]:
    """Two extents; the second holds a page its source cannot serve at the address
    returned."""
    memory_map = MemoryMap()
    memory_map.add_bytes(b"x" * 100, 0x1000)
    data = bytes(range(256)) * 64
    memory_map.add_source(FailingSource(data, 2 * PAGE, PAGE), 0x10000)
    return memory_map, 0x10000 + 2 * PAGE


@pytest.mark.parametrize("inode", [tree.VIEW_CORE, tree.VIEW_LIME])
def test_a_byte_a_source_cannot_serve_fails_the_read(inode: int) -> None:
    memory_map, bad = failing_map()
    handle = open_view(memory_map, inode)
    data = PAGE + 100 if inode == tree.VIEW_CORE else 32 + 100 + 32
    at_bad = data + bad - 0x10000
    # Everything before the bad byte reads in full, in one piece or across segments.
    assert len(handle.read(0, at_bad)) == at_bad
    assert len(handle.read(at_bad - 5000, 5000)) == 5000
    for offset, size in [(at_bad, 1), (at_bad - 1, 2), (0, at_bad + 1), (at_bad - 100, PAGE),
                         (at_bad + PAGE - 1, 10), (data - 3, 3 * PAGE)]:
        with pytest.raises(HoleError) as caught:
            handle.read(offset, size)
        assert caught.value.address == bad + max(0, offset - at_bad), (offset, size)
    assert len(handle.read(at_bad + PAGE, PAGE)) == PAGE   # after it, served again


def test_how_the_kernel_may_cache_the_views() -> None:
    memory_map = random_map(5)
    state, table = views_of(memory_map)
    core, lime = table.get(tree.VIEW_CORE), table.get(tree.VIEW_LIME)
    opens = [core.open(False, True) for _ in range(2)]
    assert [(h.direct_io, h.keep_cache) for h in opens] == [(False, False), (False, True)]
    state.set_control("endian", "big")                     # new headers: drop cached pages
    assert core.open(False, True).keep_cache is False
    assert core.open(False, True).keep_cache is True
    assert lime.open(False, True).keep_cache is True
    live, _ = failing_map()
    live.add_source(FailingSource(b"v" * PAGE, PAGE, 1, volatile=True), 0x80000)
    _, live_table = views_of(live)
    for inode in (tree.VIEW_CORE, tree.VIEW_LIME):
        for _ in range(2):
            handle = live_table.get(inode).open(False, True)
            assert (handle.direct_io, handle.keep_cache) == (False, False)


def test_the_views_directory() -> None:
    memory_map = random_map(6)
    _, table = views_of(memory_map)
    root = table.get(tree.ROOT)
    views = root.lookup(b"views")
    assert views.inode == tree.VIEWS and views.is_directory()
    assert [(name, node.inode) for name, node, _ in views.entries(0)] == [
        (b"core.elf", tree.VIEW_CORE), (b"lime", tree.VIEW_LIME)]
    for inode in (tree.VIEW_CORE, tree.VIEW_LIME):
        node = table.get(inode)
        assert node.attributes().mode == 0o100444
        assert node.attributes().blocks == -(-node.attributes().size // 512)
        with pytest.raises(Refused):
            node.open(True, True)


def test_an_empty_map(tmp_path: Path) -> None:
    memory_map = MemoryMap()
    core = open_view(memory_map, tree.VIEW_CORE)
    expected = saved(memory_map, tmp_path)
    assert read_whole(core, 100) == expected
    copy = tmp_path / "copy.core"
    copy.write_bytes(expected)
    assert MemoryMap.load(copy).extents() == []
    lime = open_view(memory_map, tree.VIEW_LIME)
    assert lime.splice.size == 0 and lime.read(0, 10) == b""


def test_splice_against_a_naive_reference() -> None:
    """Random segment tables: every read equals slicing the file built segment by
    segment."""
    rng = random.Random(11)
    for _ in range(30):
        memory_map = MemoryMap()
        fixed = rng.randbytes(rng.randrange(1, 300))
        offsets, origins, kinds, content = [], [], [], bytearray()
        address = 0x1000
        for _ in range(rng.randrange(1, 12)):
            offsets.append(len(content))
            if rng.random() < 0.5:
                start = rng.randrange(len(fixed))
                length = rng.randrange(1, len(fixed) - start + 1)
                origins.append(start)
                kinds.append(False)
                content += fixed[start:start + length]
            else:
                length = rng.randrange(1, 500)
                data = rng.randbytes(length)
                memory_map.add_bytes(data, address)
                origins.append(address)
                kinds.append(True)
                content += data
                address += length + 1
        splice = Splice(memory_map, fixed, offsets, origins, kinds, len(content))
        for _ in range(100):
            offset = rng.randrange(len(content) + 5)
            size = rng.randrange(0, len(content) + 5)
            assert bytes(splice.read(offset, size)) == bytes(content[offset:offset + size])


# ==================================================================== through the kernel


def need(tool: str) -> str:
    path = shutil.which(tool) or (str(VENV_BIN / tool) if (VENV_BIN / tool).exists() else None)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def vmemfs_command(*arguments: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vmemfs.cli", *map(str, arguments)],
                          capture_output=True, timeout=600)


def cmp(first: Path, second: Path) -> None:
    result = subprocess.run([need("cmp"), str(first), str(second)], capture_output=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def dd_digest(path: Path, block: int, *, skip: int = 0, count: int | None = None) -> str:
    """sha256 of what ``dd bs=BLOCK skip=SKIP [count=COUNT]`` reads from ``path``."""
    command = [need("dd"), f"if={path}", f"bs={block}", f"skip={skip}", "status=none"]
    if count is not None:
        command.append(f"count={count}")
    result = subprocess.run(command, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return hashlib.sha256(result.stdout).hexdigest()


def file_digest(path: Path, offset: int = 0, size: int | None = None) -> str:
    with open(path, "rb") as stream:
        stream.seek(offset)
        return hashlib.sha256(stream.read(size) if size is not None else stream.read()
                              ).hexdigest()


VOLATILITY_READ = """
import json, sys
from pathlib import Path
from volatility3.framework import contexts
from volatility3.framework.layers import lime, physical
path, requests = sys.argv[1], json.loads(sys.argv[2])
context = contexts.Context()
context.config["base.location"] = Path(path).resolve().as_uri()
context.add_layer(physical.FileLayer(context, "base", "base"))
context.config["lime.base_layer"] = "base"
layer = lime.LimeLayer(context, "lime", "lime")
print(json.dumps({"segments": [[start, length] for start, _, length, _ in layer._segments],
                  "reads": [layer.read(address, size).hex() for address, size in requests]}))
"""


def volatility_lime(path: Path, requests: list[tuple[int, int]]) -> dict[str, list]:
    """What volatility3's LiME layer over ``path`` says: its segments ``[start, length]``
    and the bytes it reads at each ``(address, size)`` (hex)."""
    pytest.importorskip("volatility3")
    result = subprocess.run([sys.executable, "-c", VOLATILITY_READ, str(path),
                             json.dumps(requests)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    found: dict[str, list] = json.loads(result.stdout)
    return found


def volatility_banners(path: Path) -> str:
    """The output of ``vol -f PATH banners.Banners``."""
    vol = need("vol")
    result = subprocess.run([vol, "-q", "-f", str(path), "banners.Banners"],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    return result.stdout


def gdb_string(core: Path, executable: Path | None, address: int) -> str:
    """What ``gdb -batch -c CORE [EXECUTABLE] -ex 'x/s ADDRESS'`` prints for the string."""
    command = [need("gdb"), "-batch", "-nx", "-c", str(core)]
    if executable is not None:
        command.append(str(executable))
    result = subprocess.run([*command, "-ex", f"x/s {address:#x}"], capture_output=True,
                            text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"{address:#x}")]
    assert lines, result.stdout + result.stderr
    return lines[-1]


@dataclass(frozen=True)
class Marked:
    """A process with known bytes at known addresses (tests/artifacts/marker.c)."""

    process: subprocess.Popen[str]
    executable: Path
    marker: int
    words: int
    heap: int


def start_marker(folder: Path) -> Marked:
    try:
        program = build_marker(folder)
    except ToolMissing as missing:
        pytest.skip(str(missing))
    process = subprocess.Popen([str(program)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    marker, words, heap = (int(text, 16) for text in process.stdout.readline().split())
    return Marked(process, program, marker, words, heap)


def stop_marker(marked: Marked) -> None:
    marked.process.kill()
    marked.process.wait(timeout=60)
    if marked.process.stdout is not None:
        marked.process.stdout.close()


@dataclass(frozen=True)
class Cored:
    marked: Marked
    core: Path


@pytest.fixture(scope="module")
def cored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cored]:
    """A stopped process with known memory, and its ``gcore`` core."""
    gcore = need("gcore")
    folder = tmp_path_factory.mktemp("gcore")
    marked = start_marker(folder)
    try:
        result = subprocess.run([gcore, "-o", str(folder / "core"), str(marked.process.pid)],
                                capture_output=True, text=True, timeout=300)
        core = folder / f"core.{marked.process.pid}"
        assert result.returncode == 0 and core.exists(), result.stdout + result.stderr
        os.kill(marked.process.pid, signal.SIGSTOP)
        yield Cored(marked, core)
    finally:
        stop_marker(marked)


@pytest.mark.mount
def test_gcore_core_through_readelf_gdb_and_cmp(cored: Cored, mounts: Mounts,
                                                tmp_path: Path) -> None:
    mount = mounts.foreground(cored.core)
    view = mount.path("views", "core.elf")
    memory_map = vmemfs.open(cored.core)
    assert [(load.vaddr, load.vaddr + load.filesz) for load in readelf_loads(view)] == \
        memory_map.extents()
    assert gdb_string(view, cored.marked.executable, cored.marked.marker).endswith(
        f'"{MARKER.decode()}"')
    out = tmp_path / "saved.core"
    result = vmemfs_command("save", cored.core, out)
    assert result.returncode == 0, result.stderr
    assert os.stat(view).st_size == os.stat(out).st_size
    cmp(view, out)
    # The settings change the headers: the next open follows, byte for byte.
    for wordsize, endian in [("32", "big"), ("unset", "unset"), ("64", "little")]:
        mount.path(".ctl", "wordsize").write_text(wordsize + "\n")
        mount.path(".ctl", "endian").write_text(endian + "\n")
        out = tmp_path / f"saved-{wordsize}-{endian}.core"
        result = vmemfs_command("save", cored.core, out, "--wordsize", wordsize,
                                "--endian", endian)
        assert result.returncode == 0, result.stderr
        assert os.stat(view).st_size == os.stat(out).st_size
        cmp(view, out)
    memory_map.close()


@pytest.mark.mount
def test_elf32_and_elf64_headers_change_the_size(mounts: Mounts, tmp_path: Path) -> None:
    memory_map = MemoryMap()
    for number in range(100):
        memory_map.add_bytes(bytes([number]) * 100, 0x10000 + number * 0x2000)
    memory_map.wordsize, memory_map.endian = 32, "big"
    source = tmp_path / "source.core"
    save(memory_map, source)
    mount = mounts.foreground(source)
    view = mount.path("views", "core.elf")
    assert os.stat(view).st_size == PAGE + 10_000
    cmp(view, source)
    mount.path(".ctl", "wordsize").write_text("64\n")
    assert os.stat(view).st_size == 2 * PAGE + 10_000
    out = tmp_path / "wide.core"
    assert vmemfs_command("save", source, out, "--wordsize", "64").returncode == 0
    cmp(view, out)
    assert view.read_bytes()[4] == 2
    mount.path(".ctl", "wordsize").write_text("32\n")
    cmp(view, source)


@pytest.mark.mount
def test_dd_with_odd_block_sizes(cored: Cored, mounts: Mounts, tmp_path: Path) -> None:
    mount = mounts.foreground(cored.core)
    out = tmp_path / "saved.core"
    memory_map = vmemfs.open(cored.core)
    save(memory_map, out)
    lime = tmp_path / "naive.lime"
    lime.write_bytes(naive_lime(memory_map))
    for view, reference in [(mount.path("views", "core.elf"), out),
                            (mount.path("views", "lime"), lime)]:
        for block in (4093, 65537, 1 << 20 | 1):
            assert dd_digest(view, block) == file_digest(reference), (view, block)
        assert dd_digest(view, 1, skip=PAGE - 100, count=300) == \
            file_digest(reference, PAGE - 100, 300)
        assert dd_digest(view, 33, skip=1001, count=2000) == \
            file_digest(reference, 33 * 1001, 33 * 2000)
    memory_map.close()


@pytest.mark.mount
def test_lime_copied_with_cp_opens_as_the_map(cored: Cored, mounts: Mounts,
                                              tmp_path: Path) -> None:
    mount = mounts.foreground(cored.core)
    copy = tmp_path / "copy.lime"
    subprocess.run([need("cp"), str(mount.path("views", "lime")), str(copy)], check=True,
                   timeout=600)
    memory_map = vmemfs.open(cored.core)
    again = vmemfs.open(copy)
    assert again.format == "lime"
    assert again.extents() == memory_map.extents()
    for start, end in memory_map.extents():
        assert again.get_bytes(start, end - start) == memory_map.get_bytes(start, end - start)
    # volatility3's LiME layer sees the same segments and reads the same bytes.
    marked = cored.marked
    requests = [(marked.marker, len(MARKER)), (marked.words, 32), (marked.heap, PAGE)]
    found = volatility_lime(mount.path("views", "lime"), requests)
    assert found["segments"] == [[start, end - start] for start, end in memory_map.extents()]
    assert [bytes.fromhex(text) for text in found["reads"]] == \
        [memory_map.get_bytes(address, size) for address, size in requests]
    again.close()
    memory_map.close()


def source_of_kind(kind: str, folder: Path) -> tuple[Path, tuple[str, ...]]:
    """A small dump of ``kind`` with holes (its path and mount options)."""
    rng = random.Random(kind)
    memory_map = MemoryMap()
    for number, address in enumerate((0x1000, 0x5000, 0x6000, 0x20000)):
        memory_map.add_bytes(rng.randbytes(PAGE * (number + 1)), address)
    memory_map.add_bytes(b"tail", 0x40000)            # an extent shorter than a page
    path = folder / f"source.{kind}"
    if kind == "raw":
        path.write_bytes(rng.randbytes(3 * PAGE + 5))
        return path, ("address=0x7000", "offset=5")
    if kind == "map":
        data = folder / "region.bin"
        data.write_bytes(rng.randbytes(2 * PAGE))
        path.write_text(f'endian = "big"\n[[map]]\nfile = "{data}"\naddress = 0x10000\n'
                        '[[map]]\nhex = "00112233"\naddress = 0x10ffe\n'
                        '[[map]]\ntext = "far"\naddress = "0xffffffff81000000"\n')
        return path, ()
    if kind == "lime":
        write_lime(path, memory_map)
    elif kind == "avml":
        memory_map.add_bytes(bytes(2 * PAGE), 0x60000)     # an all-zero block, left out
        write_avml(path, memory_map, max_block=PAGE)
    elif kind == "kdump":
        write_kdump(path, memory_map, excluded=[0x6], compression="zlib")
    else:
        save(memory_map, path)
    return path, ()


@pytest.mark.mount
@pytest.mark.parametrize("kind", ["raw", "map", "elf", "lime", "avml", "kdump"])
def test_every_source_kind(kind: str, mounts: Mounts, tmp_path: Path) -> None:
    source, options = source_of_kind(kind, tmp_path)
    mount = mounts.foreground(source, *options)
    out = tmp_path / "saved.core"
    arguments = [f"-o{option}" for option in options]
    result = vmemfs_command("save", *arguments, source, out)
    assert result.returncode == 0, result.stderr
    cmp(mount.path("views", "core.elf"), out)
    settings: dict[str, Any] = dict(option.split("=") for option in options)
    memory_map = vmemfs.open(source, **settings)
    assert len(memory_map.extents()) >= 1
    assert mount.path("views", "lime").read_bytes() == naive_lime(memory_map)
    memory_map.close()


# -------------------------------------------------------------------- a QEMU guest


def kernel_symbol(dumps: Guest, name: str) -> int:
    for line in dumps.kallsyms.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == name:
            return int(fields[0], 16)
    raise AssertionError(f"{name} is not in {dumps.kallsyms}")


def opens_as(path: Path, format_name: str) -> bool:
    try:
        memory_map = vmemfs.open(path)
    except vmemfs.FormatError:
        return False
    try:
        return memory_map.format == format_name
    finally:
        memory_map.close()


@pytest.mark.mount
@pytest.mark.slow
def test_volatility_banners_on_the_lime_view(dumps: Guest, mounts: Mounts) -> None:
    mount = mounts.foreground(dumps.elf)
    output = volatility_banners(mount.path("views", "lime"))
    assert dumps.banner.strip() in output
    physical = vmemfs.open(dumps.elf)
    requests = [(start, PAGE) for start, _ in physical.extents()]
    requests.append((0x1000000, 1 << 20))
    found = volatility_lime(mount.path("views", "lime"), requests)
    assert [bytes.fromhex(text) for text in found["reads"]] == \
        [physical.get_bytes(address, size) for address, size in requests]
    physical.close()


@pytest.mark.mount
@pytest.mark.slow
def test_volatility_reads_mem_linearly_only_with_holes_zero(dumps: Guest,
                                                            mounts: Mounts) -> None:
    """What the user guide says of linear readers: on ``mem`` of a kdump with pages left
    out, volatility stops at the first hole and finds nothing (exit 0, an empty table);
    with ``holes=zero`` it finds the banner."""
    if not opens_as(dumps.kdump_d31, "kdump"):
        pytest.skip(f"vmemfs.open does not read {dumps.kdump_d31.name} as kdump here")
    mount = mounts.foreground(dumps.kdump_d31)
    assert "Linux version" not in volatility_banners(mount.path("mem"))
    zero = mounts.foreground(dumps.kdump_d31, "holes=zero")
    assert dumps.banner.strip() in volatility_banners(zero.path("mem"))


@pytest.mark.mount
def test_drgn_reads_the_core_view_of_the_guest(dumps: Guest, mounts: Mounts) -> None:
    drgn = pytest.importorskip("drgn")
    mount = mounts.foreground(dumps.elf)
    program = drgn.Program()
    program.set_core_dump(str(mount.path("views", "core.elf")))
    physical = vmemfs.open(dumps.elf)
    pages = [start for start, _ in physical.extents()] + [0x1000000, 0x2000000 - PAGE]
    for page in pages:
        expected = physical.get_bytes(page, PAGE)
        assert program.read(page, PAGE, True) == expected, hex(page)
        assert program.read(page, PAGE) == expected, hex(page)
    physical.close()


@pytest.mark.mount
def test_drgn_and_gdb_read_the_virtual_view(dumps: Guest, mounts: Mounts) -> None:
    drgn = pytest.importorskip("drgn")
    mount = mounts.foreground(dumps.elf, "virtual")
    view = mount.path("views", "core.elf")
    banner = kernel_symbol(dumps, "linux_banner")
    program = drgn.Program()
    program.set_core_dump(str(view))
    text = dumps.banner.strip().encode()
    assert program.read(banner, len(text)) == text
    assert gdb_string(view, None, banner).endswith(f'"{dumps.banner.strip()}\\n"')


@pytest.mark.mount
@pytest.mark.parametrize("kind", ["kdump_zlib", "kdump_flat", "kdump_d31"])
def test_kdump_views_read_the_same_pages(dumps: Guest, mounts: Mounts, kind: str,
                                         tmp_path: Path) -> None:
    drgn = pytest.importorskip("drgn")
    path: Path = getattr(dumps, kind)
    if not opens_as(path, "kdump"):
        pytest.skip(f"vmemfs.open does not read {path.name} as kdump here")
    mount = mounts.foreground(path)
    memory_map = vmemfs.open(path)
    banner_page = kernel_symbol(dumps, "linux_banner") - 0xFFFFFFFF80000000 & ~(PAGE - 1)
    pages = [banner_page, *(start for start, _ in memory_map.extents()[:8])]
    pages = [page for page in pages if memory_map.is_mapped(page)]
    program = drgn.Program()
    program.set_core_dump(str(mount.path("views", "core.elf")))
    found = volatility_lime(mount.path("views", "lime"), [(page, PAGE) for page in pages])
    for page, text in zip(pages, found["reads"], strict=True):
        expected = memory_map.get_bytes(page, PAGE)
        assert program.read(page, PAGE, True) == expected, hex(page)
        assert bytes.fromhex(text) == expected, hex(page)
    if kind != "kdump_d31":
        # With pages left out, the banner's string runs into a page the dump does not
        # have, and banners.Banners stops there (as on a LiME file with the same records).
        assert dumps.banner.strip() in volatility_banners(mount.path("views", "lime"))
    memory_map.close()


# -------------------------------------------------------------------- live processes


@pytest.mark.mount
def test_live_process_views(mounts: Mounts, tmp_path: Path) -> None:
    marked = start_marker(tmp_path)
    try:
        mount = mounts.foreground(f"/proc/{marked.process.pid}")
        view = mount.path("views", "core.elf")
        assert gdb_string(view, marked.executable, marked.marker).endswith(
            f'"{MARKER.decode()}"')
        copy = tmp_path / "copy.lime"
        subprocess.run([need("cp"), str(mount.path("views", "lime")), str(copy)], check=True,
                       timeout=600)
        live = vmemfs.open(f"/proc/{marked.process.pid}")
        again = vmemfs.open(copy)
        assert again.extents() == live.extents()
        for address, size in [(marked.marker, len(MARKER)), (marked.heap, 1 << 20)]:
            assert again.get_bytes(address, size) == live.get_bytes(address, size)
        requests = [(marked.marker, len(MARKER)), (marked.heap, PAGE)]
        found = volatility_lime(mount.path("views", "lime"), requests)
        assert [bytes.fromhex(text) for text in found["reads"]] == \
            [live.get_bytes(address, size) for address, size in requests]
        again.close()
        live.close()
    finally:
        stop_marker(marked)


UNMAPPING_CHILD = """
import ctypes, mmap, sys
region = mmap.mmap(-1, 3 * 4096)
region[:] = b"L" * 4096 + b"M" * 4096 + b"N" * 4096
address = ctypes.addressof(ctypes.c_char.from_buffer(region))
print(hex(address), flush=True)
sys.stdin.readline()
libc = ctypes.CDLL(None, use_errno=True)
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
assert libc.munmap(address + 4096, 4096) == 0
print("unmapped", flush=True)
sys.stdin.read()
"""


@pytest.mark.mount
def test_live_view_reads_eio_where_a_page_went_away(mounts: Mounts) -> None:
    process = subprocess.Popen([sys.executable, "-c", UNMAPPING_CHILD], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        address = int(process.stdout.readline(), 16)
        mount = mounts.foreground(f"/proc/{process.pid}")
        view = mount.path("views", "core.elf")
        load = next(load for load in readelf_loads(view)
                    if load.vaddr <= address < load.vaddr + load.filesz)
        at = load.offset + address - load.vaddr
        with open(view, "rb") as before:
            assert os.pread(before.fileno(), PAGE, at + PAGE) == b"M" * PAGE
        process.stdin.write("unmap\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "unmapped"
        with open(view, "rb") as after:
            fd = after.fileno()
            assert os.pread(fd, PAGE, at) == b"L" * PAGE
            assert os.pread(fd, PAGE, at + 2 * PAGE) == b"N" * PAGE
            for offset, size in [(at + PAGE, PAGE), (at + PAGE + 100, 1), (at + PAGE, 2 * PAGE)]:
                with pytest.raises(OSError) as caught:
                    os.pread(fd, size, offset)
                assert caught.value.errno == errno.EIO, (offset, size)
            # A read that starts before the page gets the bytes up to it (the kernel's
            # partial read), the next one EIO.
            assert os.pread(fd, 3 * PAGE, at) == b"L" * PAGE
        # dd gets every byte before the page, then EIO.
        result = subprocess.run([need("dd"), f"if={view}", "bs=65536", "status=none"],
                                capture_output=True, timeout=600)
        assert result.returncode != 0 and b"Input/output error" in result.stderr
        assert len(result.stdout) == at + PAGE
        assert result.stdout[at:] == b"L" * PAGE
        # In views/lime the page sits at an offset that is not page aligned: dd gets the
        # file's pages before the one that holds its first byte.
        extents = [(int(name[:16], 16), int(name[17:], 16))
                   for name in sorted(os.listdir(mount.path("extents")))]
        number = next(i for i, (start, end) in enumerate(extents) if start <= address < end)
        layout = lime_layout(extents)
        bad = int(layout.header_offsets[number]) + 32 + address + PAGE - extents[number][0]
        result = subprocess.run([need("dd"), f"if={mount.path('views', 'lime')}",
                                 "bs=65536", "status=none"], capture_output=True, timeout=600)
        assert result.returncode != 0 and b"Input/output error" in result.stderr
        assert len(result.stdout) == bad // PAGE * PAGE
    finally:
        process.kill()
        process.communicate()


def test_info_hints_at_the_views_when_the_map_has_holes() -> None:
    hint = ("hint:      tools that read mem front to back (volatility, dd) stop at its first "
            "hole; a mount's views/lime and views/core.elf have none")
    with_hole = random_map(9)
    assert info_lines(with_hole, "dump")[-1] == hint
    whole = MemoryMap.of_bytes(b"x" * 100, 0)
    assert all(not line.startswith("hint:") for line in info_lines(whole, "dump"))
