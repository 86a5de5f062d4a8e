"""Real ELF files made by tools vmemfs does not control: gcore, GNU as/ld, gdb, readelf.

* a core of a running process (``gcore``): every load read through the map equals the
  core's own bytes (located by ``readelf -lW``), and the process's memory
  (``/proc/PID/mem``);
* the saved map: ``readelf`` accepts it, ``gdb -c`` prints the same bytes as for the
  original core;
* ELF32 executables linked for PowerPC (big-endian) and i386 (little-endian), with words
  at a known address.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from artifacts.build import DATA_ADDRESS, TEXT_ADDRESS, ToolMissing, build_marker, build_words
from elftools import readelf_loads

from vmemfs import MemoryMap
from vmemfs import open as open_source
from vmemfs.formats.elf import read_layout
from vmemfs.formats.save import save

MARKER = b"vmemfs-artifact-marker: 0123456789abcdef"
EM_386, EM_PPC, EM_X86_64 = 3, 20, 62


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def digest_of_file(path: Path, offset: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        stream.seek(offset)
        while size:
            chunk = stream.read(min(size, 1 << 20))
            assert chunk, "readelf points past the end of the file"
            digest.update(chunk)
            size -= len(chunk)
    return digest.hexdigest()


def digest_of_map(m: MemoryMap, address: int, size: int) -> str:
    digest = hashlib.sha256()
    end = address + size
    while address < end:
        chunk = m.get_bytes(address, min(end - address, 1 << 20))
        digest.update(chunk)
        address += len(chunk)
    return digest.hexdigest()


def gdb_bytes(core: Path, address: int, count: int = 16) -> list[str]:
    """The lines ``gdb -c CORE`` prints for ``x/COUNTxb ADDRESS``."""
    result = subprocess.run(
        [need("gdb"), "-batch", "-nx", "-c", str(core), "-ex", f"x/{count}xb {address:#x}"],
        capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines()
             if re.match(r"0x[0-9a-f]+( <[^>]*>)?:\t", line)]
    assert lines, result.stdout + result.stderr
    return lines


# ------------------------------------------------------------------ a gcore core


@dataclass(frozen=True)
class Dumped:
    pid: int
    core: Path
    marker: int
    words: int
    heap: int


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dumped]:
    """A stopped process with known memory, and its core file made by ``gcore``."""
    gcore = need("gcore")
    folder = tmp_path_factory.mktemp("gcore")
    try:
        program = build_marker(folder)
    except ToolMissing as missing:
        pytest.skip(str(missing))
    process = subprocess.Popen([str(program)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        marker, words, heap = (int(text, 16) for text in process.stdout.readline().split())
        result = subprocess.run([gcore, "-o", str(folder / "core"), str(process.pid)],
                                capture_output=True, text=True, timeout=120)
        core = folder / f"core.{process.pid}"
        assert result.returncode == 0 and core.exists(), result.stdout + result.stderr
        os.kill(process.pid, signal.SIGSTOP)
        yield Dumped(process.pid, core, marker, words, heap)
    finally:
        process.kill()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()


def test_gcore_core_settings_and_values(dumped: Dumped) -> None:
    m = open_source(dumped.core)
    assert (m.wordsize, m.endian, m.machine) == (64, "little", EM_X86_64)
    assert m.get_bytes(dumped.marker, len(MARKER)) == MARKER
    assert m.get_string(dumped.marker) == MARKER
    assert dumped.marker in m.find_all(MARKER)
    assert m.get_int64(dumped.words) == 0x1122334455667788
    assert m.get_c_long(dumped.words + 8) == -2
    assert m.follow_pointer(dumped.words + 16) == dumped.marker
    assert m.follow_pointer(dumped.words + 24) == dumped.heap
    assert m.find_pointer(dumped.marker) == dumped.words + 16
    assert m.get_bytes(dumped.heap, 8) == bytes((i * 7 + 3) & 0xFF for i in range(8))


def test_gcore_every_load_matches_the_core_file(dumped: Dumped) -> None:
    loads = [load for load in readelf_loads(dumped.core) if load.filesz]
    assert loads
    layout = read_layout(dumped.core)
    assert [(int(a), int(o), int(n)) for a, o, n in
            zip(layout.addresses, layout.offsets, layout.lengths, strict=True)] == \
        [(load.vaddr, load.offset, load.filesz) for load in loads]
    m = open_source(dumped.core)
    for load in loads:
        assert digest_of_map(m, load.vaddr, load.filesz) == \
            digest_of_file(dumped.core, load.offset, load.filesz), hex(load.vaddr)


def test_gcore_core_matches_the_process_memory(dumped: Dumped) -> None:
    m = open_source(dumped.core)
    ranges = [(dumped.marker, len(MARKER)), (dumped.words, 32), (dumped.heap, 1 << 16)]
    # And the first page of every load the kernel lets us read (pread offsets stop at
    # 2**63: [vsyscall] is out of reach).
    ranges += [(load.vaddr, min(load.filesz, 4096))
               for load in readelf_loads(dumped.core) if load.filesz and load.vaddr < 2**63]
    compared = 0
    fd = os.open(f"/proc/{dumped.pid}/mem", os.O_RDONLY)
    try:
        for address, size in ranges:
            try:
                live = os.pread(fd, size, address)
            except OSError:
                continue            # [vvar], [vsyscall]: not readable through /proc
            assert m.get_bytes(address, len(live)) == live, hex(address)
            compared += 1
    finally:
        os.close(fd)
    assert compared >= 3 + len(ranges) // 2


def test_saved_gcore_core_reads_the_same_in_gdb(dumped: Dumped,
                                                tmp_path: Path) -> None:
    m = open_source(dumped.core)
    saved = tmp_path / "saved.core"
    save(m, saved)
    loads = readelf_loads(saved)
    assert [(load.vaddr, load.vaddr + load.filesz) for load in loads] == m.extents()
    assert all(load.filesz == load.memsz and load.paddr == load.vaddr for load in loads)
    for address in (dumped.marker, dumped.words, dumped.heap + 4096):
        assert gdb_bytes(saved, address) == gdb_bytes(dumped.core, address)
    again = MemoryMap.load(saved)
    assert (again.wordsize, again.endian, again.machine) == (64, "little", EM_X86_64)
    assert again.extents() == m.extents()
    for start, end in m.extents():
        assert digest_of_map(again, start, end - start) == digest_of_map(m, start, end - start)


# ------------------------------------------------------------------ ELF32 from binutils


@pytest.mark.parametrize(("arch", "endian", "machine", "nop"), [
    ("powerpc", "big", EM_PPC, b"\x60\x00\x00\x00"),
    ("i686", "little", EM_386, b"\x90\x90"),
])
def test_elf32_words(tmp_path: Path, arch: str, endian: str, machine: int,
                     nop: bytes) -> None:
    try:
        elf = build_words(arch, tmp_path)
    except ToolMissing as missing:
        pytest.skip(str(missing))
    m = open_source(elf)
    assert (m.wordsize, m.endian, m.machine) == (32, endian, machine)
    table = DATA_ADDRESS
    assert m.get_c_long(table) == 0x11223344
    assert m.get_int32(table + 4) == -2
    assert m.get_c_int(table + 4) == -2
    assert m.follow_pointer(table + 8) == table + 0x10
    assert m.get_int32(m.follow_pointer(table + 8)) == 0xDEADBEEF - 2**32
    assert m.succ_long(table) == table + 4
    assert m.get_string(table + 0x14) == b"vmemfs_word"
    assert m.is_c_identifier(table + 0x14)
    assert m.find_pointer(table + 0x10) == table + 8
    assert m.get_bytes(TEXT_ADDRESS, len(nop)) == nop
    # The loads, as readelf sees them, are what the map holds.
    for load in readelf_loads(elf):
        if load.filesz:
            assert digest_of_map(m, load.vaddr, load.filesz) == \
                digest_of_file(elf, load.offset, load.filesz)
    # Saved, it stays ELF32 in its byte order.
    saved = tmp_path / "saved.core"
    save(m, saved)
    header = subprocess.run([need("readelf"), "-h", str(saved)], capture_output=True,
                            text=True, check=True).stdout
    assert "ELF32" in header
    assert f"{endian} endian" in header
    again = MemoryMap.load(saved)
    assert (again.wordsize, again.endian, again.machine) == (32, endian, machine)
    assert again.get_c_long(table) == 0x11223344
    assert again.extents() == m.extents()


def test_elf32_physical_equals_virtual_for_an_executable(tmp_path: Path) -> None:
    try:
        elf = build_words("powerpc", tmp_path)
    except ToolMissing as missing:
        pytest.skip(str(missing))
    virtual, physical = open_source(elf), open_source(elf, physical=True)
    assert physical.extents() == virtual.extents()


# ------------------------------------------------------------------ through the kernel


@pytest.mark.mount
def test_mount_gcore_core(dumped: Dumped, tmp_path: Path) -> None:
    """``mount.vmemfs CORE DIR -f``: ``mem`` and ``extents/`` show the core's bytes."""
    helper = Path(sys.executable).parent / "mount.vmemfs"
    if not helper.exists() or not os.path.exists("/dev/fuse"):
        pytest.skip("mount.vmemfs or /dev/fuse is missing")
    m = open_source(dumped.core)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    process = subprocess.Popen([str(helper), str(dumped.core), str(mountpoint), "-f"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            assert time.monotonic() < deadline, "mount.vmemfs did not mount within 60 s"
            try:
                process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            assert process.stderr is not None
            pytest.fail(f"mount.vmemfs ended: {process.stderr.read().decode()}")
        with open(mountpoint / "mem", "rb", buffering=0) as mem:
            assert os.pread(mem.fileno(), len(MARKER), dumped.marker) == MARKER
        names = sorted(os.listdir(mountpoint / "extents"))
        assert names == [f"{s:016x}-{e:016x}" for s, e in m.extents()]
        for name, (start, end) in zip(names, m.extents(), strict=True):
            if end - start > 1 << 22:
                continue
            data = (mountpoint / "extents" / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest_of_map(m, start, end - start)
    finally:
        for command in (["fusermount3", "-u"], ["fusermount3", "-u", "-z"]):
            if not os.path.ismount(mountpoint):
                break
            subprocess.run([*command, str(mountpoint)], capture_output=True)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
    assert not os.path.ismount(mountpoint)
