"""The kernel virtual view: VMCOREINFO, the top-level table it names (KASLR, phys_base),
the map built from the walk, the physical map as its source, and a 4 GiB guest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pagetable_craft import (
    BANNER,
    BANNER_VIRTUAL,
    GIB1,
    GUEST_RAM,
    KIB4,
    MIB2,
    PRESENT,
    CraftedTables,
    address_pattern,
    craft_tables,
    guest_4gib,
    reference_walk,
)

from vmemfs import FormatError, HoleError, MemoryMap
from vmemfs.formats.pagetables import merge_runs
from vmemfs.formats.virtual import EM_X86_64, build_virtual_map
from vmemfs.formats.vmcoreinfo import (
    START_KERNEL_MAP,
    VmcoreInfo,
    kernel_top_table,
)
from vmemfs.sources import BytesSource
from vmemfs.sources.mapsource import MAP_SOURCE_SIZE, MapSource

# ------------------------------------------------------------------ VMCOREINFO text

KERNEL_OFFSET = 0x2A000000
"""KASLR: the kernel image moved 672 MiB up from its link address."""
TEXT = 0xFFFFFFFF81000000 + KERNEL_OFFSET
"""``_stext`` at run time."""
TOP_PGT = 0xFFFFFFFF82E0A000 + KERNEL_OFFSET
"""``init_top_pgt`` at run time (what ``SYMBOL(init_top_pgt)`` shows)."""
TEXT_PHYSICAL = 0x1000000
"""The image was loaded at physical 16 MiB: below its virtual offset, so phys_base is
"negative" (the kernel prints the unsigned value with %ld)."""
PHYS_BASE = (TEXT_PHYSICAL - (TEXT - START_KERNEL_MAP)) & ((1 << 64) - 1)
TOP_PGT_PHYSICAL = TOP_PGT - TEXT + TEXT_PHYSICAL
DIRECT = 0xFFFF9A2F40000000
"""A randomised ``page_offset_base``."""


def vmcoreinfo_text(*, top_symbol: str = "init_top_pgt", phys_base: str | None = None,
                    l5: int = 0, sme_mask: int = 0, extra: str = "") -> bytes:
    """VMCOREINFO as an x86-64 kernel writes it (a 6.1 kernel, trimmed), NUL padded."""
    if phys_base is None:
        phys_base = f"NUMBER(phys_base)={PHYS_BASE - (1 << 64)}\n"   # %ld of an unsigned
    lines = (
        "OSRELEASE=6.1.0-18-amd64\n"
        "BUILD-ID=5e2b1d3c8f0a4e6b9d7c1a2f3e4d5c6b7a8f9e0d\n"
        "PAGESIZE=4096\n"
        f"SYMBOL(init_uts_ns)={0xFFFFFFFF82A12420 + KERNEL_OFFSET:x}\n"
        "OFFSET(uts_namespace.name)=0\n"
        f"SYMBOL(node_online_map)={0xFFFFFFFF82B17F08 + KERNEL_OFFSET:x}\n"
        f"SYMBOL(swapper_pg_dir)={TOP_PGT:x}\n"
        f"SYMBOL(_stext)={TEXT:x}\n"
        f"SYMBOL(vmap_area_list)={0xFFFFFFFF82A6C0D0 + KERNEL_OFFSET:x}\n"
        "SYMBOL(mem_section)=ffff9a30bffd2000\n"
        "LENGTH(mem_section)=2048\n"
        "SIZE(mem_section)=16\n"
        "OFFSET(mem_section.section_mem_map)=0\n"
        "NUMBER(SECTION_SIZE_BITS)=27\n"
        "NUMBER(MAX_PHYSMEM_BITS)=46\n"
        "SIZE(page)=64\n"
        "SIZE(pglist_data)=174784\n"
        "OFFSET(page.flags)=0\n"
        "OFFSET(page._refcount)=52\n"
        "OFFSET(list_head.next)=0\n"
        "LENGTH(zone.free_area)=11\n"
        "NUMBER(PG_lru)=4\n"
        "NUMBER(PG_head_mask)=65536\n"
        "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n"
        "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257\n"
        f"{phys_base}"
        f"SYMBOL({top_symbol})={TOP_PGT:x}\n"
        f"NUMBER(pgtable_l5_enabled)={l5}\n"
        f"SYMBOL(node_data)={0xFFFFFFFF82B1A920 + KERNEL_OFFSET:x}\n"
        "LENGTH(node_data)=1024\n"
        f"KERNELOFFSET={KERNEL_OFFSET:x}\n"
        "NUMBER(KERNEL_IMAGE_SIZE)=1073741824\n"
        f"NUMBER(sme_mask)={sme_mask}\n"
        f"{extra}"
        "CRASHTIME=1712345678\n"
    )
    return lines.encode() + b"\0" * 7


def test_vmcoreinfo_values_read_with_their_formats() -> None:
    info = VmcoreInfo.parse(vmcoreinfo_text(), name="dump.kdump")
    assert info.osrelease == "6.1.0-18-amd64"
    assert info["BUILD-ID"] == "5e2b1d3c8f0a4e6b9d7c1a2f3e4d5c6b7a8f9e0d"
    assert info.page_size == 4096
    assert info.symbol("init_top_pgt") == TOP_PGT
    assert info.symbol("swapper_pg_dir") == TOP_PGT
    assert info.symbol("_stext") == 0xFFFFFFFF81000000 + KERNEL_OFFSET   # already relocated
    assert info.symbol("nonexistent") is None
    assert info.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129
    assert info.number("phys_base") == PHYS_BASE - (1 << 64)
    assert info.size("page") == 64
    assert info.offset("page._refcount") == 52
    assert info.length("node_data") == 1024
    assert info.kernel_offset == KERNEL_OFFSET
    assert info.crash_time == 1712345678
    assert "CRASHTIME" in info and len(info) == 34
    assert list(info)[:3] == ["OSRELEASE", "BUILD-ID", "PAGESIZE"]


def test_vmcoreinfo_bad_values_are_one_line_errors_naming_the_line() -> None:
    info = VmcoreInfo.parse(b"PAGESIZE=4k\nSYMBOL(init_top_pgt)=-ffff\n"
                            b"KERNELOFFSET=zz\nSYMBOL(big)=1ffffffffffffffff\n",
                            name="dump.elf")
    with pytest.raises(FormatError, match=r"^dump.elf: VMCOREINFO line 1 at offset 0x0: "
                                          r"PAGESIZE='4k' is not a decimal number$"):
        _ = info.page_size
    with pytest.raises(FormatError, match=r"line 2 at offset 0xc:.*hexadecimal"):
        info.symbol("init_top_pgt")
    with pytest.raises(FormatError, match="line 3"):
        _ = info.kernel_offset
    with pytest.raises(FormatError, match="passes 2"):
        info.symbol("big")


def test_vmcoreinfo_first_line_of_a_key_counts_and_junk_is_ignored() -> None:
    info = VmcoreInfo.parse("no equals sign\n=novalue\nA=1\nA=2\r\n\0\0\0")
    assert dict(info) == {"A": "1"}
    assert info.kernel_offset == 0 and info.osrelease is None and info.crash_time is None


def test_top_table_is_the_symbol_minus_start_kernel_map_plus_phys_base() -> None:
    """KASLR: SYMBOL() is already relocated; KERNELOFFSET must not be added again."""
    top = kernel_top_table(VmcoreInfo.parse(vmcoreinfo_text()))
    assert top.symbol == "init_top_pgt" and top.levels == 4
    assert top.phys_base == PHYS_BASE and top.kernel_offset == KERNEL_OFFSET
    assert top.physical_address() == TOP_PGT_PHYSICAL == 0x2E0A000
    assert "already included" in top.describe()


def test_top_table_symbol_fallbacks_and_levels() -> None:
    old = kernel_top_table(VmcoreInfo.parse(
        vmcoreinfo_text(top_symbol="init_level4_pgt").replace(b"SYMBOL(swapper", b"SYMBOL(x")))
    assert old.symbol == "init_level4_pgt"
    generic = VmcoreInfo.parse(b"SYMBOL(swapper_pg_dir)=ffffffff8260a000\n"
                               b"NUMBER(phys_base)=0\nNUMBER(pgtable_l5_enabled)=1\n")
    top = kernel_top_table(generic)
    assert (top.symbol, top.levels, top.physical_address()) == ("swapper_pg_dir", 5, 0x260A000)
    with pytest.raises(FormatError, match="virtual=ADDRESS"):
        kernel_top_table(VmcoreInfo.parse(b"OSRELEASE=6.1\n", name="x.lime"))
    with pytest.raises(FormatError, match="below __START_KERNEL_map"):
        kernel_top_table(VmcoreInfo.parse(b"SYMBOL(init_top_pgt)=ffff888000001000\n"))


# ------------------------------------------------------------------ a KASLR kernel

def kaslr_kernel(*, levels: int = 4, bits: int = 0) -> tuple[MemoryMap, CraftedTables]:
    """A physical map of a small guest: 64 MiB of RAM, a relocated kernel image of 2 MiB
    pages over physical 16 MiB.., a direct map of 2 MiB pages, tables at init_top_pgt's
    physical address; ``bits`` is OR-ed into every present entry (an SME C-bit)."""
    image = [(TEXT + i * MIB2, TEXT_PHYSICAL + i * MIB2, MIB2) for i in range(24)]
    direct = [(DIRECT + i * MIB2, i * MIB2, MIB2) for i in range(32)]
    virtual, physical_addresses, sizes = zip(*image, *direct, strict=True)
    if levels == 5:
        virtual = tuple(v | (0xFF << 56) for v in virtual)
    tables = craft_tables(virtual, physical_addresses, sizes, levels=levels,
                          base=TOP_PGT_PHYSICAL)
    if bits:
        present = (tables.memory & np.uint64(PRESENT)) != 0
        tables.memory[present] |= np.uint64(bits)
    physical = MemoryMap()
    physical.add_bytes(address_pattern(0, 64 << 20), 0)
    tables.add_to(physical)
    banner = BANNER_VIRTUAL + KERNEL_OFFSET
    physical.add_bytes(BANNER, banner - TEXT + TEXT_PHYSICAL)
    return physical, tables


def test_a_kaslr_dump_through_vmcoreinfo() -> None:
    physical, tables = kaslr_kernel()
    view = build_virtual_map(physical, vmcoreinfo=vmcoreinfo_text(), name="guest.kdump")
    assert view.top_table == TOP_PGT_PHYSICAL == tables.top
    assert view.levels == 4
    memmap = view.memmap
    assert memmap.get_string(BANNER_VIRTUAL + KERNEL_OFFSET) == BANNER.rstrip(b"\0")
    assert memmap.get_bytes(TOP_PGT, KIB4) == tables.data()[:KIB4]   # the table maps itself
    assert memmap.read(DIRECT + 0x8, 8) == address_pattern(0x8, 8)
    assert (memmap.wordsize, memmap.endian, memmap.machine) == (64, "little", EM_X86_64)
    assert memmap.follow_pointer(DIRECT) == 0x5A5A5A5A5A5A5A5A
    assert view.leaf_counts == {KIB4: 0, MIB2: 56, GIB1: 0}
    assert view.mapping_count == 2
    assert view.vmcoreinfo is not None and view.vmcoreinfo.kernel_offset == KERNEL_OFFSET
    text = "\n".join(view.describe())
    assert "SYMBOL(init_top_pgt)=ffffffffacc0a000" not in text     # not a wrong sum
    assert f"SYMBOL(init_top_pgt)={TOP_PGT:x}" in text and "4-level" in text
    assert "0 4K + 56 2M + 0 1G pages" in text
    assert "NUMBER(phys_base) -0x2a000000" in text              # as the kernel printed it
    assert view.runs() == [(DIRECT, 0, 64 << 20), (TEXT, TEXT_PHYSICAL, 24 * MIB2)]


def test_kernel_offset_added_twice_would_miss_the_table() -> None:
    """The wrong reading of KASLR names a table outside this dump: an error, not garbage."""
    physical, _ = kaslr_kernel()
    wrong = TOP_PGT_PHYSICAL + KERNEL_OFFSET
    with pytest.raises(FormatError, match=f"{wrong:#x}"):
        build_virtual_map(physical, top_table=wrong)


def test_five_levels_from_vmcoreinfo() -> None:
    physical, tables = kaslr_kernel(levels=5)
    view = build_virtual_map(physical, vmcoreinfo=vmcoreinfo_text(l5=1))
    assert view.levels == 5
    assert view.memmap.get_string(BANNER_VIRTUAL + KERNEL_OFFSET) == BANNER.rstrip(b"\0")
    assert view.to_physical(TOP_PGT) == tables.top


def test_sme_mask_is_cleared_from_every_entry() -> None:
    c_bit = 1 << 47
    physical, _ = kaslr_kernel(bits=c_bit)
    view = build_virtual_map(physical, vmcoreinfo=vmcoreinfo_text(sme_mask=c_bit))
    assert view.memmap.get_string(BANNER_VIRTUAL + KERNEL_OFFSET) == BANNER.rstrip(b"\0")
    assert view.to_physical(DIRECT + 0x1234) == 0x1234
    # the same tables read without the mask point 128 TiB away: nothing there
    unmasked = build_virtual_map(physical, top_table=TOP_PGT_PHYSICAL)
    assert unmasked.mapping_count == 0 and unmasked.missing_tables > 0


def test_top_table_given_wins_and_levels_come_from_vmcoreinfo() -> None:
    physical, tables = kaslr_kernel(levels=5)
    cr3 = tables.top | 0x8000_0000_0000_0001        # no-flush bit and a PCID
    view = build_virtual_map(physical, top_table=cr3,
                             vmcoreinfo=vmcoreinfo_text(top_symbol="x", l5=1))
    assert view.top_table == tables.top and view.levels == 5
    assert f"virtual={cr3:#x}" in view.origin


def test_old_kernel_without_number_phys_base_finds_it() -> None:
    """Before 4.10 VMCOREINFO had SYMBOL(phys_base): the variable, not its value."""
    global_phys_base = 0x1000000
    info = (b"OSRELEASE=4.9.0\nPAGESIZE=4096\nSYMBOL(init_level4_pgt)=ffffffff81e09000\n"
            b"SYMBOL(phys_base)=ffffffff81e10010\n")
    table_physical = 0x1E09000 + global_phys_base
    image = [(0xFFFFFFFF80000000 + i * MIB2, global_phys_base + i * MIB2, MIB2)
             for i in range(16)]
    virtual, physical_addresses, sizes = zip(*image, strict=True)
    tables = craft_tables(virtual, physical_addresses, sizes, base=table_physical)
    physical = MemoryMap()
    physical.add_bytes(bytes(64 << 20), 0)
    tables.add_to(physical)
    # decoys: 0 and 2 MiB also hold "tables" there, but they do not map themselves
    physical.add_bytes(tables.data()[:KIB4], 0x1E09000)
    physical.add_bytes(global_phys_base.to_bytes(8, "little"), 0x1E10010 + global_phys_base)
    view = build_virtual_map(physical, vmcoreinfo=info)
    assert view.top_table == table_physical
    assert "found" in view.origin and "0x1000000" in view.origin
    # without SYMBOL(phys_base) the self-mapping check alone finds it
    alone = build_virtual_map(physical, vmcoreinfo=info.replace(b"SYMBOL(phys_base)", b"X"))
    assert alone.top_table == table_physical
    # and where nothing maps itself, a one-line error
    with pytest.raises(FormatError, match=r"NUMBER\(phys_base\).*virtual=ADDRESS"):
        build_virtual_map(MemoryMap.of_bytes(bytes(8 << 20), 0), vmcoreinfo=info)


def test_without_vmcoreinfo_or_address_the_error_says_give_virtual_address() -> None:
    physical = MemoryMap.of_bytes(bytes(KIB4), 0)
    with pytest.raises(FormatError) as error:
        build_virtual_map(physical, name="memory.lime")
    assert str(error.value) == (
        "memory.lime: no VMCOREINFO to find the kernel's page tables: give virtual=ADDRESS, "
        "the physical address of the top-level page table (the CR3 value)")


def test_a_virtual_address_given_as_cr3_is_refused() -> None:
    physical, _ = kaslr_kernel()
    with pytest.raises(FormatError, match=f"virtual={TOP_PGT:#x} is not a CR3 value"):
        build_virtual_map(physical, top_table=TOP_PGT)
    cr3 = TOP_PGT_PHYSICAL | (0b111 << 61) | 0x18      # no-flush, LAM bits, PWT/PCD: fine
    assert build_virtual_map(physical, top_table=cr3).top_table == TOP_PGT_PHYSICAL


def test_top_table_from_vmcoreinfo_in_a_hole() -> None:
    physical = MemoryMap.of_bytes(bytes(KIB4), 0)
    with pytest.raises(FormatError) as error:
        build_virtual_map(physical, vmcoreinfo=vmcoreinfo_text(), name="small.elf")
    message = str(error.value)
    assert message.startswith("small.elf: top-level page table at physical address 0x2e0a000")
    assert message.endswith("give virtual=ADDRESS (the CR3 value)") and "\n" not in message


# ------------------------------------------------------------------ the map as a source

class LiveBytes(BytesSource):
    volatile = True


def test_map_source_reads_through_the_map_short_at_holes() -> None:
    inner = MemoryMap()
    inner.add_bytes(b"abcdefgh", 0x1000)
    inner.add_bytes(b"ijkl", 0x1008)
    inner.add_bytes(b"XYZ", 0x2000)
    source = MapSource(inner, "inner")
    assert source.size() == MAP_SOURCE_SIZE == (1 << 64) - 1
    buffer = bytearray(32)
    assert source.read_into(0x1004, memoryview(buffer)) == 8    # across two pieces
    assert bytes(buffer[:8]) == b"efghijkl"
    assert source.read_into(0x1800, memoryview(buffer)) == 0
    assert bytes(source.view(0x2001, 10)) == b"YZ" and bytes(source.view(0x1800, 4)) == b""
    assert source.pread(0x1006, 100) == b"ghijkl"
    outer = MemoryMap()
    outer.add_source(source, 0xFFFF800000000000, offset=0x1000, length=0x1003)
    assert outer.read(0xFFFF800000000000, 100) == b"abcdefghijkl"
    assert outer.extents() == [(0xFFFF800000000000, 0xFFFF800000001003)]
    with pytest.raises(HoleError) as error:
        outer.get_bytes(0xFFFF800000000000, 13)
    assert error.value.address == 0xFFFF80000000000C
    assert outer.read(0xFFFF800000001000, 8) == b"XYZ"


def test_map_source_is_volatile_when_its_map_is() -> None:
    inner = MemoryMap.of_bytes(b"x", 0)
    source = MapSource(inner)
    assert not source.volatile
    inner.add_source(LiveBytes(b"live"), 0x10)
    assert source.volatile
    outer = MemoryMap()
    outer.add_source(source, 0, length=0x20)
    assert outer.volatile
    with pytest.raises(AttributeError):
        source.volatile = False


def test_map_source_views_a_file_without_copying(tmp_path: Path) -> None:
    path = tmp_path / "physical.raw"
    path.write_bytes(address_pattern(0, 0x10000))
    physical = MemoryMap.of_file(path, 0x100000)
    source = MapSource(physical)
    view = source.view(0x100008, 16)
    assert isinstance(view, memoryview) and view.readonly
    assert bytes(view) == address_pattern(8, 16)
    source.close()   # not its map: the source does not own it
    assert physical.read(0x100000, 8) == address_pattern(0, 8)
    MapSource(physical, owner=True).close()
    assert physical.file_names() == [str(path)]
    with pytest.raises(OSError):
        physical.read(0x100000, 8)   # its file is closed


def test_the_virtual_map_owns_the_physical_map(tmp_path: Path) -> None:
    physical, _ = kaslr_kernel()
    physical.add_bytes(bytes(KIB4), 0x8000000)                        # an empty table
    path = tmp_path / "physical.core"
    physical.save(path)
    loaded = MemoryMap.load(path)
    empty = build_virtual_map(loaded, top_table=0x8000000)             # maps nothing
    assert empty.mapping_count == 0
    empty.memmap.close()
    view = build_virtual_map(loaded, vmcoreinfo=vmcoreinfo_text())   # loaded still open
    assert view.memmap.get_string(BANNER_VIRTUAL + KERNEL_OFFSET) == BANNER.rstrip(b"\0")
    assert view.mapping_count == 2
    view.memmap.close()
    with pytest.raises(OSError):
        loaded.read(0, 8)


def test_virtual_view_saves_as_an_elf_core_with_virtual_addresses(tmp_path: Path) -> None:
    physical, _ = kaslr_kernel()
    view = build_virtual_map(physical, vmcoreinfo=vmcoreinfo_text())
    core = tmp_path / "virtual.core"
    view.memmap.save(core)
    loaded = MemoryMap.load(core)
    assert loaded.extents() == view.memmap.extents()
    assert (loaded.wordsize, loaded.endian, loaded.machine) == (64, "little", EM_X86_64)
    for start, end in loaded.extents():
        for address in range(start, end, 0x3F000):
            assert loaded.read(address, 512) == view.memmap.read(address, 512)


def test_mappings_name_the_physical_map_and_offsets_are_physical() -> None:
    physical, _ = kaslr_kernel()
    view = build_virtual_map(physical, vmcoreinfo=vmcoreinfo_text(), name="guest.kdump")
    lines = [str(mapping) for mapping in view.memmap.mappings]
    assert lines == [
        f"{DIRECT:#018x}-{DIRECT + (64 << 20):#018x} page physical:guest.kdump offset=0x0 "
        "length=0x4000000",
        f"{TEXT:#018x}-{TEXT + 24 * MIB2:#018x} page physical:guest.kdump "
        f"offset={TEXT_PHYSICAL:#x} length=0x3000000",
    ]


# ------------------------------------------------------------------ a 4 GiB guest

def naive_runs(physical: MemoryMap, top: int) -> list[tuple[int, int, int]]:
    """The reference walker's leaves, merged and clipped to RAM with plain Python."""
    runs: list[list[int]] = []
    for virtual, physical_address, size in sorted(reference_walk(physical, top)):
        if runs and runs[-1][0] + runs[-1][2] == virtual and \
                runs[-1][1] + runs[-1][2] == physical_address:
            runs[-1][2] += size
        else:
            runs.append([virtual, physical_address, size])
    clipped = []
    for virtual, physical_address, size in runs:
        for start, end in physical.extents():
            low, high = max(start, physical_address), min(end, physical_address + size)
            if low < high:
                clipped.append((virtual + low - physical_address, low, high - low))
    return clipped


@pytest.mark.parametrize("direct_map_size", [GIB1, KIB4], ids=["gbpages", "4K-pages"])
def test_a_4gib_guest(tmp_path: Path, direct_map_size: int) -> None:
    guest = guest_4gib(tmp_path, direct_map_size=direct_map_size)
    physical = guest.physical_map()
    view = build_virtual_map(physical, top_table=guest.tables.top)
    assert sum(view.leaf_counts.values()) == guest.leaves
    assert view.tables_read == len(guest.tables.memory)
    ram = sum(end - start for start, end in GUEST_RAM)
    expected = naive_runs(physical, guest.tables.top)
    assert list(zip(view.virtual_starts.tolist(), view.physical_starts.tolist(),
                    view.lengths.tolist(), strict=True)) == expected
    assert view.mapping_count == 20517          # 3 direct-map runs, the image, vmemmap, and
    assert view.mapped_bytes > ram              # 20,512 scattered vmalloc and module pages
    memmap = view.memmap
    assert memmap.get_string(BANNER_VIRTUAL) == BANNER.rstrip(b"\0")
    direct = 0xFFFF888000000000
    assert memmap.extent_at(direct) == (direct, direct + 0x9F000)
    assert memmap.extent_at(direct + 0x100000) == (direct + 0x100000, direct + 0xC0000000)
    assert not memmap.is_mapped(direct + 0xC0000000)           # the PCI hole
    assert memmap.get_bytes(direct + 0x7000000, 8) == guest.tables.data()[:8]


# ------------------------------------------------------------------ a real QEMU guest

@pytest.fixture(scope="module")
def real_guest() -> Any:
    """The dumps of a QEMU guest running Debian's kernel (``guestdumps``), where they can
    be had."""
    guestdumps = pytest.importorskip("guestdumps")
    try:
        return guestdumps.guest()
    except guestdumps.GuestUnavailable as error:
        pytest.skip(str(error))


def elf_load_runs(path: Path) -> list[tuple[int, int, int]]:
    """``(p_vaddr, p_paddr, p_memsz)`` of an ELF64 file's loads, merged where contiguous
    in both (``PN_XNUM`` counts read from section header 0)."""
    with open(path, "rb") as file:
        header = file.read(64)
        phoff, shoff = int.from_bytes(header[32:40], "little"), int.from_bytes(
            header[40:48], "little")
        count = int.from_bytes(header[56:58], "little")
        if count == 0xFFFF:
            file.seek(shoff)
            count = int.from_bytes(file.read(64)[44:48], "little")
        file.seek(phoff)
        table = file.read(56 * count)
    headers = np.frombuffer(table, dtype=np.dtype([
        ("type", "<u4"), ("flags", "<u4"), ("offset", "<u8"), ("vaddr", "<u8"),
        ("paddr", "<u8"), ("filesz", "<u8"), ("memsz", "<u8"), ("align", "<u8")]))
    loads = headers[headers["type"] == 1]
    order = np.argsort(loads["vaddr"], kind="stable")
    virtual, physical, lengths = merge_runs(
        loads["vaddr"][order].astype(np.uint64), loads["paddr"][order].astype(np.uint64),
        loads["memsz"][order].astype(np.uint64))
    return list(zip(virtual.tolist(), physical.tolist(), lengths.tolist(), strict=True))


def test_real_guest_matches_qemus_own_page_table_walk(real_guest: Any) -> None:
    """QEMU's ``dump-guest-memory paging=true`` walked the CR3 in use (a process's: the
    kernel half is init_top_pgt's); the kernel half of its loads is our view, run by run."""
    physical = MemoryMap()
    physical.add_elf(real_guest.elf, physical=True)
    view = build_virtual_map(physical, vmcoreinfo=real_guest.vmcoreinfo.read_bytes())
    assert view.top_table == real_guest.init_top_pgt_physical
    qemu = [run for run in elf_load_runs(real_guest.paging_elf)
            if run[0] >= 0xFFFF800000000000]
    assert view.runs() == qemu
    symbols: dict[str, int] = {}
    for line in real_guest.kallsyms.read_text().splitlines():
        address, _, name = line.split()[:3]
        symbols.setdefault(name, int(address, 16))
    assert view.vmcoreinfo is not None
    banner = view.memmap.get_string(symbols["linux_banner"] + view.vmcoreinfo.kernel_offset)
    assert banner.decode().rstrip("\n") == real_guest.banner


def test_real_guest_through_compressed_dumps(real_guest: Any) -> None:
    """The same tables read through kdump files (pages decompressed on demand): the same
    runs as through the ELF; where makedumpfile left pages out (-d 31), those are holes."""
    from vmemfs.formats.kdump import open_kdump

    elf = MemoryMap()
    elf.add_elf(real_guest.elf, physical=True)
    expected = build_virtual_map(elf, vmcoreinfo=real_guest.vmcoreinfo.read_bytes())
    for path in (real_guest.kdump_zlib, real_guest.kdump_flat, real_guest.kdump_d31):
        dump = open_kdump(path)
        physical = MemoryMap()
        dump.add_to(physical)
        view = build_virtual_map(physical, vmcoreinfo=dump.vmcoreinfo)
        assert view.top_table == real_guest.init_top_pgt_physical
        if path == real_guest.kdump_d31:
            assert view.mapped_bytes < expected.mapped_bytes
            for virtual, physical_address, length in view.runs()[::97]:
                assert expected.to_physical(virtual) == physical_address
                assert expected.to_physical(virtual + length - 1) == \
                    physical_address + length - 1
        else:
            assert view.runs() == expected.runs()
        assert view.memmap.get_bytes(0xFFFFFFFF81000000, 4096) == \
            expected.memmap.get_bytes(0xFFFFFFFF81000000, 4096)
