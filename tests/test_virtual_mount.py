"""``-o virtual`` through the kernel on a real QEMU guest: the kernel's banner by symbol
name, kernel text identical to QEMU's own page-table walk (the ``paging`` dump), and the
walk described in ``.ctl/maps`` and ``vmemfs info``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Mounts
from guestdumps import Guest

import vmemfs


@pytest.mark.mount
def test_banner_by_symbol_in_the_virtual_view(dumps: Guest, mounts: Mounts) -> None:
    mount = mounts.foreground(dumps.elf, "virtual", f"symbols={dumps.kallsyms}")
    banner = mount.path("sym", "linux_banner", "string").read_text().strip()
    assert banner == dumps.banner.strip()
    maps = mount.path(".ctl", "maps").read_text()
    assert maps.startswith("# virtual:   x86-64 4-level page tables, top-level table at "
                           f"physical {dumps.init_top_pgt_physical:#x}")
    # Kernel text, read through the mount with cat, equals QEMU's paging dump.
    stext = int(next(line.split()[0] for line in dumps.kallsyms.read_text().splitlines()
                     if line.endswith(" _stext")), 16)
    name = next(n for n in os.listdir(mount.path("extents"))
                if int(n[:16], 16) <= stext < int(n[17:], 16))
    start = int(name[:16], 16)
    with open(mount.path("extents", name), "rb") as text:
        text.seek(stext - start)
        ours = text.read(1 << 20)
    reference = vmemfs.open(dumps.paging_elf)
    try:
        assert ours == reference.get_bytes(stext, len(ours))
    finally:
        reference.close()


def test_info_describes_the_walk(dumps: Guest) -> None:
    result = subprocess.run([sys.executable, "-m", "vmemfs.cli", "info", str(dumps.elf),
                             "-o", "virtual"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "x86-64 4-level page tables" in result.stdout


def test_a_table_outside_the_dump_is_one_line(dumps: Guest, tmp_path: Path) -> None:
    with pytest.raises(vmemfs.FormatError) as caught:
        vmemfs.open(dumps.elf, virtual=0x7fff0000000)
    assert "\n" not in str(caught.value)
    assert "0x7fff0000000" in str(caught.value)


def test_banner_through_vmemfs_at(dumps: Guest) -> None:
    result = subprocess.run([sys.executable, "-m", "vmemfs.cli", "at", str(dumps.kdump_zlib),
                             "-o", "virtual", "--symbols", str(dumps.kallsyms),
                             "linux_banner", "string"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == dumps.banner.strip()


def test_a_map_files_virtual_key(dumps: Guest, tmp_path: Path) -> None:
    mapfile = tmp_path / "guest.toml"
    mapfile.write_text(f'virtual = true\nsymbols = "{dumps.kallsyms}"\n'
                       f'[[map]]\nelf = "{dumps.elf}"\nphysical = true\n')
    m = vmemfs.open(mapfile)
    try:
        assert m.kernel_virtual
        assert m.symbols is not None
        assert m.get_string(m.symbols["linux_banner"]).decode().strip() == \
            dumps.banner.strip()
    finally:
        m.close()
    mapfile.write_text(f'virtual = "0x7fff0000000"\n[[map]]\nelf = "{dumps.elf}"\n'
                       'physical = true\n')
    with pytest.raises(vmemfs.FormatError, match="0x7fff0000000"):
        vmemfs.open(mapfile)
