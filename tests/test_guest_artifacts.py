"""The guest dumps (``guestdumps.guest()``) are what they claim to be.

Checked with other tools than the build's own reader where one exists (``readelf``,
``busybox cpio``, drgn when installed): the loads of both ELF dumps, the kernel banner at
the physical address kallsyms and VMCOREINFO give, the signatures of the kdump layouts,
the LiME ranges, and that a second request reuses the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from elftools import readelf_loads
from guest import cpio
from guest.build import build, cache_root, module_depends, modules_in_load_order
from guestdumps import Guest

PAGE = 4096
START_KERNEL_MAP = 0xFFFFFFFF80000000


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(length)


def physical(dumps: Guest, address: int, length: int) -> bytes:
    """``length`` bytes at a physical address, from guest.elf through readelf's loads."""
    for load in readelf_loads(dumps.elf):
        if load.paddr <= address and address + length <= load.paddr + load.filesz:
            return read_at(dumps.elf, load.offset + address - load.paddr, length)
    raise AssertionError(f"no load of {dumps.elf} holds {address:#x}")


def symbol(dumps: Guest, name: str) -> int:
    found = re.search(rf"^([0-9a-f]+) \S {name}$", dumps.kallsyms.read_text(), re.MULTILINE)
    assert found, f"kallsyms has no {name}"
    return int(found.group(1), 16)


def vmcoreinfo(dumps: Guest) -> dict[str, str]:
    return dict(line.split("=", 1) for line in dumps.vmcoreinfo.read_text().splitlines())


def test_physical_elf_loads_cover_the_ram(dumps: Guest) -> None:
    loads = readelf_loads(dumps.elf)
    assert all(load.vaddr == load.paddr for load in loads)
    assert sum(load.filesz for load in loads) >= dumps.memory_bytes
    for start, end in dumps.ram:
        assert any(load.paddr <= start and end <= load.paddr + load.filesz for load in loads)


def test_banner_is_at_linux_banner_in_physical_memory(dumps: Guest) -> None:
    assert dumps.banner.startswith(f"Linux version {dumps.kernel_release} ")
    info = vmcoreinfo(dumps)
    assert info["OSRELEASE"] == dumps.kernel_release
    address = symbol(dumps, "linux_banner") - START_KERNEL_MAP + int(info["NUMBER(phys_base)"])
    banner = dumps.banner.encode() + b"\n"
    assert physical(dumps, address, len(banner)) == banner


def test_console_banner_is_the_kernel_log_banner(dumps: Guest) -> None:
    console = dumps.console.read_text()
    assert f"] {dumps.banner}\n" in console
    assert "vmemfs-guest: vmcoreinfo device: present" in console


def test_kallsyms_matches_vmcoreinfo(dumps: Guest) -> None:
    info = vmcoreinfo(dumps)
    assert info["SYMBOL(init_top_pgt)"] == f"{symbol(dumps, 'init_top_pgt'):x}"
    assert info["SYMBOL(_stext)"] == f"{symbol(dumps, '_stext'):x}"
    assert info["KERNELOFFSET"] == "0"  # nokaslr
    top = int(info["SYMBOL(init_top_pgt)"], 16) - START_KERNEL_MAP
    assert dumps.init_top_pgt_physical == top + int(info["NUMBER(phys_base)"])


def test_paging_elf_maps_the_kernel_text_at_its_virtual_address(dumps: Guest) -> None:
    with open(dumps.paging_elf, "rb") as file:
        header = file.read(64)
    assert struct.unpack_from("<H", header, 56)[0] == 0xFFFF  # PN_XNUM
    loads = readelf_loads(dumps.paging_elf)
    assert len(loads) >= 0xFFFF
    text = symbol(dumps, "_text")
    [kernel] = [load for load in loads if load.vaddr == text]
    assert read_at(dumps.paging_elf, kernel.offset, PAGE) == physical(dumps, kernel.paddr, PAGE)


def test_kdump_signatures(dumps: Guest) -> None:
    for path in (dumps.kdump_zlib, dumps.kdump_lzo, dumps.kdump_d31):
        assert read_at(path, 0, 8) == b"KDUMP   ", path
    flat = read_at(dumps.kdump_flat, 0, PAGE + 16 + 8)
    assert flat[:16] == b"makedumpfile".ljust(16, b"\0")
    assert struct.unpack_from(">QQ", flat, 16) == (1, 1)  # type, version
    offset, size = struct.unpack_from(">qq", flat, PAGE)  # the first data record
    assert offset == 0 and size > 0
    assert flat[PAGE + 16:] == b"KDUMP   "


def test_filtered_kdump_is_smaller(dumps: Guest) -> None:
    assert dumps.kdump_d31.stat().st_size < dumps.kdump_zlib.stat().st_size


def test_lime_ranges_and_bytes(dumps: Guest) -> None:
    ranges = []
    offset = 0
    size = dumps.lime.stat().st_size
    with open(dumps.lime, "rb") as file:
        while offset < size:
            file.seek(offset)
            magic, version, start, end = struct.unpack("<IIQQ", file.read(24))
            assert (magic, version) == (0x4C694D45, 1)
            ranges.append((start, end + 1))
            if end + 1 - start >= 2 * PAGE:
                page = start + PAGE
                file.seek(offset + 32 + PAGE)
                assert file.read(PAGE) == physical(dumps, page, PAGE)
            offset += 32 + end + 1 - start
    assert offset == size
    assert tuple(ranges) == dumps.ram


def test_second_request_reuses_the_cache(dumps: Guest) -> None:
    before = dumps.manifest.stat().st_mtime_ns
    started = time.monotonic()
    assert build(dumps.memory) == dumps.directory
    assert time.monotonic() - started < 5
    assert dumps.manifest.stat().st_mtime_ns == before
    assert dumps.directory.parent == cache_root()
    assert not list(cache_root().glob("guest-*.tmp-*"))


def test_module_dependencies_load_first(dumps: Guest) -> None:
    tree = Path(dumps.info()["kernel"]["vmlinuz"]).parents[1]
    order = modules_in_load_order(tree / "lib" / "modules" / dumps.kernel_release, ("9p",))
    names = [name for name, _ in order]
    assert names[-1] == "9p.ko"
    assert sorted(names[:-1]) == ["9pnet.ko", "fscache.ko", "netfs.ko"]
    for position, (_, image) in enumerate(order):
        assert all(f"{dependency}.ko" in names[:position] for dependency in module_depends(image))


def test_cpio_archive_lists_with_busybox(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    archive = cpio.newc_archive([
        cpio.directory("bin"), cpio.file("bin/tool", b"x" * 5, 0o755),
        cpio.symlink("bin/link", "tool"), cpio.char_device("console", 5, 1),
    ])
    assert archive[:6] == b"070701" and len(archive) % 4 == 0
    (tmp_path / "a.cpio").write_bytes(archive)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "a.cpio", "rb") as stream:
        listing = subprocess.run([busybox, "cpio", "-tv"], stdin=stream, capture_output=True,
                                 text=True, check=True).stdout.splitlines()
    assert [line.split()[5] for line in listing] == ["bin", "bin/tool", "bin/link", "console"]
    assert [line.split()[0][0] for line in listing] == ["d", "-", "l", "c"]
    assert listing[2].split()[-2:] == ["->", "tool"]
    with open(tmp_path / "a.cpio", "rb") as stream:
        subprocess.run([busybox, "cpio", "-id", "bin", "bin/tool", "bin/link"], stdin=stream,
                       cwd=tmp_path / "out", check=True, capture_output=True)
    assert (tmp_path / "out/bin/tool").read_bytes() == b"xxxxx"
    assert stat.S_IMODE((tmp_path / "out/bin/tool").stat().st_mode) == 0o755
    assert os.readlink(tmp_path / "out/bin/link") == "tool"


def test_drgn_reads_the_kdump_files(dumps: Guest) -> None:
    drgn = pytest.importorskip("drgn")
    phys_base = int(vmcoreinfo(dumps)["NUMBER(phys_base)"])
    page = (symbol(dumps, "linux_banner") - START_KERNEL_MAP + phys_base) & ~(PAGE - 1)
    for path in (dumps.kdump_zlib, dumps.kdump_flat):
        program = drgn.Program(drgn.Platform(
            drgn.Architecture.X86_64,
            drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN))
        program.set_core_dump(str(path))
        assert program.read(page, PAGE, True) == physical(dumps, page, PAGE), path
