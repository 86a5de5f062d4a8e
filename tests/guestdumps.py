"""Real memory dumps of a QEMU guest running Debian's kernel, for tests.

``guest()`` returns the paths of one guest's dumps, all taken from one paused VM state,
building them on first use (about a minute at 128M; see ``guest/build.py``) into
``${VMEMFS_TEST_CACHE:-/var/cache/vmemfs-tests}/guest-r<recipe>-<kernel>-<memory>/``.
Tests take them through the ``dumps`` fixture of ``conftest.py``, which skips the test
(saying why) when QEMU cannot be had here.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest.build import FILES, GuestUnavailable, build, parse_memory

__all__ = ["Guest", "GuestUnavailable", "guest"]


@dataclass(frozen=True)
class Guest:
    """One guest's dumps and what is known about the dumped machine (x86-64, little
    endian, 4 KiB pages). Every dump holds the same memory state."""

    directory: Path
    memory: str
    """QEMU's ``-m`` ("128M", "4G")."""
    memory_bytes: int
    kernel_release: str
    """``uname -r`` of the guest ("6.1.0-57-amd64"), VMCOREINFO's ``OSRELEASE``."""
    kernel_package_version: str
    """Debian's version of the kernel package ("6.1.192-3")."""
    banner: str
    """The guest's ``/proc/version`` as printed on its console, without the newline: the
    kernel's ``linux_banner`` string ("Linux version 6.1.0-...")."""
    qemu_version: str
    ram: tuple[tuple[int, int], ...]
    """The guest's top-level "System RAM" ranges from /proc/iomem, as [start, end)."""
    init_top_pgt_physical: int
    """Physical address of the kernel's top-level page table (the CR3 of kernel threads),
    from VMCOREINFO ``SYMBOL(init_top_pgt)`` and ``NUMBER(phys_base)``."""
    elf: Path
    """``dump-guest-memory`` as ELF, ``paging=false``: loads at physical addresses (in both
    ``p_vaddr`` and ``p_paddr``), a VMCOREINFO note. QEMU 7.2 puts the section headers
    before the program headers and writes ``e_ehsize`` 8."""
    paging_elf: Path
    """``paging=true``: loads at the virtual addresses of the page tables in use, more than
    65535 program headers (``PN_XNUM``)."""
    kdump_flat: Path
    """``dump-guest-memory`` format ``kdump-zlib``: the flattened layout (``makedumpfile``
    header, then big-endian offset/size records)."""
    kdump_zlib: Path
    """``makedumpfile -R`` of :attr:`kdump_flat`: the standard layout (``KDUMP   ``)."""
    kdump_lzo: Path
    """makedumpfile ``-l -d 0``: every page, LZO."""
    kdump_d31: Path
    """makedumpfile ``-c -d 31``: zlib; zero, cache, user and free pages excluded."""
    lime: Path
    """LiME version 1 of the :attr:`ram` ranges (written from :attr:`elf` by the build)."""
    kallsyms: Path
    """The guest's /proc/kallsyms, read as root under nokaslr: System.map's addresses."""
    vmcoreinfo: Path
    """The VMCOREINFO text of :attr:`elf`'s note."""
    console: Path
    """The serial console (kernel log, the init's ``vmemfs-guest:`` lines)."""
    manifest: Path
    """manifest.json: versions, sizes, timings, QEMU's command line."""

    def info(self) -> dict[str, Any]:
        """The parsed manifest."""
        result: dict[str, Any] = json.loads(self.manifest.read_text())
        return result


_FAILED: dict[str, GuestUnavailable] = {}
"""Memory sizes whose guest cannot be had here: asked once per process, not per test."""


@functools.cache
def _guest(memory: str) -> Guest:
    directory = build(memory)
    manifest = json.loads((directory / "manifest.json").read_text())

    def path(name: str) -> Path:
        return directory / FILES[name]

    return Guest(
        directory=directory,
        memory=manifest["memory"],
        memory_bytes=manifest["memory_bytes"],
        kernel_release=manifest["kernel"]["abi"],
        kernel_package_version=manifest["kernel"]["package_version"],
        banner=manifest["banner"],
        qemu_version=manifest["qemu"]["version"],
        ram=tuple((start, end) for start, end in manifest["ram"]),
        init_top_pgt_physical=manifest["init_top_pgt_physical"],
        elf=path("elf"),
        paging_elf=path("paging_elf"),
        kdump_flat=path("kdump_flat"),
        kdump_zlib=path("kdump_zlib"),
        kdump_lzo=path("kdump_lzo"),
        kdump_d31=path("kdump_d31"),
        lime=path("lime"),
        kallsyms=path("kallsyms"),
        vmcoreinfo=path("vmcoreinfo"),
        console=path("console"),
        manifest=directory / "manifest.json",
    )


def guest(memory: str = "128M") -> Guest:
    """The dumps of the guest with ``memory`` of RAM, built if missing (once per machine,
    under a lock; about a minute at 128M; later calls take a stat, and the same process
    gets the same object).

    :raises GuestUnavailable: if QEMU, its tools or Debian's kernel package cannot be
        installed or run on this machine (tests skip with its message); remembered for
        the rest of the process.
    :raises RuntimeError: if building fails for any other reason.
    :raises ValueError: for a ``memory`` other than a number of MiB or GiB ("128M", "4G").
    """
    memory = parse_memory(memory)[0]
    if memory in _FAILED:
        raise _FAILED[memory]
    try:
        return _guest(memory)
    except GuestUnavailable as error:
        _FAILED[memory] = error
        raise
