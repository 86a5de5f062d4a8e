"""The kernel's virtual view of every physical dump of one real guest against QEMU's own
page-table walk (``dump-guest-memory`` with paging): the same bytes at every kernel page
QEMU dumped where the physical dump holds the page, and holes where QEMU has none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dumpwriters import write_avml, write_kdump
from guestdumps import Guest

import vmemfs
from vmemfs import MemoryMap

KERNEL_HALF = 0xFFFF800000000000
CHUNK = 8 << 20


@pytest.fixture(scope="module")
def written(dumps: Guest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kdump-snappy, kdump-zstd and AVML files of the guest, from its ELF dump."""
    folder = tmp_path_factory.mktemp("written")
    physical = MemoryMap.load(dumps.elf, physical=True)
    try:
        for codec in ("snappy", "zstd"):
            write_kdump(folder / f"guest.kdump-{codec}", physical, compression=codec,
                        vmcoreinfo=physical.vmcoreinfo)
        write_avml(folder / "guest.avml", physical)
    finally:
        physical.close()
    return {"kdump-snappy": folder / "guest.kdump-snappy",
            "kdump-zstd": folder / "guest.kdump-zstd", "avml": folder / "guest.avml"}


@pytest.fixture(scope="module")
def qemu_view(dumps: Guest) -> MemoryMap:
    return vmemfs.open(dumps.paging_elf)


@pytest.fixture(scope="module")
def elf_view(dumps: Guest) -> MemoryMap:
    """The virtual view of the guest's ELF dump: every page the guest's RAM holds."""
    return vmemfs.open(dumps.elf, virtual=True)


def sources(dumps: Guest, written: dict[str, Path]) -> dict[str, tuple[Path, object]]:
    table = dumps.init_top_pgt_physical
    return {"elf": (dumps.elf, True), "kdump-zlib": (dumps.kdump_zlib, True),
            "kdump-zlib-flattened": (dumps.kdump_flat, True),
            "kdump-lzo": (dumps.kdump_lzo, True), "kdump-d31": (dumps.kdump_d31, True),
            "kdump-snappy": (written["kdump-snappy"], True),
            "kdump-zstd": (written["kdump-zstd"], True),
            "lime": (dumps.lime, table), "avml": (written["avml"], table)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["elf", "kdump-zlib", "kdump-zlib-flattened", "kdump-lzo",
                                  "kdump-d31", "kdump-snappy", "kdump-zstd", "lime", "avml"])
def test_every_kernel_page_equals_qemus(dumps: Guest, written: dict[str, Path],
                                        qemu_view: MemoryMap, elf_view: MemoryMap,
                                        kind: str) -> None:
    path, virtual = sources(dumps, written)[kind]
    ours = vmemfs.open(path, virtual=virtual)   # type: ignore[arg-type]
    physical = vmemfs.open(path)
    try:
        compared = 0
        for start, end in qemu_view.extents():
            if start < KERNEL_HALF:
                continue      # QEMU 7.2 gives user pages non-canonical addresses
            for at in range(start, end, CHUNK):
                size = min(CHUNK, end - at)
                theirs = qemu_view.get_bytes(at, size)
                mine = bytearray(size)
                view = memoryview(mine)
                # Page by page: where the physical dump left a page out, ours is a hole.
                done = 0
                while done < size:
                    count = ours.read_into(at + done, view[done:])
                    if count:
                        assert bytes(view[done:done + count]) == \
                            theirs[done:done + count], hex(at + done)
                        compared += count
                        done += count
                        continue
                    hole = at + done
                    # Allowed only where this dump lacks the physical page behind it.
                    pieces = elf_view.pieces(hole, hole + 1)
                    assert pieces, f"{kind}: {hole:#x} is a hole in the ELF dump's view too"
                    assert not physical.is_mapped(pieces[0].offset), \
                        f"{kind}: {hole:#x} (physical {pieces[0].offset:#x}) is a hole"
                    done = min(size, (hole | 0xFFF) + 1 - at)
        assert compared > 100 << 20 if kind != "kdump-d31" else compared > 20 << 20
        # Nothing is mapped in the kernel half that QEMU did not dump.
        for start, _ in ours.extents():
            if start >= KERNEL_HALF:
                assert qemu_view.extent_at(start) is not None, hex(start)
    finally:
        ours.close()
        physical.close()


def test_the_views_agree_on_their_runs(dumps: Guest) -> None:
    elf = vmemfs.open(dumps.elf, virtual=True)
    flat = vmemfs.open(dumps.kdump_flat, virtual=True)
    try:
        assert elf.extents() == flat.extents()
        assert np.array_equal(np.array(elf.notes[2:]), np.array(flat.notes[2:]))
    finally:
        elf.close()
        flat.close()
