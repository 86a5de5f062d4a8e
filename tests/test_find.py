"""``find/``: search results as files, against ``find_all``/``find_pointer_all``.

The model (the nodes and their handles on a trio loop, no kernel) and the mount read with
``cat``, ``ls``, ``xargs`` and plain ``open``: random maps, a ``hex/`` pattern holding
``/`` and NUL, the errors, a search closed early (its scan stops), a scan that runs ahead
of its reader (it pauses), and ``mem`` and ``ls`` answered while a 1 GiB scan runs.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from conftest import Mounts
from mounting import sh, wait_for
from treemodel import tree_of

import vmemfs.search
from vmemfs import MemoryMap, NoEndianError, NoWordsizeError
from vmemfs.tree import Tree, find
from vmemfs.tree.find import LINE_SIZE, PointerTooWide, SearchHandle, pattern_of
from vmemfs.tree.nodes import Node, NotFound, Refused

WORDS = [b"needle", b"ab", b"/\0", b"\0\0\0\0", b"x" * 9]
"""Patterns planted in the random maps (some straddle mappings, some overlap)."""


def lines(addresses: list[int]) -> bytes:
    return b"".join(b"0x%016x\n" % address for address in addresses)


def random_blob(rng: random.Random, size: int) -> bytearray:
    """Bytes from a small alphabet (so short patterns recur), with words planted."""
    blob = bytearray(rng.choice(b"abx/\0") for _ in range(size))
    for _ in range(size // 64):
        word = rng.choice(WORDS)
        place = rng.randrange(size - len(word))
        blob[place:place + len(word)] = word
    return blob


def random_layout(rng: random.Random, blob_size: int) -> list[tuple[int, int, int]]:
    """``(address, offset, length)`` regions of one blob: overlapping, adjacent, apart,
    near 0 and near the top of the address space."""
    regions = []
    cursor = rng.choice([0, 0x1000, 2**63 - 0x2000])
    for _ in range(rng.randrange(2, 9)):
        length = rng.randrange(1, 3000)
        offset = rng.randrange(blob_size - length)
        regions.append((cursor, offset, length))
        cursor += rng.choice([length, length, length // 2 + 1, length + rng.randrange(1, 64)])
    if rng.random() < 0.3:
        regions.append((2**64 - 1000, rng.randrange(blob_size - 1000), 1000))
    return regions


def random_map(seed: int) -> tuple[MemoryMap, bytes, list[tuple[int, int, int]]]:
    rng = random.Random(seed)
    blob = bytes(random_blob(rng, 1 << 14))
    layout = random_layout(rng, len(blob))
    memory_map = MemoryMap()
    for address, offset, length in layout:
        memory_map.add_bytes(blob[offset:offset + length], address)
    return memory_map, blob, layout


# -------------------------------------------------------------------- the model


def result_node(tree: Tree, kind: str, name: bytes) -> Node:
    return tree.table.get(dict(find.KINDS)[kind]).lookup(name)


async def read_all(handle: SearchHandle, rng: random.Random) -> bytes:
    """Read the whole result with random sizes (as a reader at any offset would)."""
    parts = []
    offset = 0
    while True:
        chunk = bytes(await handle.read_async(offset, rng.choice([1, 7, 19, 100, 4096, 1 << 17])))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def opened(node: Node) -> SearchHandle:
    handle = node.open(False, True)
    assert isinstance(handle, SearchHandle)
    assert handle.asynchronous and handle.direct_io and not handle.keep_cache
    return handle


@pytest.mark.parametrize("seed", range(12))
def test_results_equal_find_all_on_random_maps(seed: int) -> None:
    memory_map, _, _ = random_map(seed)
    tree = tree_of(memory_map)
    rng = random.Random(seed)

    async def check() -> None:
        for word in [*WORDS, b"a", b"nothing-like-this"]:
            for kind, name in (("text", word), ("hex", word.hex().encode())):
                if kind == "text" and (b"/" in word or b"\0" in word):
                    continue  # not a file name; hex/ takes it
                handle = opened(result_node(tree, kind, name))
                got = await read_all(handle, rng)
                assert got == lines(memory_map.find_all(word)), (kind, word)
                assert handle.finished
                handle.release()
        for wordsize in (32, 64):
            for endian in ("little", "big"):
                memory_map.wordsize, memory_map.endian = wordsize, endian
                width = wordsize // 8
                candidates = [0, 0x6161616161616161 % (1 << wordsize)]
                for start, end in memory_map.extents():   # a word the map holds
                    aligned = start + -start % width
                    if aligned + width <= end:
                        candidates.append(int.from_bytes(
                            memory_map.get_bytes(aligned, width), endian))
                for pointer in candidates:
                    node = result_node(tree, "pointer", b"%#x" % pointer)
                    got = await read_all(opened(node), rng)
                    assert got == lines(memory_map.find_pointer_all(pointer)), pointer

    trio.run(check)


def test_reads_at_any_offset_and_past_the_end() -> None:
    memory_map = MemoryMap.of_bytes(b"ab" * 100, 0x1000)
    handle = opened(result_node(tree_of(memory_map), "text", b"ab"))
    text = lines(memory_map.find_all(b"ab"))

    async def check() -> None:
        assert bytes(await handle.read_async(5 * LINE_SIZE + 3, 30)) == \
            text[5 * LINE_SIZE + 3:5 * LINE_SIZE + 33]
        assert bytes(await handle.read_async(0, len(text) + 100)) == text
        assert bytes(await handle.read_async(len(text) - 1, 10)) == b"\n"
        assert bytes(await handle.read_async(len(text), 10)) == b""
        assert bytes(await handle.read_async(len(text) + 1000, 10)) == b""

    trio.run(check)


def test_names() -> None:
    assert pattern_of("hex", b"2f00") == b"/\0"
    assert pattern_of("hex", b"2F 00 ff") == b"/\0\xff"
    assert pattern_of("text", b"Linux version") == b"Linux version"
    assert pattern_of("pointer", b"0xffffffff81000000") == 0xFFFFFFFF81000000
    assert pattern_of("pointer", b"4096") == 4096
    for kind, bad in [("hex", b"2"), ("hex", b"zz"), ("hex", b"0x2f"), ("hex", b"\xff"),
                      ("hex", b""), ("pointer", b"0x1" + b"0" * 16), ("pointer", b"1K"),
                      ("pointer", b"init_task"), ("pointer", b"\xff")]:
        assert pattern_of(kind, bad) is None, (kind, bad)
    tree = tree_of(MemoryMap.of_bytes(b"x", 0))
    with pytest.raises(NotFound):
        result_node(tree, "hex", b"abc")
    node = result_node(tree, "text", b"x")
    assert node is result_node(tree, "text", b"x")           # one node while remembered
    assert node.inode >= 1 << 48
    with pytest.raises(Refused):
        node.open(True, True)
    for _, inode in find.KINDS:
        assert list(tree.table.get(inode).entries(0)) == []


def test_pointer_needs_settings_and_a_fitting_address() -> None:
    memory_map = MemoryMap.of_bytes(b"\x10\0\0\0\0\0\0\0", 0)
    tree = tree_of(memory_map)
    node = result_node(tree, "pointer", b"0x10")
    with pytest.raises(NoWordsizeError):
        node.open(False, True)
    memory_map.wordsize = 32
    with pytest.raises(NoEndianError):
        node.open(False, True)
    memory_map.endian = "little"
    with pytest.raises(PointerTooWide):
        result_node(tree, "pointer", b"0x100000000").open(False, True)

    async def check() -> None:
        assert bytes(await opened(node).read_async(0, 100)) == lines([0, ])
        memory_map.wordsize = 64            # the setting in force at open is the one used
        assert bytes(await opened(node).read_async(0, 100)) == lines([0])
        memory_map.endian = "big"
        assert bytes(await opened(node).read_async(0, 100)) == b""

    trio.run(check)


def test_a_closed_search_stops_and_a_search_ahead_of_its_reader_pauses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmemfs.search, "CHUNK", 4096)
    monkeypatch.setattr(find, "AHEAD", 100)
    zeros = MemoryMap.of_bytes(bytes(1 << 20), 0)       # every address matches "00"
    tree = tree_of(zeros)

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await trio.sleep(0.001)

    async def check() -> None:
        # Paused: after one line read, the scan runs at most AHEAD matches (and the
        # rest of its chunk) past the reader, then waits.
        handle = opened(result_node(tree, "hex", b"00"))
        assert bytes(await handle.read_async(0, LINE_SIZE)) == lines([0])
        await until(lambda: handle.paused)
        held = len(handle.matches)
        assert 100 < held <= 1 + 100 + 4096
        assert not handle.done
        # Reading on lets it go on, and the whole result is right.
        text = await read_all(handle, random.Random(1))
        assert text == lines(list(range(1 << 20)))
        assert handle.finished
        # Closed early: the scan stops at the next chunk and never finishes.
        handle = opened(result_node(tree, "hex", b"00"))
        assert bytes(await handle.read_async(0, LINE_SIZE)) == lines([0])
        handle.release()
        await until(lambda: handle.done)
        assert not handle.finished and handle.scanned < 1 << 20

    trio.run(check)


def test_a_failing_scan_is_an_error_for_its_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    memory_map = MemoryMap.of_bytes(b"abc", 0)
    handle = opened(result_node(tree_of(memory_map), "text", b"b"))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(find, "iter_matches", broken)

    async def check() -> None:
        with pytest.raises(RuntimeError, match="disk on fire"):
            await handle.read_async(0, 100)

    trio.run(check)


# -------------------------------------------------------------------- through the kernel


def write_random_mapfile(folder: Path, seed: int) -> tuple[Path, MemoryMap]:
    """A map file of random regions of one blob file, and the same map built directly."""
    rng = random.Random(seed)
    blob = bytes(random_blob(rng, 1 << 15))
    (folder / f"blob{seed}.bin").write_bytes(blob)
    layout = random_layout(rng, len(blob))
    tables = [f'[[map]]\nfile = "blob{seed}.bin"\naddress = "{address:#x}"\n'
              f"offset = {offset}\nlength = {length}\n" for address, offset, length in layout]
    path = folder / f"random{seed}.toml"
    path.write_text("\n".join(tables))
    memory_map = MemoryMap()
    for address, offset, length in layout:
        memory_map.add_bytes(blob[offset:offset + length], address)
    return path, memory_map


def errno_of(action: Callable[[], object]) -> int:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value.errno or 0


@pytest.mark.mount
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cat_of_find_equals_find_all(tmp_path: Path, mounts: Mounts, seed: int) -> None:
    source, reference = write_random_mapfile(tmp_path, seed)
    mount = mounts.foreground(source)
    root = mount.mountpoint
    assert sorted(os.listdir(root / "find")) == ["hex", "pointer", "text"]
    assert os.listdir(root / "find" / "text") == []
    for word in (b"needle", b"ab", b"xxxxxxxxx", b"b"):
        result = sh(f"cat {root}/find/text/{word.decode()}")
        assert result.returncode == 0 and result.stdout == lines(reference.find_all(word))
    for word in (b"/\0", b"\0\0\0\0", b"a/"):
        path = root / "find" / "hex" / word.hex()
        assert path.read_bytes() == lines(reference.find_all(word)), word
    for wordsize in (32, 64):
        for endian in ("little", "big"):
            (root / ".ctl" / "wordsize").write_text(f"{wordsize}\n")
            (root / ".ctl" / "endian").write_text(f"{endian}\n")
            reference.wordsize, reference.endian = wordsize, endian
            for pointer in (0, int.from_bytes(b"xxxxxxxx"[:wordsize // 8], endian),
                            int.from_bytes(b"\0\0\0\0\0\0\0\0"[:wordsize // 8], endian) + 0x61):
                text = (root / "find" / "pointer" / hex(pointer)).read_bytes()
                assert text == lines(reference.find_pointer_all(pointer)), (wordsize, pointer)


def plain_source(tmp_path: Path) -> Path:
    """Text with a ``/``, NUL pair and three C strings, 64-bit little endian."""
    data = bytearray(b"path /\0 here; ")
    data += b"\0first\0second\0third\0" + bytes(-len(data) % 8)
    (tmp_path / "plain.bin").write_bytes(bytes(data))
    path = tmp_path / "plain.toml"
    path.write_text('wordsize = 64\nendian = "little"\n[[map]]\nfile = "plain.bin"\n'
                    "address = 0x10000\n")
    return path


@pytest.mark.mount
def test_hex_with_slash_and_nul_errors_and_xargs(tmp_path: Path, mounts: Mounts) -> None:
    mount = mounts.foreground(plain_source(tmp_path))
    root = mount.mountpoint
    find_dir = root / "find"
    assert (find_dir / "hex" / "2f00").read_bytes() == lines([0x10005])
    assert (find_dir / "hex" / "2F 00").read_bytes() == lines([0x10005])
    assert (find_dir / "text" / "nothing").read_bytes() == b""
    assert os.stat(find_dir / "text" / "first").st_size == 0
    # A search piped into xargs: the strings found, read through at/.
    result = sh(f"cd {root} && cat find/hex/00 | head -4 | tail -3 | "
                "xargs -I{} readlink at/{}/next")
    assert result.returncode == 0, result.stderr
    script = (f"cd {root} && for word in first second third; do cat find/text/$word; done "
              "| xargs -I{} cat at/{}/string")
    assert sh(script).stdout == b"first\nsecond\nthird\n"
    # Errors: bad names, unset settings, writes, a pointer wider than a word.
    assert errno_of(lambda: (find_dir / "hex" / "2").read_bytes()) == errno.ENOENT
    assert errno_of(lambda: (find_dir / "hex" / "0x2f").read_bytes()) == errno.ENOENT
    assert errno_of(lambda: (find_dir / "pointer" / "zz").read_bytes()) == errno.ENOENT
    assert errno_of(lambda: (find_dir / "other").read_bytes()) == errno.ENOENT
    (root / ".ctl" / "wordsize").write_text("32\n")
    assert errno_of(lambda: (find_dir / "pointer" / "0x100000000").read_bytes()) == \
        errno.EINVAL
    (root / ".ctl" / "wordsize").write_text("unset\n")
    assert errno_of(lambda: (find_dir / "pointer" / "0x10").read_bytes()) == errno.ENODATA
    (root / ".ctl" / "wordsize").write_text("64\n")
    (root / ".ctl" / "endian").write_text("unset\n")
    assert errno_of(lambda: (find_dir / "pointer" / "0x10").read_bytes()) == errno.ENODATA
    for target in (find_dir / "text" / "first", find_dir / "text" / "new",
                   find_dir / "new", find_dir / "hex" / "00"):
        assert errno_of(lambda target=target: open(target, "w")) == errno.EACCES, target
    assert errno_of(lambda: os.mkdir(find_dir / "hex" / "zz")) == errno.EACCES
    assert errno_of(lambda: os.mkdir(find_dir / "text" / "x")) == errno.EEXIST  # any name is
    assert errno_of(lambda: os.unlink(find_dir / "text")) in (errno.EACCES, errno.EISDIR)


def sparse_source(tmp_path: Path, size: int) -> Path:
    """A sparse file of ``size`` zero bytes with ``needle`` at its start and its end."""
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as stream:
        stream.truncate(size)
        stream.write(b"needle")
        stream.seek(size - 6)
        stream.write(b"needle")
    return path


@pytest.mark.mount
@pytest.mark.slow
def test_mem_and_ls_are_answered_while_a_1_gib_search_runs(tmp_path: Path,
                                                           mounts: Mounts) -> None:
    size = 1 << 30
    mount = mounts.foreground(sparse_source(tmp_path, size))
    root = mount.mountpoint
    search = subprocess.Popen(["cat", str(root / "find" / "text" / "needle")],
                              stdout=subprocess.PIPE)
    try:
        assert search.stdout is not None
        # The first match comes with the first chunk: from here on the scan is running,
        # and the next line comes only with the last chunk.
        assert search.stdout.readline() == b"0x0000000000000000\n"
        with open(root / "mem", "rb", buffering=0) as mem:
            assert os.pread(mem.fileno(), 4096, size // 2) == bytes(4096)
            assert os.pread(mem.fileno(), 6, 0) == b"needle"
        assert sorted(os.listdir(root)) == [".ctl", "at", "extents", "find", "mem", "views"]
        assert search.poll() is None, "the search ended before mem and ls were answered"
        rest, _ = search.communicate(timeout=300)
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
        if search.stdout is not None:
            search.stdout.close()
    assert rest == b"0x%016x\n" % (size - 6)
    assert search.returncode == 0


@pytest.mark.mount
@pytest.mark.slow
def test_a_search_closed_early_stops_its_scan(tmp_path: Path, mounts: Mounts) -> None:
    size = 1 << 30
    mount = mounts.foreground(sparse_source(tmp_path, size), "debug")
    path = mount.path("find", "text", "needle")
    with open(path, "rb", buffering=0) as result:
        assert result.read(LINE_SIZE) == b"0x0000000000000000\n"
    stopped = re.compile(r"find/text/needle: stopped \(closed\) after (\d+) bytes")
    wait_for(lambda: stopped.search(mount.log_text()), 60, "the scan to stop")
    match = stopped.search(mount.log_text())
    assert match is not None and int(match[1]) < size
    assert "find/text/needle: finished" not in mount.log_text()
    # Opened and closed without a read: stopped too; the mount serves on.
    with open(path, "rb", buffering=0):
        pass
    wait_for(lambda: len(stopped.findall(mount.log_text())) == 2, 60, "the second stop")
    assert (mount.path("at", "6", "string")).read_bytes() == b"\n"
