"""The x86-64 page-table walk: every present leaf of a kernel's page tables, as runs.

A table is 4 KiB: 512 little-endian 64-bit entries.  An entry is used when its bit 0
(present) is set; bits 12..51 hold a physical address (bit 63 is NX, bits 52..62 are
ignored by the MMU or hold protection keys, bits 1..11 are flags).  With 4 levels a
virtual address is split 9+9+9+9+12 bits; with 5 levels one more 9-bit level sits on
top.  Level 1 (PT) entries map 4 KiB pages; a level-2 (PD) entry with bit 7 (PS) set maps
a 2 MiB page and a level-3 (PDPT) one a 1 GiB page, whose physical addresses start at
bit 21 or 30 (bit 12 of a large entry is its PAT bit).  PS at level 4 or 5 is reserved:
such entries fault on a real CPU and are skipped here (and counted).  Virtual addresses
are sign-extended from bit 47 (4 levels) or 56 (5 levels): top-level entries 256..511
map the upper, kernel half ``0xffff8000_00000000..`` (4 levels).

The walk goes breadth-first, one level at a time, and is vectorised with numpy: tables
are read 4 KiB at a time into one buffer per batch of up to :data:`BATCH_TABLES` tables,
and every entry of the batch is classified at once (present, leaf, next table).  Leaves
that are contiguous both virtually and physically are merged into *runs*, so a direct
map of many GiB becomes a handful of runs.

What can go wrong, and what happens (never a hang):

* the top-level table is not in the physical map: :class:`~vmemfs.FormatError`;
* a lower table is not (wholly) in the physical map: the range it would map is left
  unmapped, the table counted in :attr:`PageTableWalk.missing_tables`;
* tables referencing themselves or an ancestor, or a "table" that is not one (random
  bytes): the walk is bounded by the number of levels, and the number of table visits
  by ``max_tables`` (:data:`MAX_TABLES`), runs by ``max_runs`` (:data:`MAX_RUNS`); past
  either the walk stops with a one-line :class:`~vmemfs.FormatError`.  Random bytes
  mostly name physical addresses far outside the map, so they give a small map quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vmemfs.errors import FormatError

if TYPE_CHECKING:
    from vmemfs.memmap import MemoryMap

TABLE_BYTES = 4096
"""Bytes in one page table."""
ENTRIES = 512
"""Entries in one page table."""
PRESENT = 0x1
"""Entry bit 0: the entry is used."""
PAGE_SIZE_FLAG = 0x80
"""Entry bit 7 (PS) at levels 2 and 3: the entry maps a 2 MiB or 1 GiB page."""
ADDRESS_BITS = 0x000F_FFFF_FFFF_F000
"""Entry bits 12..51: the physical address of the next table or of the page."""
LEAF_SIZES = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}
"""Bytes mapped by a leaf entry at each level (4 KiB, 2 MiB, 1 GiB)."""
SIZE_NAMES = {1 << 12: "4K", 1 << 21: "2M", 1 << 30: "1G"}
MAX_TABLES = 1 << 22
"""Default bound on table visits (4,194,304: 16 GiB of tables, enough to map 8 TiB with
4 KiB pages); a walk that needs more is an error, not a hang."""
MAX_RUNS = 1 << 22
"""Default bound on merged runs (4,194,304; a 4 GiB guest has about 20,000)."""
BATCH_TABLES = 1024
"""Table visits per numpy batch (at most a 4 MiB buffer of distinct tables, and at most
512 entries per visit of output)."""

_MASK64 = (1 << 64) - 1
_U64 = np.uint64


def level_shift(level: int) -> int:
    """log2 of the bytes one entry of a level-``level`` table spans (12, 21, 30, 39, 48)."""
    return 12 + 9 * (level - 1)


def table_address(cr3: int) -> int:
    """The physical address of the top-level table named by a CR3 value.

    The low 12 bits (PCID or cache flags) and bits 52..63 (LAM, no-flush) are cleared.
    """
    return int(cr3) & ADDRESS_BITS


def canonical(address: int, levels: int = 4) -> int:
    """``address`` sign-extended from bit 47 (4 levels) or bit 56 (5 levels)."""
    bits = level_shift(levels + 1)
    address &= (1 << bits) - 1
    if address >> (bits - 1):
        address |= _MASK64 ^ ((1 << bits) - 1)
    return address


@dataclass
class PageTableWalk:
    """What :func:`walk_page_tables` found.

    The runs are ascending by virtual address and disjoint; two runs that touch
    virtually are not physically contiguous.  They are *not* clipped to the physical
    map's extents (see :func:`clip_runs`).
    """

    top_table: int
    """Physical address of the top-level table."""
    levels: int
    """4 or 5."""
    virtual_starts: np.ndarray
    """``uint64``: the virtual address of each run (canonical)."""
    physical_starts: np.ndarray
    """``uint64``: the physical address of each run."""
    lengths: np.ndarray
    """``uint64``: the bytes of each run."""
    leaf_counts: dict[int, int] = field(default_factory=dict)
    """Present leaves by page size in bytes (4096, 2 MiB, 1 GiB)."""
    tables_read: int = 0
    """Table visits (a table reached through two entries counts twice)."""
    missing_tables: int = 0
    """Visits of lower tables not wholly in the physical map (their ranges are holes)."""
    first_missing_table: int | None = None
    """The physical address of the first such table, or ``None``."""
    reserved_entries: int = 0
    """Present entries with PS set at level 4 or 5 (reserved: skipped)."""


def walk_page_tables(physical: MemoryMap, top_table: int, *, levels: int = 4,
                     address_mask: int = ADDRESS_BITS, name: str = "physical map",
                     max_tables: int = MAX_TABLES, max_runs: int = MAX_RUNS) -> PageTableWalk:
    """Walk the page tables whose top-level table is at physical ``top_table``.

    ``address_mask`` selects the address bits of an entry (:data:`ADDRESS_BITS`; clear an
    AMD SME encryption bit from it).  ``name`` names the physical map in errors.

    Runtime complexity: per batch of :data:`BATCH_TABLES` visits, one 4 KiB read and
    ``O(512)`` vectorised work per distinct table, plus ``O(1)`` per visit and per entry
    found (a table shared by many entries costs what it maps); ``O(r log r)`` to sort
    ``r`` runs at the end.  Memory: ``O(t + r)`` for ``t`` visits, bounded by
    ``max_tables`` and ``max_runs``.

    :raises FormatError: if the top-level table at ``top_table`` is not wholly in
        ``physical`` (naming the address), or if the walk passes ``max_tables`` visits
        or ``max_runs`` runs.
    :raises ValueError: if ``levels`` is not 4 or 5, or ``top_table`` is not a 4 KiB
        aligned address below ``2**52``.
    """
    if levels not in (4, 5):
        raise ValueError(f"page tables have 4 or 5 levels, not {levels}")
    if top_table & ~ADDRESS_BITS:
        raise ValueError(f"top-level page table address {top_table:#x} is not a 4 KiB "
                         "aligned physical address below 2**52")
    walk = PageTableWalk(top_table, levels, _empty(), _empty(), _empty(),
                         leaf_counts=dict.fromkeys(LEAF_SIZES.values(), 0))
    top_entries, top_missing = _read_tables(physical, np.array([top_table], dtype=np.uint64))
    if top_missing[0]:
        raise FormatError(f"{name}: top-level page table at physical address "
                          f"{top_table:#x}: not in the physical map (a hole)")

    mask = _U64(address_mask)
    tables = np.array([top_table], dtype=np.uint64)
    bases = np.zeros(1, dtype=np.uint64)
    run_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    run_count = 0
    visits = 1
    for level in range(levels, 0, -1):
        shift = _U64(level_shift(level))
        leaf_size = LEAF_SIZES.get(level)
        child_tables: list[np.ndarray] = []
        child_bases: list[np.ndarray] = []
        for first in range(0, len(tables), BATCH_TABLES):
            batch = tables[first:first + BATCH_TABLES]
            batch_bases = bases[first:first + BATCH_TABLES]
            walk.tables_read += len(batch)
            # Each distinct table of the batch is read and classified once; its entries
            # are then repeated for every visit, so shared tables cost their output only.
            if level == levels:
                entries, visit_table = top_entries, np.zeros(1, dtype=np.intp)
            else:
                unique, visit_table = np.unique(batch, return_inverse=True)
                entries, missing = _read_tables(physical, unique)
                if bool(missing.any()):
                    missed = missing[visit_table]
                    if walk.first_missing_table is None:
                        walk.first_missing_table = int(batch[np.flatnonzero(missed)[0]])
                    walk.missing_tables += int(np.count_nonzero(missed))

            present = (entries & _U64(PRESENT)) != 0
            large = (entries & _U64(PAGE_SIZE_FLAG)) != 0
            if level == 1:
                leaf, child = present, None
            elif leaf_size is not None:
                leaf, child = present & large, present & ~large
            else:
                leaf, child = None, present & ~large
                reserved = np.count_nonzero(present & large, axis=1)
                walk.reserved_entries += int(reserved[visit_table].sum())

            if leaf is not None:
                virtual, values = _expand(leaf, entries, visit_table, batch_bases, shift)
                if len(virtual):
                    assert leaf_size is not None
                    walk.leaf_counts[leaf_size] += len(virtual)
                    merged = merge_runs(virtual, values & (mask & ~_U64(leaf_size - 1)),
                                        np.full(len(virtual), leaf_size, dtype=np.uint64))
                    run_parts.append(merged)
                    run_count += len(merged[0])
                    if run_count > max_runs:
                        raise FormatError(
                            f"{name}: page tables at physical address {top_table:#x}: more "
                            f"than {max_runs} runs of pages: not a kernel's page tables?")
            if child is not None:
                virtual, values = _expand(child, entries, visit_table, batch_bases, shift)
                if len(virtual):
                    if level == levels:
                        virtual = _sign_extend(virtual, levels)
                    child_tables.append(values & mask)
                    child_bases.append(virtual)
                    visits += len(virtual)
                    if visits > max_tables:
                        raise FormatError(
                            f"{name}: page tables at physical address {top_table:#x}: more "
                            f"than {max_tables} table visits (tables shared by many entries, "
                            "a loop, or not page tables)")
        if not child_tables:
            break
        tables = np.concatenate(child_tables)
        bases = np.concatenate(child_bases)

    if run_parts:
        virtual = np.concatenate([part[0] for part in run_parts])
        order = np.argsort(virtual, kind="stable")
        walk.virtual_starts, walk.physical_starts, walk.lengths = merge_runs(
            virtual[order], np.concatenate([part[1] for part in run_parts])[order],
            np.concatenate([part[2] for part in run_parts])[order])
    return walk


def merge_runs(virtual: np.ndarray, physical: np.ndarray,
               lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join runs that follow each other both virtually and physically.

    The ``uint64`` arrays describe runs ascending by virtual address and disjoint.  A run
    ending at ``2**64`` is allowed (its end wraps to 0 in ``uint64``, and the
    subtraction giving the merged length wraps back).

    Runtime complexity: ``O(n)`` vectorised.
    """
    if len(virtual) <= 1:
        return virtual, physical, lengths
    joins = ((virtual[1:] == virtual[:-1] + lengths[:-1])
             & (physical[1:] == physical[:-1] + lengths[:-1]))
    if not bool(joins.any()):
        return virtual, physical, lengths
    breaks = np.flatnonzero(~joins)
    firsts = np.concatenate(([0], breaks + 1))
    lasts = np.concatenate((breaks, [len(virtual) - 1]))
    ends = virtual[lasts] + lengths[lasts]
    return virtual[firsts], physical[firsts], ends - virtual[firsts]


def clip_runs(virtual: np.ndarray, physical: np.ndarray, lengths: np.ndarray,
              extent_starts: np.ndarray,
              extent_lasts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the parts of runs whose physical bytes lie in extents.

    Extents are ascending, disjoint ``[extent_starts[i], extent_lasts[i]]`` (inclusive
    ends, so one may reach ``2**64 - 1``).  A run over ``k`` extents becomes ``k`` runs;
    a run over a hole of the physical map loses those bytes.  The result is ascending by
    virtual address when the input was.

    Runtime complexity: ``O((n + m) log e)`` vectorised, for ``n`` runs, ``e`` extents and
    ``m`` resulting runs.
    """
    if len(virtual) == 0 or len(extent_starts) == 0:
        return _empty(), _empty(), _empty()
    run_lasts = physical + (lengths - _U64(1))
    first = np.searchsorted(extent_lasts, physical, side="left")
    stop = np.searchsorted(extent_starts, run_lasts, side="right")
    counts = np.maximum(stop.astype(np.int64) - first.astype(np.int64), 0)
    total = int(counts.sum())
    if total == 0:
        return _empty(), _empty(), _empty()
    run = np.repeat(np.arange(len(virtual)), counts)
    group_starts = np.cumsum(counts) - counts
    extent = first[run] + (np.arange(total) - np.repeat(group_starts, counts))
    starts = np.maximum(physical[run], extent_starts[extent])
    lasts = np.minimum(run_lasts[run], extent_lasts[extent])
    return virtual[run] + (starts - physical[run]), starts, lasts - starts + _U64(1)


def translate(physical: MemoryMap, top_table: int, address: int, *, levels: int = 4,
              address_mask: int = ADDRESS_BITS) -> int | None:
    """The physical address the page tables map virtual ``address`` to, or ``None``.

    One entry per level, as the MMU reads them; ``None`` where an entry is not present,
    PS is set at level 4 or 5, or a table is not in the physical map.  A reference for
    the vectorised walk, and a check of a top-level table (it maps its own address).

    Runtime complexity: ``levels`` reads of 8 bytes.
    """
    table = top_table
    for level in range(levels, 0, -1):
        shift = level_shift(level)
        index = (address >> shift) & (ENTRIES - 1)
        raw = physical.read(table + 8 * index, 8)
        if len(raw) < 8:
            return None
        entry = int.from_bytes(raw, "little")
        if not entry & PRESENT:
            return None
        size = LEAF_SIZES.get(level)
        if level == 1 or (size is not None and entry & PAGE_SIZE_FLAG):
            assert size is not None
            return (entry & address_mask & ~(size - 1)) | (address & (size - 1))
        if entry & PAGE_SIZE_FLAG:
            return None
        table = entry & address_mask
    return None


def _sign_extend(virtual: np.ndarray, levels: int) -> np.ndarray:
    bits = level_shift(levels + 1)
    high = _U64(_MASK64 ^ ((1 << bits) - 1))
    upper = (virtual >> _U64(bits - 1)) != 0
    return np.where(upper, virtual | high, virtual)


def _expand(selected: np.ndarray, entries: np.ndarray, visit_table: np.ndarray,
            bases: np.ndarray, shift: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """The selected entries of every visit: ``(virtual addresses, entry values)``.

    ``selected`` and ``entries`` have one row per distinct table; visit ``i`` reads table
    ``visit_table[i]`` with virtual base ``bases[i]``.  The result is in visit order, then
    entry order (ascending virtual addresses when the bases ascend).

    Runtime complexity: ``O(512 u + v + k)`` for ``u`` tables, ``v`` visits and ``k``
    selected entries in all visits.
    """
    if len(selected) == len(visit_table):  # one visit per table: a permutation of rows
        visits, columns = np.nonzero(selected[visit_table])
        values = entries[visit_table[visits], columns]
        return bases[visits] + (columns.astype(np.uint64) << shift), values
    rows, columns = np.nonzero(selected)
    if len(rows) == 0:
        return _empty(), _empty()
    per_table = np.bincount(rows, minlength=len(selected))
    table_first = np.cumsum(per_table) - per_table
    per_visit = per_table[visit_table]
    total = int(per_visit.sum())
    visit = np.repeat(np.arange(len(visit_table)), per_visit)
    within = np.arange(total) - np.repeat(np.cumsum(per_visit) - per_visit, per_visit)
    position = table_first[visit_table][visit] + within
    columns = columns[position]
    values = entries[rows[position], columns]
    return bases[visit] + (columns.astype(np.uint64) << shift), values


def _read_tables(physical: MemoryMap, tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    buffer = bytearray(len(tables) * TABLE_BYTES)
    view = memoryview(buffer)
    read_into = physical.read_into
    missing = np.zeros(len(tables), dtype=bool)
    for number, address in enumerate(tables.tolist()):
        at = number * TABLE_BYTES
        if read_into(address, view[at:at + TABLE_BYTES]) < TABLE_BYTES:
            missing[number] = True
    entries = np.frombuffer(buffer, dtype="<u8").reshape(len(tables), ENTRIES)
    if bool(missing.any()):
        entries[missing] = 0
    return entries.astype(np.uint64, copy=False), missing


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.uint64)
