"""The x86-64 page-table walk, checked page by page against a naive recursive walker.

Tables are crafted with numpy (``pagetable_craft``) in a physical map of bytes, then
poked to hold what real tables hold besides addresses: NX and software bits, the PAT bit
of large pages, non-present garbage, tables outside the dump, loops.
"""

from __future__ import annotations

import numpy as np
import pytest
from pagetable_craft import (
    ADDRESS_BITS,
    GIB1,
    KIB4,
    MIB2,
    NX,
    PAT_LARGE,
    PRESENT,
    PS,
    SOFTWARE_BITS,
    TABLE_FLAGS,
    WRITABLE,
    CraftedTables,
    address_pattern,
    craft_tables,
    level_shift,
    reference_walk,
)

from vmemfs import FormatError, MemoryMap
from vmemfs.formats.pagetables import (
    canonical,
    clip_runs,
    merge_runs,
    table_address,
    translate,
    walk_page_tables,
)
from vmemfs.formats.virtual import VirtualView, build_virtual_map

U64 = np.uint64
TOP = (1 << 64) - 1


def u64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def reference_pages(physical: MemoryMap, top: int,
                    levels: int) -> dict[int, tuple[int, bytes]]:
    """Virtual page -> (physical page, its bytes) for every leaf page the physical map holds."""
    pages: dict[int, tuple[int, bytes]] = {}
    extents = physical.extents()
    for virtual, physical_address, size in reference_walk(physical, top, levels):
        for start, end in extents:  # only the pages of the leaf that the dump holds
            low, high = max(start, physical_address), min(end, physical_address + size)
            for page in range(low - low % KIB4, high, KIB4):
                data = physical.read(page, KIB4)
                if data:
                    pages[virtual + page - physical_address] = (page, data)
    return pages


def coalesce(pages: dict[int, tuple[int, bytes]]) -> list[tuple[int, int]]:
    extents: list[tuple[int, int]] = []
    for address in sorted(pages):
        end = address + len(pages[address][1])
        if extents and extents[-1][1] == address:
            extents[-1] = (extents[-1][0], end)
        else:
            extents.append((address, end))
    return extents


def assert_matches_reference(physical: MemoryMap, view: VirtualView) -> None:
    """Every virtual page reads the bytes the naive walker says; nothing else is mapped."""
    pages = reference_pages(physical, view.top_table, view.levels)
    virtual = view.memmap
    for number, (address, (physical_address, data)) in enumerate(pages.items()):
        assert virtual.read(address, KIB4) == data, hex(address)
        assert view.to_physical(address) == physical_address, hex(address)
        if number % 8 == 0:  # the one-address walk too, on a sample
            assert translate(physical, view.top_table, address + 0x123,
                             levels=view.levels) == physical_address + 0x123
    assert virtual.extents() == coalesce(pages)


def physical_with(tables: CraftedTables,
                  ram: tuple[tuple[int, int], ...] = ((0, 0x1000000),)) -> MemoryMap:
    physical = MemoryMap()
    for start, end in ram:
        physical.add_bytes(address_pattern(start, end - start), start)
    tables.add_to(physical)
    return physical


def mapping_lengths(view: VirtualView) -> list[tuple[int, int]]:
    return list(zip(view.virtual_starts.tolist(), view.lengths.tolist(), strict=True))


# ------------------------------------------------------------------ runs: merge and clip

def test_merge_runs_joins_only_virtually_and_physically_contiguous_runs() -> None:
    #  virtual  |a--|b--|   |c--|d--|
    #  physical |a--|b--|   |d--|c--|   a+b merge; c, d touch virtually only
    virtual, physical, lengths = merge_runs(
        u64(0x1000, 0x2000, 0x5000, 0x6000), u64(0x10000, 0x11000, 0x21000, 0x20000),
        u64(0x1000, 0x1000, 0x1000, 0x1000))
    assert virtual.tolist() == [0x1000, 0x5000, 0x6000]
    assert physical.tolist() == [0x10000, 0x21000, 0x20000]
    assert lengths.tolist() == [0x2000, 0x1000, 0x1000]


def test_merge_runs_reaches_the_top_of_the_address_space() -> None:
    virtual, physical, lengths = merge_runs(
        u64(TOP + 1 - 0x2000, TOP + 1 - 0x1000), u64(0x3000, 0x4000), u64(0x1000, 0x1000))
    assert (virtual.tolist(), physical.tolist(), lengths.tolist()) == (
        [TOP + 1 - 0x2000], [0x3000], [0x2000])


def test_clip_runs_splits_a_run_over_holes_of_the_physical_map() -> None:
    #  physical  0x0      0x4000      0x8000   0xa000    0x10000
    #  extents   |---------|            |--------|
    #  run        |------------------------------------------|   -> two pieces
    virtual, physical, lengths = clip_runs(
        u64(0xFFFF800000000000), u64(0x1000), u64(0xF000),
        u64(0x0, 0x8000), u64(0x3FFF, 0x9FFF))
    assert virtual.tolist() == [0xFFFF800000000000, 0xFFFF800000007000]
    assert physical.tolist() == [0x1000, 0x8000]
    assert lengths.tolist() == [0x3000, 0x2000]


def test_clip_runs_drops_runs_in_holes_and_keeps_order() -> None:
    virtual, physical, lengths = clip_runs(
        u64(0x1000, 0x9000, 0x20000), u64(0x50000, 0x0, 0x2000), u64(0x1000, 0x2000, 0x1000),
        u64(0x0, 0x2000), u64(0x0FFF, 0x2FFF))
    assert virtual.tolist() == [0x9000, 0x20000]
    assert physical.tolist() == [0x0, 0x2000]
    assert lengths.tolist() == [0x1000, 0x1000]


def test_clip_runs_with_an_extent_reaching_2_to_the_64() -> None:
    virtual, physical, lengths = clip_runs(
        u64(0x1000), u64(TOP + 1 - 0x1000), u64(0x1000), u64(TOP + 1 - 0x800), u64(TOP))
    assert (virtual.tolist(), physical.tolist(), lengths.tolist()) == (
        [0x1800], [TOP + 1 - 0x800], [0x800])


def test_canonical_and_table_address() -> None:
    assert canonical(0x0000_8000_0000_0000) == 0xFFFF_8000_0000_0000
    assert canonical(0x0000_7FFF_FFFF_F000) == 0x0000_7FFF_FFFF_F000
    assert canonical(0x0100_0000_0000_0000, 5) == 0xFF00_0000_0000_0000
    assert canonical(0x0000_8000_0000_0000, 5) == 0x0000_8000_0000_0000
    assert table_address(0x8000_0000_1234_5ABC) == 0x1234_5000
    assert table_address(0x7FF0_0000_0260_A001) == 0x260_A000


# ------------------------------------------------------------------ a 4-level kernel

DIRECT = 0xFFFF888000000000
TEXT = 0xFFFFFFFF81000000
VMALLOC = 0xFFFFC90000000000
GIGA = 0xFFFF880040000000


def four_level_tables() -> CraftedTables:
    leaves: list[tuple[int, int, int]] = []
    leaves += [(DIRECT + i * MIB2, i * MIB2, MIB2) for i in range(8)]           # 1 run
    leaves += [(TEXT + i * KIB4, 0x200000 + i * KIB4, KIB4) for i in range(16)]  # 1 run
    leaves += [(VMALLOC + i * KIB4, 0x800000 - (i + 1) * KIB4, KIB4)             # 8 runs
               for i in range(8)]
    leaves += [(GIGA, GIB1, GIB1)]                                # over 8 KiB of RAM only
    leaves += [(0x400000 + i * KIB4, 0x100000 + i * KIB4, KIB4) for i in range(4)]  # 1 run
    leaves += [(0x00007FFFFFFFF000, 0x300000, KIB4),              # the two halves' edges:
               (0xFFFF800000000000, 0x301000, KIB4)]              # contiguous, 2 runs
    leaves += [(0xFFFFFFFFFFFFF000, 0x302000, KIB4)]              # the last page: 1 run
    leaves += [(VMALLOC + 0x100000, 0x2000000, KIB4)]             # a hole of the dump
    virtual, physical, sizes = zip(*leaves, strict=True)
    tables = craft_tables(virtual, physical, sizes)

    # the first 2 MiB leaf: PAT, NX and software bits (address bits 21..51 only)
    pd = tables.path(DIRECT, 2)
    tables.set_entry(pd, 0, tables.entry(pd, 0) | PAT_LARGE | NX | SOFTWARE_BITS)
    # NX and software bits on a top-level entry and on 4 KiB leaves
    index = (DIRECT >> 39) & 511
    tables.set_entry(tables.top, index, tables.entry(tables.top, index) | NX | (1 << 58))
    pt = tables.path(TEXT, 1)
    for i in range(16):  # and bit 7, which is PAT (not PS) in a 4 KiB leaf
        tables.set_entry(pt, i, tables.entry(pt, i) | NX | (0x55 << 52) | (PS * (i % 2)))
    # non-present garbage, at the leaf and the top level
    rng = np.random.default_rng(1)
    for i in range(100, 120):
        tables.set_entry(pt, i, int(rng.integers(0, 1 << 63)) & ~PRESENT)
    tables.set_entry(tables.top, 5, 0xFFFF_FFFF_FFFF_FFFE)
    # a lower table outside the dump, and a reserved PS at the top level
    tables.set_entry(tables.top, 300, 0x70_0000_0000 | TABLE_FLAGS)
    tables.set_entry(tables.top, 400, 0x1000 | PRESENT | WRITABLE | PS)
    return tables


FOUR_LEVEL_RAM = ((0, 0x1000000), (GIB1 + 0x1000, GIB1 + 0x3000))


def test_four_level_walk_matches_the_reference_page_by_page() -> None:
    tables = four_level_tables()
    physical = physical_with(tables, FOUR_LEVEL_RAM)
    view = build_virtual_map(physical, top_table=tables.top)
    assert_matches_reference(physical, view)
    assert view.levels == 4
    assert view.leaf_counts == {KIB4: 16 + 8 + 4 + 2 + 1 + 1, MIB2: 8, GIB1: 1}
    assert view.mapping_count == 15
    assert view.missing_tables == 1 and view.first_missing_table == 0x70_0000_0000
    assert view.reserved_entries == 1
    assert view.hole_bytes == GIB1 - 0x2000 + KIB4


def test_contiguous_leaves_merge_and_others_do_not() -> None:
    tables = four_level_tables()
    view = build_virtual_map(physical_with(tables, FOUR_LEVEL_RAM), top_table=tables.top)
    runs = mapping_lengths(view)
    assert (DIRECT, 8 * MIB2) in runs            # eight 2 MiB leaves, one with PAT set
    assert (TEXT, 16 * KIB4) in runs             # sixteen 4 KiB leaves with NX set
    assert [run for run in runs if VMALLOC <= run[0] < VMALLOC + 0x100000] == [
        (VMALLOC + i * KIB4, KIB4) for i in range(8)]
    assert (0x00007FFFFFFFF000, KIB4) in runs and (0xFFFF800000000000, KIB4) in runs
    assert (0xFFFFFFFFFFFFF000, KIB4) in runs
    assert (GIGA + 0x1000, 0x2000) in runs       # the 1 GiB leaf, clipped to the RAM
    memmap = view.memmap
    assert memmap.read(0xFFFFFFFFFFFFF000, 8) == address_pattern(0x302000, 8)
    assert not memmap.is_mapped(VMALLOC + 0x100000)          # its page is a hole


def test_masked_bits_do_not_leak_into_physical_addresses() -> None:
    tables = four_level_tables()
    physical = physical_with(tables, FOUR_LEVEL_RAM)
    view = build_virtual_map(physical, top_table=tables.top)
    # the 2 MiB leaf with PAT (bit 12), NX and bits 52..62 still maps physical 0
    assert view.to_physical(DIRECT) == 0
    assert view.memmap.read(DIRECT + 0x10, 8) == address_pattern(0x10, 8)
    assert view.to_physical(TEXT + 0x1008) == 0x201008


def test_five_level_walk_matches_the_reference() -> None:
    direct5 = 0xFF11000000000000
    leaves = [(direct5 + i * MIB2, i * MIB2, MIB2) for i in range(4)]
    leaves += [(0x00FFFFFFFFFFF000, 0x300000, KIB4), (0xFF00000000000000, 0x301000, KIB4)]
    leaves += [(0xFF20000000000000, 0, GIB1)]
    leaves += [(TEXT + i * KIB4, 0x200000 + i * KIB4, KIB4) for i in range(8)]
    virtual, physical_addresses, sizes = zip(*leaves, strict=True)
    tables = craft_tables(virtual, physical_addresses, sizes, levels=5)
    physical = physical_with(tables)
    view = build_virtual_map(physical, top_table=tables.top, levels=5)
    assert_matches_reference(physical, view)
    assert view.levels == 5
    assert view.leaf_counts == {KIB4: 10, MIB2: 4, GIB1: 1}
    runs = mapping_lengths(view)
    assert (direct5, 4 * MIB2) in runs
    assert (0x00FFFFFFFFFFF000, KIB4) in runs and (0xFF00000000000000, KIB4) in runs
    assert (0xFF20000000000000, 0x1000000) in runs
    # read as 4 levels, the same tables mean something else: they are not the same map
    four = build_virtual_map(physical, top_table=tables.top, levels=4)
    assert four.memmap.extents() != view.memmap.extents()


@pytest.mark.parametrize("seed", range(6))
def test_random_tables_match_the_reference(seed: int) -> None:
    """Random leaves of all sizes, random masked bits, random garbage entries."""
    rng = np.random.default_rng(seed)
    levels = 5 if seed % 2 else 4
    width = level_shift(levels + 1)
    slots = rng.choice(1 << (width - 30), 24, replace=False)   # distinct 1 GiB slots
    leaves: list[tuple[int, int, int]] = []
    for slot in slots.tolist():
        base = canonical(slot << 30, levels)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            leaves.append((base, int(rng.integers(0, 2)) * GIB1, GIB1))
        elif kind == 1:
            for i in rng.choice(512, 6, replace=False).tolist():
                leaves.append((base + i * MIB2, int(rng.integers(0, 16)) * MIB2, MIB2))
        else:
            start = int(rng.integers(0, 8000))
            for i in range(int(rng.integers(1, 40))):
                frame = start + i if rng.random() < 0.8 else int(rng.integers(0, 8192))
                leaves.append((base + i * KIB4, frame * KIB4, KIB4))
    virtual, physical_addresses, sizes = zip(*leaves, strict=True)
    tables = craft_tables(virtual, physical_addresses, sizes, levels=levels)
    # random NX/software/PAT bits on present entries, garbage in non-present ones
    memory = tables.memory
    present = (memory & U64(PRESENT)) != 0
    noise = rng.integers(0, 1 << 11, size=memory.shape).astype(np.uint64) << U64(52)
    noise |= rng.integers(0, 2, size=memory.shape).astype(np.uint64) << U64(63)
    memory[present] |= noise[present]
    garbage = rng.integers(0, 1 << 62, size=memory.shape).astype(np.uint64) << U64(1)
    holes = ~present & (rng.random(memory.shape) < 0.05)
    memory[holes] = garbage[holes]
    physical = physical_with(tables, ((0, 0x400000), (0x600000, 0xC00000),
                                      (GIB1, GIB1 + 0x40000)))
    view = build_virtual_map(physical, top_table=tables.top, levels=levels)
    assert_matches_reference(physical, view)
    assert sum(view.leaf_counts.values()) == len(leaves)


# ------------------------------------------------------------------ errors, not hangs

def test_top_table_outside_the_dump_is_a_one_line_error() -> None:
    physical = MemoryMap.of_bytes(bytes(0x10000), 0)
    with pytest.raises(FormatError) as error:
        build_virtual_map(physical, top_table=0x12345000)
    message = str(error.value)
    assert "0x12345000" in message and "virtual=ADDRESS" in message
    assert "\n" not in message


def test_a_top_table_across_a_hole_is_an_error() -> None:
    physical = MemoryMap.of_bytes(bytes(0x800), 0x10000)
    with pytest.raises(FormatError, match="0x10000"):
        walk_page_tables(physical, 0x10000)


def test_lower_table_outside_the_dump_maps_nothing_and_is_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    tables = craft_tables([TEXT], [0x200000], [KIB4])
    tables.set_entry(tables.top, 3, 0x9_0000_0000 | TABLE_FLAGS)
    tables.set_entry(tables.top, 4, 0xA_0000_0000 | TABLE_FLAGS)
    physical = physical_with(tables)
    view = build_virtual_map(physical, top_table=tables.top)
    assert view.missing_tables == 2 and view.first_missing_table == 0x9_0000_0000
    assert view.memmap.extents() == [(TEXT, TEXT + KIB4)]
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "2 page tables" in warnings[0].getMessage()
    assert any("outside the physical map" in line for line in view.describe())


def test_a_table_referencing_itself_once_is_walked_as_the_mmu_would() -> None:
    """A recursive slot: top entry 0 points at the top table itself."""
    tables = craft_tables([TEXT], [0x200000], [KIB4])
    tables.set_entry(tables.top, 0, tables.top | TABLE_FLAGS)
    physical = physical_with(tables)
    view = build_virtual_map(physical, top_table=tables.top)
    assert_matches_reference(physical, view)
    # virtual 0 goes 0 -> 0 -> 0 -> 0 back into the top table: it maps that page
    assert view.to_physical(0) == tables.top
    assert view.memmap.read(0, KIB4) == tables.data()[:KIB4]


def test_tables_shared_by_many_entries_map_their_pages_at_every_address() -> None:
    """As KASAN's early shadow: many entries share one lower table (and one page)."""
    shadow = 0xFFFFEC0000000000
    leaves = [(shadow + i * KIB4, 0x400000, KIB4) for i in range(512)]    # one zero page
    leaves += [(TEXT + i * KIB4, 0x200000 + i * KIB4, KIB4) for i in range(3)]
    virtual, physical_addresses, sizes = zip(*leaves, strict=True)
    tables = craft_tables(virtual, physical_addresses, sizes)
    pd = tables.path(shadow, 2)
    pt = tables.path(shadow, 1)
    for index in range(1, 40):                     # 40 PD entries share the PT ...
        tables.set_entry(pd, index, pt | TABLE_FLAGS)
    pdpt = tables.path(shadow, 3)
    for index in range(1, 6):                      # ... and 6 PDPT entries share the PD
        tables.set_entry(pdpt, index, pd | TABLE_FLAGS)
    physical = physical_with(tables)
    view = build_virtual_map(physical, top_table=tables.top)
    assert_matches_reference(physical, view)
    assert view.leaf_counts[KIB4] == 6 * 40 * 512 + 3
    assert view.tables_read == 1 + 2 + 1 + 6 + 6 * 40 + 1
    assert view.mapping_count == 6 * 40 * 512 + 1  # the same page again and again: no merge


def test_tables_that_loop_everywhere_stop_with_a_one_line_error() -> None:
    page = np.full(512, 0x10000 | TABLE_FLAGS, dtype=np.uint64)    # every entry: itself
    physical = MemoryMap.of_bytes(page.astype("<u8").tobytes(), 0x10000)
    with pytest.raises(FormatError) as error:
        build_virtual_map(physical, top_table=0x10000)
    message = str(error.value)
    assert "table visits" in message and "\n" not in message


def test_tables_that_loop_stop_at_a_small_bound_too() -> None:
    page = np.full(512, 0x10000 | TABLE_FLAGS, dtype=np.uint64)
    physical = MemoryMap.of_bytes(page.astype("<u8").tobytes(), 0x10000)
    with pytest.raises(FormatError, match="more than 1000 table visits"):
        walk_page_tables(physical, 0x10000, max_tables=1000)


def test_a_random_bytes_cr3_gives_a_small_map_quickly() -> None:
    rng = np.random.default_rng(7)
    physical = MemoryMap.of_bytes(rng.bytes(16 << 20), 0)
    view = build_virtual_map(physical, top_table=0x123000)
    # random entries name addresses far outside 16 MiB: almost every table is missing
    assert view.tables_read < 2000
    assert view.mapping_count < 1000
    assert view.reserved_entries > 0 and view.missing_tables > 0
    assert_matches_reference(physical, view)


def test_random_entries_pointing_inside_the_dump_are_bounded() -> None:
    """Garbage whose addresses all fall inside the map: the fan-out is cut by the bound."""
    rng = np.random.default_rng(8)
    entries = rng.integers(0, 1 << 12, size=(4096, 512), dtype=np.uint64) << U64(12)
    entries |= U64(PRESENT | WRITABLE)
    physical = MemoryMap.of_bytes(entries.astype("<u8").tobytes(), 0)
    with pytest.raises(FormatError, match="table visits"):
        walk_page_tables(physical, 0, max_tables=100_000)


def test_entries_over_a_hole_mask_and_translate() -> None:
    tables = craft_tables([TEXT], [0x200000], [KIB4])
    physical = physical_with(tables)
    assert translate(physical, tables.top, TEXT + 0x123) == 0x200123
    assert translate(physical, tables.top, TEXT + KIB4) is None
    assert translate(physical, 0x7_0000_0000, TEXT) is None


def test_walk_rejects_unaligned_tables_and_wrong_levels() -> None:
    physical = MemoryMap.of_bytes(bytes(KIB4), 0)
    with pytest.raises(ValueError, match="4 or 5"):
        walk_page_tables(physical, 0, levels=3)
    with pytest.raises(ValueError, match="aligned"):
        walk_page_tables(physical, 0x10)


def test_address_bits_are_12_to_51() -> None:
    assert ADDRESS_BITS == sum(1 << bit for bit in range(12, 52))
