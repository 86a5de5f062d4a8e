"""VMCOREINFO: the ``KEY=VALUE`` text a Linux kernel leaves in its dumps for tools.

The kernel writes it with ``printf``-style formats, one entry a line, and the format
decides how a value reads:

=============================  ==========================  ===========================
line                           value                       read with
=============================  ==========================  ===========================
``OSRELEASE=6.2.15-100.fc36``  text                        :attr:`VmcoreInfo.osrelease`
``BUILD-ID=d3d01c80...``       hex digits (text)           ``info["BUILD-ID"]``
``PAGESIZE=4096``              decimal                     :attr:`VmcoreInfo.page_size`
``SYMBOL(name)=ffffffff8260``  hex, no ``0x``: an address  :meth:`VmcoreInfo.symbol`
``SIZE(name)=64``              decimal                     :meth:`VmcoreInfo.size`
``OFFSET(struct.field)=24``    decimal                     :meth:`VmcoreInfo.offset`
``LENGTH(name)=1024``          decimal                     :meth:`VmcoreInfo.length`
``NUMBER(name)=-129``          signed decimal              :meth:`VmcoreInfo.number`
``KERNELOFFSET=34000000``      hex, no ``0x``              :attr:`VmcoreInfo.kernel_offset`
``CRASHTIME=1570041406``       decimal seconds (at crash)  :attr:`VmcoreInfo.crash_time`
=============================  ==========================  ===========================

**Addresses are already relocated.**  ``SYMBOL(name)`` is the run-time address of
``name`` (the kernel prints ``&name``), so under KASLR it already includes the random
offset: in a dump with ``KERNELOFFSET=34000000``, ``SYMBOL(_stext)`` reads
``ffffffffb5000000``, which is ``0xffffffff81000000 + 0x34000000``.  ``KERNELOFFSET`` is
what must be added to the *link-time* addresses of a ``vmlinux`` or ``System.map`` of
the same build, never to a ``SYMBOL()`` value.

**The kernel's top-level page table** (x86-64) is ``init_top_pgt`` (called
``init_level4_pgt`` before Linux 4.13; ``swapper_pg_dir`` is the generic name of the same
table).  It lies in the kernel image, mapped at ``__START_KERNEL_map``
(``0xffffffff80000000``) over physical ``phys_base``, so its physical address is
``SYMBOL(init_top_pgt) - 0xffffffff80000000 + NUMBER(phys_base)``, the kernel's own
``__pa_symbol``.  ``NUMBER(phys_base)`` exists since Linux 4.10; older kernels exported
``SYMBOL(phys_base)`` (the variable's address) instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from vmemfs.errors import FormatError

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
"""``__START_KERNEL_map``: where the x86-64 kernel image is mapped, over ``phys_base``."""

TOP_TABLE_SYMBOLS = ("init_top_pgt", "init_level4_pgt", "swapper_pg_dir")
"""Names of the kernel's top-level page table in VMCOREINFO, in the order they are tried."""

_MASK64 = (1 << 64) - 1
_HEX = re.compile(r"(?P<sign>)(?:0[xX])?(?P<hex>[0-9a-fA-F]+)")
"""A hexadecimal value: ``SYMBOL()`` and ``KERNELOFFSET`` (the kernel prints no ``0x``)."""
_DECIMAL = re.compile(r"(?P<sign>-?)(?:0[xX](?P<hex>[0-9a-fA-F]+)|(?P<decimal>[0-9]+))")
"""A decimal value, signed; ``0x`` hexadecimal accepted too (hand-written texts)."""


class VmcoreInfo(Mapping[str, str]):
    """The entries of one VMCOREINFO text: ``info["PAGESIZE"] == "4096"``.

    A read-only mapping of key to value text, in the order of the text.  Lines without
    ``=`` are ignored (the note may end in NUL padding); where a key repeats, the first
    line counts, as makedumpfile reads it.  Values are checked only when read through
    the typed helpers, which raise :class:`~vmemfs.FormatError` naming the line.

    >>> info = VmcoreInfo.parse(b"PAGESIZE=4096\\nSYMBOL(init_top_pgt)=ffffffff82a0c000\\n")
    >>> hex(info.symbol("init_top_pgt")), info.page_size
    ('0xffffffff82a0c000', 4096)
    """

    def __init__(self, entries: dict[str, tuple[str, int, int]], text: bytes,
                 name: str) -> None:
        """Use :meth:`parse`; ``entries`` maps a key to ``(value, line, offset)``."""
        self._entries = entries
        self.text = text
        """The text as given (for ``.ctl/vmcoreinfo``)."""
        self.name = name
        """What error messages call the text's origin (a dump's path)."""

    @classmethod
    def parse(cls, data: bytes | str, *, name: str = "VMCOREINFO") -> VmcoreInfo:
        """Split VMCOREINFO text into entries.  Never raises: any bytes parse.

        ``name`` is the file the text came from, used in error messages.
        Runtime complexity: ``O(length of the text)``.
        """
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        entries: dict[str, tuple[str, int, int]] = {}
        offset = 0
        for number, line in enumerate(raw.split(b"\n"), start=1):
            start = offset
            offset += len(line) + 1
            text = line.strip(b"\0 \t\r").decode("utf-8", "surrogateescape")
            key, equals, value = text.partition("=")
            if equals and key and key not in entries:
                entries[key] = (value, number, start)
        return cls(entries, raw, name)

    # ------------------------------------------------------------ the mapping

    def __getitem__(self, key: str) -> str:
        return self._entries[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<VmcoreInfo {len(self)} entries from {self.name}>"

    # ------------------------------------------------------------ typed values

    def _integer(self, key: str, base: int, what: str) -> int | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, line, offset = found
        text = value.strip()
        match = (_HEX if base == 16 else _DECIMAL).fullmatch(text)
        if match is None:
            raise FormatError(
                f"{self.name}: VMCOREINFO line {line} at offset {offset:#x}: "
                f"{key}={value[:40]!r} is not {what}")
        if match["hex"] is not None:
            number = int(match["hex"], 16)
        else:
            number = int(match["decimal"])
        if match["sign"] == "-":
            number = -number
        return number

    def symbol(self, name: str) -> int | None:
        """The address in ``SYMBOL(name)=`` (run-time, already relocated), or ``None``.

        :raises FormatError: naming the line, if the value is not hexadecimal or not
            below ``2**64``.
        """
        key = f"SYMBOL({name})"
        address = self._integer(key, 16, "a hexadecimal address")
        if address is not None and address > _MASK64:
            _, line, offset = self._entries[key]
            raise FormatError(f"{self.name}: VMCOREINFO line {line} at offset {offset:#x}: "
                              f"{key} passes 2**64")
        return address

    def number(self, name: str) -> int | None:
        """The signed decimal in ``NUMBER(name)=``, or ``None`` if absent.

        :raises FormatError: naming the line, if the value is not a decimal number.
        """
        return self._integer(f"NUMBER({name})", 10, "a decimal number")

    def size(self, name: str) -> int | None:
        """``SIZE(name)=``: a type's size in bytes, or ``None``."""
        return self._integer(f"SIZE({name})", 10, "a decimal number")

    def offset(self, name: str) -> int | None:
        """``OFFSET(struct.field)=``: a field's offset in bytes, or ``None``."""
        return self._integer(f"OFFSET({name})", 10, "a decimal number")

    def length(self, name: str) -> int | None:
        """``LENGTH(name)=``: an array's length, or ``None``."""
        return self._integer(f"LENGTH({name})", 10, "a decimal number")

    @property
    def osrelease(self) -> str | None:
        """``OSRELEASE=``: the kernel release (``uname -r``), or ``None``."""
        return self._entries.get("OSRELEASE", (None,))[0]

    @property
    def page_size(self) -> int | None:
        """``PAGESIZE=`` in bytes, or ``None``."""
        return self._integer("PAGESIZE", 10, "a decimal number")

    @property
    def kernel_offset(self) -> int:
        """``KERNELOFFSET=``: the KASLR offset of the kernel image (0 when absent).

        Add it to link-time addresses (``vmlinux``, ``System.map``), not to
        :meth:`symbol` values, which already include it.
        """
        offset = self._integer("KERNELOFFSET", 16, "a hexadecimal number")
        return 0 if offset is None else offset

    @property
    def crash_time(self) -> int | None:
        """``CRASHTIME=``: when the kernel crashed, in seconds since the epoch, or ``None``."""
        return self._integer("CRASHTIME", 10, "a decimal number")


@dataclass(frozen=True)
class KernelTopTable:
    """Where VMCOREINFO says the kernel's top-level page table is."""

    symbol: str
    """The VMCOREINFO symbol used (``init_top_pgt``, ``init_level4_pgt``, ``swapper_pg_dir``)."""
    virtual_address: int
    """Its value: the table's kernel-image (virtual) address, KASLR included."""
    phys_base: int | None
    """``NUMBER(phys_base)``, or ``None`` for a kernel older than 4.10 (not exported)."""
    levels: int
    """5 when ``NUMBER(pgtable_l5_enabled)`` is non-zero, else 4."""
    kernel_offset: int
    """``KERNELOFFSET`` (shown only: already part of :attr:`virtual_address`)."""
    sme_mask: int
    """``NUMBER(sme_mask)``: the AMD memory-encryption bit of page-table entries (0: none)."""

    def physical_address(self, phys_base: int | None = None) -> int:
        """``virtual_address - __START_KERNEL_map + phys_base`` (the kernel's ``__pa_symbol``).

        ``phys_base`` defaults to :attr:`phys_base` (0 when that is unknown).
        """
        base = self.phys_base if phys_base is None else phys_base
        return (self.virtual_address - START_KERNEL_MAP + (base or 0)) & _MASK64

    def describe(self) -> str:
        """One line: where the address came from, for ``vmemfs info``."""
        base = "unknown" if self.phys_base is None else signed_hex(self.phys_base)
        return (f"SYMBOL({self.symbol})={self.virtual_address:x} - __START_KERNEL_map + "
                f"phys_base {base} (KERNELOFFSET={self.kernel_offset:x}, already included)")


def signed_hex(value: int) -> str:
    """A 64-bit value in hex, negative from ``2**63`` on (``phys_base`` is printed signed).

    >>> signed_hex(0xFFFFFFFFD6000000), signed_hex(0x1000000)
    ('-0x2a000000', '0x1000000')
    """
    value &= _MASK64
    return f"{value - (1 << 64):#x}" if value >> 63 else f"{value:#x}"


def kernel_top_table(info: VmcoreInfo) -> KernelTopTable:
    """Find the kernel's top-level page table in ``info`` (x86-64).

    :raises FormatError: if no top-table symbol is present (the message says to give
        ``virtual=ADDRESS``), if it lies below ``__START_KERNEL_map`` (not in the kernel
        image), or if a value it needs is malformed.
    """
    for symbol in TOP_TABLE_SYMBOLS:
        address = info.symbol(symbol)
        if address is not None:
            break
    else:
        raise FormatError(
            f"{info.name}: VMCOREINFO has no SYMBOL(init_top_pgt) or SYMBOL(swapper_pg_dir): "
            "give virtual=ADDRESS, the physical address of the top-level page table "
            "(the CR3 value)")
    if address < START_KERNEL_MAP:
        raise FormatError(
            f"{info.name}: VMCOREINFO SYMBOL({symbol})={address:x} is below "
            f"__START_KERNEL_map ({START_KERNEL_MAP:#x}), not in an x86-64 kernel image: "
            "give virtual=ADDRESS (the CR3 value)")
    phys_base = info.number("phys_base")
    levels = 5 if (info.number("pgtable_l5_enabled") or 0) != 0 else 4
    sme_mask = (info.number("sme_mask") or 0) & _MASK64
    return KernelTopTable(symbol, address, None if phys_base is None else phys_base & _MASK64,
                          levels, info.kernel_offset, sme_mask)
