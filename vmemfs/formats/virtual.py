"""The kernel virtual view: a physical map of an x86-64 Linux guest, seen through its page tables.

:func:`build_virtual_map` walks the kernel's page tables (:mod:`vmemfs.formats.pagetables`)
found from VMCOREINFO (:mod:`vmemfs.formats.vmcoreinfo`) or given as a CR3 value, and
returns a new :class:`~vmemfs.MemoryMap` whose mappings place runs of the *physical* map
at their virtual addresses.  The physical map is the source of the virtual one (a
:class:`~vmemfs.sources.mapsource.MapSource`): reads go through it, compressed or cached
as it is, and nothing is copied.

Decisions:

* A leaf whose physical page is a hole of the physical map is a hole of the virtual map
  (the runs are clipped to the physical map's extents).
* A lower-level table that is not in the physical map leaves its range unmapped; such
  tables are counted (:attr:`VirtualView.missing_tables`) and one warning is logged for
  the whole walk.  Only a missing *top-level* table is an error: then nothing is mapped.
* Without ``NUMBER(phys_base)`` (kernels before 4.10), ``phys_base`` is found as the
  2 MiB multiple whose top-level table maps its own ``SYMBOL()`` address to itself
  (and, where ``SYMBOL(phys_base)`` is given, where the variable holds that value).
* KASLR: ``SYMBOL()`` values are run-time addresses, so ``KERNELOFFSET`` is not added
  (see :mod:`vmemfs.formats.vmcoreinfo`).

To compare with another walk, :meth:`VirtualView.runs` lists ``(virtual, physical,
length)`` per mapping, and :meth:`VirtualView.to_physical` translates one address.  QEMU's
``dump-guest-memory`` with ``paging=true`` writes one ``PT_LOAD`` per run of the page
tables in use (``p_vaddr``, ``p_paddr``), merged the same way: for a Linux guest the
kernel half of those loads equals :meth:`VirtualView.runs` run for run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from vmemfs.errors import FormatError
from vmemfs.formats.pagetables import (
    ADDRESS_BITS,
    MAX_RUNS,
    MAX_TABLES,
    SIZE_NAMES,
    PageTableWalk,
    clip_runs,
    table_address,
    translate,
    walk_page_tables,
)
from vmemfs.formats.vmcoreinfo import (
    START_KERNEL_MAP,
    KernelTopTable,
    VmcoreInfo,
    kernel_top_table,
    signed_hex,
)
from vmemfs.memmap import MemoryMap
from vmemfs.sources.mapsource import MapSource

log = logging.getLogger(__name__)

EM_X86_64 = 62
"""ELF ``e_machine`` of x86-64, set on the virtual map (kept by ``save``)."""
PHYS_BASE_ALIGN = 1 << 21
"""``CONFIG_PHYSICAL_ALIGN`` of x86-64 kernels: ``phys_base`` is a multiple of 2 MiB."""
PHYS_BASE_SEARCH_LIMIT = 1 << 36
"""Where the search for an unexported ``phys_base`` stops (64 GiB)."""

_MASK64 = (1 << 64) - 1


@dataclass
class VirtualView:
    """A kernel virtual address space built from a physical map, and how it was found."""

    memmap: MemoryMap
    """The virtual map: wordsize 64, endian little, ELF machine x86-64."""
    top_table: int
    """Physical address of the top-level page table walked."""
    levels: int
    """4 or 5."""
    origin: str
    """Where :attr:`top_table` came from, in words (VMCOREINFO or ``virtual=ADDRESS``)."""
    leaf_counts: dict[int, int]
    """Present leaf entries by page size in bytes (4096, 2 MiB, 1 GiB)."""
    mapping_count: int
    """Mappings of the virtual map (merged runs clipped to the physical extents)."""
    tables_read: int
    """Page-table visits."""
    missing_tables: int
    """Visits of lower tables outside the physical map (their ranges are holes)."""
    first_missing_table: int | None
    """Physical address of the first of those, or ``None``."""
    reserved_entries: int
    """Present top-level entries with the reserved PS bit (skipped)."""
    mapped_bytes: int
    """Bytes mapped in the virtual map."""
    hole_bytes: int
    """Bytes of present leaves whose physical pages are holes of the physical map."""
    virtual_starts: np.ndarray = field(repr=False)
    """``uint64``: virtual address of each mapping, ascending."""
    physical_starts: np.ndarray = field(repr=False)
    """``uint64``: physical address each mapping reads from."""
    lengths: np.ndarray = field(repr=False)
    """``uint64``: bytes of each mapping."""
    vmcoreinfo: VmcoreInfo | None = None
    """The parsed VMCOREINFO, when one was given."""

    def to_physical(self, address: int) -> int | None:
        """The physical address virtual ``address`` reads from, or ``None`` for a hole.

        Runtime complexity: ``O(log n)`` for ``n`` mappings.
        """
        if not 0 <= address <= _MASK64 or len(self.virtual_starts) == 0:
            return None
        index = int(np.searchsorted(self.virtual_starts, np.uint64(address), side="right")) - 1
        if index < 0:
            return None
        start = int(self.virtual_starts[index])
        if address - start >= int(self.lengths[index]):
            return None
        return int(self.physical_starts[index]) + address - start

    def runs(self) -> list[tuple[int, int, int]]:
        """``(virtual, physical, length)`` of every mapping, ascending by virtual address.

        What QEMU's ``dump-guest-memory -p`` writes as ``PT_LOAD`` headers (``p_vaddr``,
        ``p_paddr``, ``p_filesz``) for the same page tables, up to how runs are merged.
        """
        return list(zip(self.virtual_starts.tolist(), self.physical_starts.tolist(),
                        self.lengths.tolist(), strict=True))

    def describe(self) -> list[str]:
        """Lines for ``vmemfs info`` and ``.ctl/maps``: what was walked and what it gave."""
        counts = " + ".join(f"{self.leaf_counts.get(size, 0):,} {SIZE_NAMES[size]}"
                            for size in sorted(SIZE_NAMES))
        lines = [
            f"virtual:   x86-64 {self.levels}-level page tables, top-level table at "
            f"physical {self.top_table:#x}",
            f"  from {self.origin}",
            f"  leaves: {counts} pages; {self.tables_read:,} tables read",
            f"  mappings: {self.mapping_count:,} (leaves contiguous virtually and "
            f"physically merged), {self.mapped_bytes:,} bytes",
        ]
        if self.hole_bytes:
            lines.append(f"  {self.hole_bytes:,} bytes of pages are holes of the physical "
                         "map (left unmapped)")
        if self.missing_tables:
            lines.append(f"  {self.missing_tables:,} page tables outside the physical map "
                         f"(first at {self.first_missing_table:#x}): their ranges are holes")
        if self.reserved_entries:
            lines.append(f"  {self.reserved_entries:,} top-level entries with the reserved "
                         "PS bit skipped")
        return lines


def build_virtual_map(physical: MemoryMap, *, top_table: int | None = None,
                      vmcoreinfo: bytes | VmcoreInfo | None = None,
                      levels: int | None = None, name: str | None = None,
                      max_tables: int = MAX_TABLES, max_runs: int = MAX_RUNS) -> VirtualView:
    """The kernel virtual address space of the x86-64 guest whose physical memory is ``physical``.

    The top-level table is ``top_table`` (a CR3 value: the low 12 bits, bit 63 and the
    LAM bits 61..62 are ignored; bits 52..60 must be clear) when given, else the one
    VMCOREINFO names.  Paging has 5 levels when ``levels=5`` or VMCOREINFO says
    ``NUMBER(pgtable_l5_enabled)=1``, else 4.
    ``NUMBER(sme_mask)`` is cleared from every entry.  ``name`` names the physical map in
    messages (default: its first file).

    The new map holds one mapping per run of a :class:`MapSource` of ``physical``, whose
    source offsets are physical addresses: it owns ``physical`` (closing the virtual map
    closes it, unless nothing was mapped).

    Runtime complexity: see :func:`~vmemfs.formats.pagetables.walk_page_tables`; a 4 GiB
    guest takes well under a second.

    :raises FormatError: one line, if neither ``top_table`` nor VMCOREINFO gives a table
        (it says to give ``virtual=ADDRESS``), if ``top_table`` is not a CR3 value (a
        virtual address given by mistake), if the top-level table is a hole of the
        physical map, if VMCOREINFO is malformed where needed, or if the walk passes
        ``max_tables`` or ``max_runs``.
    """
    label = name if name is not None else _physical_name(physical)
    info: VmcoreInfo | None
    if vmcoreinfo is None or isinstance(vmcoreinfo, VmcoreInfo):
        info = vmcoreinfo
    else:
        info = VmcoreInfo.parse(vmcoreinfo, name=label)
    kernel_table = kernel_top_table(info) if info is not None and top_table is None else None
    sme_mask = 0
    if info is not None:
        sme_mask = (info.number("sme_mask") or 0) & _MASK64
        if levels is None:
            levels = 5 if (info.number("pgtable_l5_enabled") or 0) != 0 else 4
    levels = 4 if levels is None else levels
    address_mask = ADDRESS_BITS & ~sme_mask

    if top_table is not None:
        if not 0 <= top_table <= _MASK64 or (top_table >> 52) & 0x1FF:
            raise FormatError(
                f"{label}: virtual={top_table:#x} is not a CR3 value (bits 52..60 are "
                "reserved): give the physical address of the top-level page table")
        table = table_address(top_table & ~sme_mask)
        origin = f"virtual={top_table:#x} (the CR3 value)"
    elif kernel_table is not None:
        table, origin = _kernel_table_address(physical, kernel_table, info, label,
                                              levels, address_mask)
    else:
        raise FormatError(
            f"{label}: no VMCOREINFO to find the kernel's page tables: give virtual=ADDRESS, "
            "the physical address of the top-level page table (the CR3 value)")

    hint = ("check virtual=ADDRESS (the CR3 value)" if top_table is not None
            else "give virtual=ADDRESS (the CR3 value)")
    try:
        walk = walk_page_tables(physical, table, levels=levels, address_mask=address_mask,
                                name=label, max_tables=max_tables, max_runs=max_runs)
    except FormatError as error:
        raise FormatError(f"{error}: {hint}") from None
    return _view(physical, walk, origin, info, label)


def _view(physical: MemoryMap, walk: PageTableWalk, origin: str, info: VmcoreInfo | None,
          label: str) -> VirtualView:
    extent_pairs = physical.extents()
    extent_starts = np.array([start for start, _ in extent_pairs], dtype=np.uint64)
    extent_lasts = np.array([end - 1 for _, end in extent_pairs], dtype=np.uint64)
    virtual_starts, physical_starts, lengths = clip_runs(
        walk.virtual_starts, walk.physical_starts, walk.lengths, extent_starts, extent_lasts)
    virtual = MemoryMap()
    virtual.wordsize = 64
    virtual.endian = "little"
    virtual.machine = EM_X86_64
    if len(virtual_starts):
        virtual.add_source_arrays(MapSource(physical, f"physical:{label}", owner=True),
                                  virtual_starts, physical_starts, lengths, kind="page")
    leaf_bytes = int(walk.lengths.sum(dtype=np.uint64)) if len(walk.lengths) else 0
    mapped = int(lengths.sum(dtype=np.uint64)) if len(lengths) else 0
    if walk.missing_tables:
        log.warning("%s: %d page tables outside the physical map (first at %#x): their "
                    "ranges are holes", label, walk.missing_tables, walk.first_missing_table)
    return VirtualView(
        memmap=virtual, top_table=walk.top_table, levels=walk.levels, origin=origin,
        leaf_counts=dict(walk.leaf_counts), mapping_count=len(virtual_starts),
        tables_read=walk.tables_read, missing_tables=walk.missing_tables,
        first_missing_table=walk.first_missing_table,
        reserved_entries=walk.reserved_entries, mapped_bytes=mapped,
        hole_bytes=leaf_bytes - mapped, virtual_starts=virtual_starts,
        physical_starts=physical_starts, lengths=lengths, vmcoreinfo=info)


def _kernel_table_address(physical: MemoryMap, kernel_table: KernelTopTable,
                          info: VmcoreInfo | None, label: str, levels: int,
                          address_mask: int) -> tuple[int, str]:
    """The physical address of the VMCOREINFO table, and words saying how it was found."""
    symbol = f"SYMBOL({kernel_table.symbol})={kernel_table.virtual_address:x}"
    if kernel_table.phys_base is not None:
        table = kernel_table.physical_address()
        origin = (f"VMCOREINFO: {symbol} - __START_KERNEL_map + "
                  f"NUMBER(phys_base) {signed_hex(kernel_table.phys_base)}")
        if table & ~ADDRESS_BITS:
            raise FormatError(f"{label}: VMCOREINFO {symbol} with phys_base "
                              f"{signed_hex(kernel_table.phys_base)} gives {table:#x}, not a 4 KiB "
                              "aligned physical address: give virtual=ADDRESS (the CR3 value)")
        return table, origin
    variable = info.symbol("phys_base") if info is not None else None
    if variable is not None and variable < START_KERNEL_MAP:
        variable = None
    phys_base = _search_phys_base(physical, kernel_table, variable, levels, address_mask)
    if phys_base is None:
        raise FormatError(
            f"{label}: VMCOREINFO has no NUMBER(phys_base) (a kernel before 4.10), and no "
            f"2 MiB multiple below {PHYS_BASE_SEARCH_LIMIT:#x} makes {symbol} map itself: "
            "give virtual=ADDRESS (the CR3 value)")
    return (kernel_table.physical_address(phys_base),
            f"VMCOREINFO: {symbol} - __START_KERNEL_map + phys_base {phys_base:#x} (found: "
            "the table maps its own address there)")


def _search_phys_base(physical: MemoryMap, kernel_table: KernelTopTable, variable: int | None,
                      levels: int, address_mask: int) -> int | None:
    """The first 2 MiB multiple ``p`` that makes the top-level table map itself.

    ``p`` qualifies when the table at ``SYMBOL - __START_KERNEL_map + p`` translates
    ``SYMBOL`` to its own physical address and, given the address of the ``phys_base``
    variable, that variable holds ``p``.  Runtime complexity: one 8-byte read per
    candidate in the physical map's extents, plus ``levels`` reads per likely one.
    """
    offset = kernel_table.virtual_address - START_KERNEL_MAP
    for start, end in physical.extents():
        if start >= PHYS_BASE_SEARCH_LIMIT + offset:
            break
        first = max(0, -(-(start - offset) // PHYS_BASE_ALIGN) * PHYS_BASE_ALIGN)
        last = min(end - offset - 8, PHYS_BASE_SEARCH_LIMIT)
        for phys_base in range(first, last + 1, PHYS_BASE_ALIGN):
            table = offset + phys_base
            if variable is not None:
                held = physical.read(variable - START_KERNEL_MAP + phys_base, 8)
                if len(held) < 8 or int.from_bytes(held, "little") != phys_base:
                    continue
            if translate(physical, table, kernel_table.virtual_address, levels=levels,
                         address_mask=address_mask) == table:
                return phys_base
    return None


def _physical_name(physical: MemoryMap) -> str:
    names = physical.file_names()
    return names[0] if names else "physical map"
