"""Crafted x86-64 page tables for the tests: built with numpy from a list of leaves.

:func:`craft_tables` lays out every table a set of leaves needs (4 or 5 levels, 4 KiB,
2 MiB and 1 GiB leaves) in one block of physical memory; tests then poke single entries
(:meth:`CraftedTables.set_entry`) to add what a builder would never write: NX and
software bits, non-present garbage, tables outside the dump, loops.  :func:`reference_walk`
is the naive recursive walker the vectorised one is checked against.  :func:`guest_4gib`
writes a sparse physical dump of a 4 GiB guest for the scale test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmemfs import MemoryMap

PRESENT = 0x1
WRITABLE = 0x2
ACCESSED = 0x20
DIRTY = 0x40
PS = 0x80
GLOBAL = 0x100
PAT_LARGE = 0x1000
NX = 1 << 63
SOFTWARE_BITS = 0x7FF0_0000_0000_0000
"""Bits 52..62: ignored by the MMU (software use, protection keys)."""
ADDRESS_BITS = 0x000F_FFFF_FFFF_F000
KIB4, MIB2, GIB1 = 1 << 12, 1 << 21, 1 << 30
LEAF_LEVEL = {KIB4: 1, MIB2: 2, GIB1: 3}
TABLE_FLAGS = PRESENT | WRITABLE | ACCESSED
LEAF_FLAGS = PRESENT | WRITABLE | ACCESSED | DIRTY | GLOBAL


def level_shift(level: int) -> int:
    return 12 + 9 * (level - 1)


@dataclass
class CraftedTables:
    """Page tables in one block of physical memory from ``base``, one row per table."""

    levels: int
    base: int
    memory: np.ndarray
    """``(tables, 512)`` ``uint64``: the table at ``base + 4096 * row``."""

    @property
    def top(self) -> int:
        """Physical address of the top-level table (the first one)."""
        return self.base

    @property
    def end(self) -> int:
        return self.base + 4096 * len(self.memory)

    def table(self, address: int) -> np.ndarray:
        """The 512 entries of the table at ``address`` (a view: writes go in)."""
        row, rest = divmod(address - self.base, 4096)
        assert rest == 0 and 0 <= row < len(self.memory), hex(address)
        entries: np.ndarray = self.memory[row]
        return entries

    def entry(self, table: int, index: int) -> int:
        return int(self.table(table)[index])

    def set_entry(self, table: int, index: int, value: int) -> None:
        self.table(table)[index] = np.uint64(value)

    def new_table(self) -> int:
        """Append an empty table; its physical address."""
        self.memory = np.concatenate((self.memory, np.zeros((1, 512), dtype=np.uint64)))
        return self.end - 4096

    def path(self, virtual: int, level: int) -> int:
        """The address of the level-``level`` table on ``virtual``'s path."""
        table = self.top
        for current in range(self.levels, level, -1):
            entry = self.entry(table, (virtual >> level_shift(current)) & 511)
            table = entry & ADDRESS_BITS
        return table

    def data(self) -> bytes:
        return self.memory.astype("<u8").tobytes()

    def add_to(self, memmap: MemoryMap) -> None:
        """Map the tables' bytes at their physical addresses."""
        memmap.add_bytes(self.data(), self.base)


def as_u64(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Integers (Python ints up to 2**64 too) as a ``uint64`` array."""
    if isinstance(values, np.ndarray):
        return values.astype(np.uint64)
    return np.array([int(value) for value in values], dtype=np.uint64)


def craft_tables(virtual: Sequence[int] | np.ndarray, physical: Sequence[int] | np.ndarray,
                 sizes: Sequence[int] | np.ndarray, *, levels: int = 4, base: int = 0x4000000,
                 flags: int = LEAF_FLAGS) -> CraftedTables:
    """Tables mapping leaf ``i`` (``sizes[i]``: 4K, 2M or 1G) at ``virtual[i]`` to ``physical[i]``.

    Virtual addresses may be canonical (sign-extended); leaves must not overlap.
    Tables are allocated from ``base`` on, the top-level one first, level by level.
    """
    width = level_shift(levels + 1)
    v = as_u64(virtual) & np.uint64((1 << width) - 1)
    p = as_u64(physical)
    s = np.asarray(sizes, dtype=np.uint64)
    leaf_level = np.select([s == KIB4, s == MIB2, s == GIB1], [1, 2, 3], 0)
    assert bool((leaf_level > 0).all()), "leaf sizes are 4K, 2M or 1G"
    assert bool(((v | p) & (s - np.uint64(1)) == 0).all()), "leaves are aligned"

    rows: list[np.ndarray] = [np.zeros((1, 512), dtype=np.uint64)]
    next_address = base + 4096
    table_at = np.full(len(v), base, dtype=np.uint64)
    for level in range(levels, 0, -1):
        shift = np.uint64(level_shift(level))
        index = ((v >> shift) & np.uint64(511)).astype(np.int64)
        active = leaf_level <= level
        entry = np.zeros(len(v), dtype=np.uint64)
        here = leaf_level == level
        entry[here] = p[here] | np.uint64(flags | (PS if level > 1 else 0))
        below = leaf_level < level
        child_count = 0
        if bool(below.any()):
            keys = v[below] >> shift
            unique, inverse = np.unique(keys, return_inverse=True)
            child = np.uint64(next_address) + np.arange(len(unique), dtype=np.uint64) * \
                np.uint64(4096)
            entry[below] = child[inverse] | np.uint64(TABLE_FLAGS)
            child_count = len(unique)
        # write this level's entries into its tables
        table_rows = ((table_at[active] - np.uint64(base)) // np.uint64(4096)).astype(np.int64)
        block = np.concatenate(rows)
        block[table_rows, index[active]] = entry[active]
        rows = [block]
        if child_count:
            table_at[below] = child[inverse]
            rows.append(np.zeros((child_count, 512), dtype=np.uint64))
            next_address += 4096 * child_count
    return CraftedTables(levels, base, np.concatenate(rows))


def reference_walk(physical: MemoryMap, top: int, levels: int = 4,
                   address_mask: int = ADDRESS_BITS) -> list[tuple[int, int, int]]:
    """Every present leaf ``(virtual, physical, size)``, by plain recursion over entries.

    Tables not wholly in ``physical`` map nothing; PS at level 4 or 5 is skipped.
    """
    leaves: list[tuple[int, int, int]] = []
    width = level_shift(levels + 1)

    def visit(table: int, level: int, prefix: int) -> None:
        raw = physical.read(table, 4096)
        if len(raw) < 4096:
            return
        for index in range(512):
            entry = int.from_bytes(raw[8 * index:8 * index + 8], "little")
            if not entry & PRESENT:
                continue
            virtual = prefix | (index << level_shift(level))
            if level == levels and virtual >> (width - 1):
                virtual |= ((1 << 64) - 1) ^ ((1 << width) - 1)
            if level == 1 or (level in (2, 3) and entry & PS):
                size = 1 << level_shift(level)
                leaves.append((virtual, entry & address_mask & ~(size - 1), size))
            elif not entry & PS:
                visit(entry & address_mask, level - 1, virtual)

    visit(top, levels, 0)
    return leaves


def address_pattern(start: int, length: int) -> bytes:
    """Bytes whose every 8-byte word holds its own physical address (xor a constant)."""
    words = np.arange(start, start + length, 8, dtype=np.uint64) ^ np.uint64(0x5A5A5A5A5A5A5A5A)
    return words.astype("<u8").tobytes()


# --------------------------------------------------------------------- a 4 GiB guest

def split_pages(start: int, end: int, largest: int) -> list[tuple[int, int, int]]:
    """``[start, end)`` as ``(low, high, size)`` runs of the largest aligned pages that fit.

    Sizes go up to ``largest`` from ``start`` and down again towards ``end``.
    """
    runs: list[tuple[int, int, int]] = []
    sizes = [size for size in (KIB4, MIB2, GIB1) if size <= largest]
    low = start
    for bigger, size in zip(sizes[1:], sizes[:-1], strict=True):
        edge = min(-(-low // bigger) * bigger, end // size * size)
        if edge > low:
            runs.append((low, edge, size))
            low = edge
    for size in reversed(sizes):
        high = end // size * size
        if high > low and low % size == 0:
            runs.append((low, high, size))
            low = high
    return runs


GUEST_RAM = ((0x0, 0x9F000), (0x100000, 0xC0000000), (0x100000000, 0x140000000))
"""A QEMU ``pc`` guest with 4 GiB: 3 GiB below the PCI hole, 1 GiB above 4 GiB."""
DIRECT_MAP = 0xFFFF888000000000
KERNEL_MAP = 0xFFFFFFFF80000000
VMEMMAP = 0xFFFFEA0000000000
VMALLOC = 0xFFFFC90000000000
MODULES = 0xFFFFFFFFC0000000
GUEST_TABLES = 0x7000000
"""Physical address of the crafted tables (inside RAM)."""
BANNER = b"Linux version 6.1.0-crafted (vmemfs test) #1 SMP\n\0"
BANNER_VIRTUAL = 0xFFFFFFFF82000100


@dataclass
class Guest:
    path: Path
    tables: CraftedTables
    leaves: int
    direct_map_size: int

    def physical_map(self) -> MemoryMap:
        memmap = MemoryMap()
        memmap.add_file_regions(self.path, [(start, start, end - start)
                                            for start, end in GUEST_RAM])
        return memmap


def guest_4gib(directory: Path, *, direct_map_size: int = GIB1, vmalloc_pages: int = 20000,
               seed: int = 4) -> Guest:
    """A sparse 5 GiB file: the physical memory of a 4 GiB guest, with kernel page tables.

    The direct map covers all RAM with ``direct_map_size`` pages (1G: what a CPU with
    gbpages gets, 2M pages at the edges; 4K: the worst case, 1.3 million leaves).  The
    kernel image is 64 MiB of 2M pages with 4 KiB pages at its end; the vmemmap 80 MiB
    of 2M pages; ``vmalloc_pages`` scattered 4 KiB pages at ``VMALLOC`` and 512 module
    pages.
    """
    rng = np.random.default_rng(seed)
    virtual: list[np.ndarray] = []
    physical: list[np.ndarray] = []
    sizes: list[np.ndarray] = []

    def add(v: np.ndarray, p: np.ndarray, size: int) -> None:
        virtual.append(v.astype(np.uint64))
        physical.append(p.astype(np.uint64))
        sizes.append(np.full(len(v), size, dtype=np.uint64))

    for start, end in GUEST_RAM:
        for low, high, size in split_pages(start, end, direct_map_size):
            pages = np.arange(low, high, size, dtype=np.uint64)
            add(np.uint64(DIRECT_MAP) + pages, pages, size)

    image = np.arange(0x1000000, 0x4E00000, MIB2, dtype=np.uint64)   # 62 MiB of 2M pages
    add(np.uint64(KERNEL_MAP) + image, image, MIB2)
    tail = np.arange(0x4E00000, 0x5000000, KIB4, dtype=np.uint64)     # 2 MiB of 4K pages
    add(np.uint64(KERNEL_MAP) + tail, tail, KIB4)
    vmemmap = 0x13A000000 + np.arange(40, dtype=np.uint64) * np.uint64(MIB2)
    add(np.uint64(VMEMMAP) + np.arange(40, dtype=np.uint64) * np.uint64(MIB2), vmemmap, MIB2)
    frames = rng.choice(np.arange(0x10000, 0xB0000, dtype=np.uint64), vmalloc_pages,
                        replace=False) * np.uint64(KIB4)
    add(np.uint64(VMALLOC) + np.arange(vmalloc_pages, dtype=np.uint64) * np.uint64(KIB4),
        frames, KIB4)
    module_frames = rng.choice(np.arange(0xB0000, 0xB8000, dtype=np.uint64), 512,
                               replace=False) * np.uint64(KIB4)
    add(np.uint64(MODULES) + np.arange(512, dtype=np.uint64) * np.uint64(KIB4),
        module_frames, KIB4)

    all_virtual = np.concatenate(virtual)
    tables = craft_tables(all_virtual, np.concatenate(physical), np.concatenate(sizes),
                          base=GUEST_TABLES)
    assert tables.end <= 0x9000000
    path = directory / "guest.raw"
    with open(path, "wb") as file:
        file.truncate(GUEST_RAM[-1][1])
        os.pwrite(file.fileno(), tables.data(), GUEST_TABLES)
        os.pwrite(file.fileno(), BANNER, BANNER_VIRTUAL - KERNEL_MAP)
    return Guest(path, tables, len(all_virtual), direct_map_size)
