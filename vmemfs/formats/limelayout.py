"""The layout of a map written as a LiME capture: one record per extent (SPEC §3.6).

::

    record 0:  32-byte header {magic, version 1, s_addr, e_addr (inclusive), 8 zero bytes}
               the extent's e_addr - s_addr + 1 bytes
    record 1:  ...

Records follow each other with no padding, in ascending address order; every field is
little-endian whatever the map's byte order (the format does not say the machine's).  The
mount's ``views/lime`` serves this layout with the data read through the map
(docs/mounting.md, "Views"); :func:`vmemfs.open` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmemfs.formats.lime import HEADER, LIME_MAGIC, LIME_VERSION

HEADER_SIZE = HEADER.size
"""Bytes in one record header (32)."""

HEADER_DTYPE = np.dtype({
    "names": ["magic", "version", "s_addr", "e_addr"],
    "formats": ["<u4", "<u4", "<u8", "<u8"],
    "offsets": [0, 4, 8, 16],
    "itemsize": HEADER_SIZE,
})
"""One record header as numpy sees it; the 8 reserved bytes stay zero."""


@dataclass(frozen=True)
class LimeLayout:
    """Where every byte of the LiME capture of one map sits."""

    headers: bytes
    """Every record's header, one after the other (:data:`HEADER_SIZE` bytes each)."""
    starts: np.ndarray
    """The first address of each extent (``uint64``, ascending)."""
    lengths: np.ndarray
    """Each extent's length in bytes (``uint64``)."""
    header_offsets: np.ndarray
    """The file offset of each record's header (``uint64``); its data follows at
    ``header_offsets[i] + HEADER_SIZE``."""
    size: int
    """The size of the whole file."""


def lime_layout(extents: list[tuple[int, int]]) -> LimeLayout:
    """The LiME layout of a map with these ``extents`` (ascending, disjoint, non-empty).

    Runtime complexity: ``O(n)`` for ``n`` extents, vectorised (numpy).

    >>> layout = lime_layout([(0x1000, 0x3000)])
    >>> layout.size, layout.headers[:4], hex(int.from_bytes(layout.headers[16:24], "little"))
    (8224, b'EMiL', '0x2fff')
    """
    count = len(extents)
    starts = np.fromiter((start for start, _ in extents), dtype=np.uint64, count=count)
    lengths = np.fromiter((end - start for start, end in extents), dtype=np.uint64,
                          count=count)
    records = lengths + np.uint64(HEADER_SIZE)
    header_offsets = np.cumsum(records, dtype=np.uint64) - records
    table = np.zeros(count, dtype=HEADER_DTYPE)
    table["magic"] = LIME_MAGIC
    table["version"] = LIME_VERSION
    table["s_addr"] = starts
    table["e_addr"] = starts + lengths - np.uint64(1)
    size = int(records.sum(dtype=np.uint64))
    return LimeLayout(table.tobytes(), starts, lengths, header_offsets, size)
