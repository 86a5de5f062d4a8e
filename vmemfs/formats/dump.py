"""What opening a memory dump gives: a source and where its regions go (SPEC §3.5, §3.6).

The dump readers (:mod:`vmemfs.formats.kdump`, :mod:`vmemfs.formats.lime`) check a file
and return a :class:`Dump`: one :class:`~vmemfs.sources.Source` and the regions of it to
map, as ``uint64`` arrays, ready for one
:meth:`~vmemfs.memmap.MemoryMap.add_source_arrays`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from vmemfs.errors import FormatError
from vmemfs.sources import Source

if TYPE_CHECKING:
    from vmemfs.memmap import MemoryMap

Endian = Literal["little", "big"]

MACHINES = {
    # utsname.machine -> ELF e_machine
    "i386": 3, "i486": 3, "i586": 3, "i686": 3, "x86_64": 62, "aarch64": 183, "arm64": 183,
    "ppc": 20, "ppc64": 21, "ppc64le": 21, "s390": 22, "s390x": 22, "riscv32": 243,
    "riscv64": 243, "mips": 8, "mips64": 8, "sparc64": 43, "loongarch64": 258, "ia64": 50,
}
"""ELF machine numbers for the ``uname -m`` names a dump header may carry."""


def machine_number(uname_machine: str) -> int | None:
    """The ELF ``e_machine`` for a ``uname -m`` name (``armv7l`` is ARM), or ``None``."""
    if uname_machine.startswith("arm") and uname_machine != "arm64":
        return 40
    return MACHINES.get(uname_machine)


@dataclass
class Dump:
    """An opened dump: its source and the regions of it to map.

    Region ``i`` places ``lengths[i]`` bytes of ``source`` from offset ``offsets[i]`` at
    address ``addresses[i]`` (``uint64`` arrays, ascending addresses for kdump).
    ``wordsize``/``endian`` describe the dumped machine (``None``: the format does not
    say).  ``info`` holds ``(label, value)`` lines for ``vmemfs info``.
    """

    source: Source
    addresses: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    wordsize: int | None
    endian: Endian | None
    vmcoreinfo: bytes | None
    kind: str
    """The mapping kind shown in ``.ctl/maps``: ``"kdump"``, ``"lime"`` or ``"avml"``."""
    info: list[tuple[str, str]] = field(default_factory=list)
    machine: int | None = None
    """The ELF ``e_machine`` of the dumped machine where the header names it."""

    @property
    def mapped_bytes(self) -> int:
        """The bytes the regions cover."""
        return int(self.lengths.sum(dtype=np.uint64))

    def add_to(self, memmap: MemoryMap) -> None:
        """Add every region to ``memmap`` with one ``add_source_arrays`` (later regions
        and this dump win over earlier mappings), then set its word size and byte order
        where the dump says them, and its ``machine`` where the map has none.

        :raises FormatError: if the map's word size or byte order is already set to
            something else, or a region does not fit (nothing is added then).
        """
        name = self.source.name
        if self.wordsize is not None and memmap.wordsize not in (None, self.wordsize):
            raise FormatError(f"{name}: a {self.wordsize}-bit dump, but the map's wordsize "
                              f"is already {memmap.wordsize}")
        if self.endian is not None and memmap.endian not in (None, self.endian):
            raise FormatError(f"{name}: a {self.endian}-endian dump, but the map's endian is "
                              f"already {memmap.endian}")
        try:
            memmap.add_source_arrays(self.source, self.addresses, self.offsets, self.lengths,
                                     kind=self.kind)
        except FormatError:
            raise
        except ValueError as error:
            raise FormatError(" ".join(str(error).split())) from None
        if self.wordsize is not None:
            memmap.wordsize = self.wordsize
        if self.endian is not None:
            memmap.endian = self.endian
        if self.machine is not None and memmap.machine is None:
            memmap.machine = self.machine

    def close(self) -> None:
        """Close the source (only when it was not added to a map, which closes it)."""
        self.source.close()
