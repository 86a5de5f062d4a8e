"""QEMU's and makedumpfile's real dumps of one guest, mounted: every page each file holds
equals the ELF dump's, left-out pages are holes, ``strings`` finds the banner, and the
kernel's virtual view of a compressed dump names ``linux_banner``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Mounts
from guestdumps import Guest

import vmemfs

CHUNK = 4 << 20


def dump_files(dumps: Guest) -> dict[str, Path]:
    return {"kdump-zlib": dumps.kdump_zlib, "kdump-zlib-flattened": dumps.kdump_flat,
            "kdump-lzo": dumps.kdump_lzo, "kdump-d31": dumps.kdump_d31, "lime": dumps.lime}


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kdump-zlib", "kdump-zlib-flattened", "kdump-lzo",
                                  "kdump-d31", "lime"])
def test_every_page_equals_the_elf_dump(dumps: Guest, mounts: Mounts, kind: str) -> None:
    reference = vmemfs.open(dumps.elf, physical=True)
    mount = mounts.foreground(dump_files(dumps)[kind])
    try:
        names = sorted(os.listdir(mount.path("extents")))
        assert names
        covered = 0
        for name in names:
            start, end = int(name[:16], 16), int(name[17:], 16)
            extent = reference.extent_at(start)
            assert extent is not None and extent[1] >= end, name   # a subset of the ELF's
            with open(mount.path("extents", name), "rb") as data:
                for at in range(start, end, CHUNK):
                    chunk = data.read(CHUNK)
                    assert chunk == reference.get_bytes(at, min(CHUNK, end - at)), hex(at)
            covered += end - start
        if kind == "kdump-d31":
            assert covered < reference.mapped_bytes() * 0.8    # pages left out by -d 31
        else:
            assert covered >= reference.mapped_bytes() - (1 << 20)
        # Many unaligned reads of mem, against the ELF.
        fd = os.open(mount.path("mem"), os.O_RDONLY)
        try:
            low, high = (int(names[0][:16], 16), int(names[0][17:], 16))
            for offset in range(low + 4093, min(high, low + (64 << 20)), 1_048_573):
                assert os.pread(fd, 4099, offset) == reference.read(offset, 4099)
        finally:
            os.close(fd)
        strings = subprocess.run(f"strings {mount.path('extents')}/* | grep -c "
                                 "'Linux version'", shell=True, capture_output=True,
                                 text=True)
        assert int(strings.stdout or 0) >= 1
    finally:
        reference.close()


@pytest.mark.mount
def test_left_out_pages_are_holes(dumps: Guest, mounts: Mounts) -> None:
    filtered = vmemfs.open(dumps.kdump_d31)
    reference = vmemfs.open(dumps.elf, physical=True)
    try:
        first_hole = next(end for start, end in filtered.extents()
                          if reference.is_mapped(end) and end < (64 << 20))
    finally:
        filtered.close()
        reference.close()
    mount = mounts.foreground(dumps.kdump_d31)
    fd = os.open(mount.path("mem"), os.O_RDONLY)
    try:
        assert len(os.pread(fd, 8192, first_hole - 100)) == 100      # short at the hole
        with pytest.raises(OSError) as caught:
            os.pread(fd, 16, first_hole)
        assert caught.value.errno == errno.EIO
    finally:
        os.close(fd)
    vmcoreinfo = mount.path(".ctl", "vmcoreinfo").read_text()
    assert f"OSRELEASE={dumps.kernel_release}" in vmcoreinfo


@pytest.mark.mount
def test_virtual_view_of_a_flattened_kdump(dumps: Guest, mounts: Mounts) -> None:
    mount = mounts.foreground(dumps.kdump_flat, "virtual", f"symbols={dumps.kallsyms}")
    banner = mount.path("sym", "linux_banner", "string").read_text().strip()
    assert banner == dumps.banner.strip()


def test_info_names_format_and_release(dumps: Guest) -> None:
    result = subprocess.run([sys.executable, "-m", "vmemfs.cli", "info",
                             str(dumps.kdump_flat)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "kdump-compressed" in result.stdout
    assert "flattened" in result.stdout
    assert dumps.kernel_release in result.stdout


DRGN_BANNER = """
import sys, drgn
program = drgn.Program()
program.set_core_dump(sys.argv[1])
print(program.read(int(sys.argv[2], 16), 13).decode())
"""


@pytest.mark.mount
def test_drgn_takes_views_core_elf_of_a_kdump_for_the_kernel(dumps: Guest,
                                                              mounts: Mounts) -> None:
    pytest.importorskip("drgn")
    banner = next(line.split()[0] for line in dumps.kallsyms.read_text().splitlines()
                  if line.endswith(" linux_banner"))
    mount = mounts.foreground(dumps.kdump_flat)
    # drgn finds VMCOREINFO in the core, so it knows the kernel and walks its page tables
    # to read a virtual address.
    result = subprocess.run([sys.executable, "-c", DRGN_BANNER,
                             str(mount.path("views", "core.elf")), banner],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Linux version"
