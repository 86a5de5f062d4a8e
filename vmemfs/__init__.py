"""vmemfs: a sparse 64-bit memory map, and a FUSE filesystem that shows it as files.

>>> import vmemfs
>>> m = vmemfs.MemoryMap.of_bytes(b"\\x78\\x56\\x34\\x12", 0x1000)
>>> m.endian = "big"
>>> hex(m.get_int32(0x1000))
'0x78563412'
"""

from vmemfs.errors import FormatError, HoleError, NoEndianError, NoWordsizeError
from vmemfs.index import ADDRESS_LIMIT, Piece, SegmentIndex
from vmemfs.memmap import Mapping, MemoryMap
from vmemfs.opening import open
from vmemfs.sources import Source

__all__ = [
    "ADDRESS_LIMIT",
    "FormatError",
    "HoleError",
    "Mapping",
    "MemoryMap",
    "NoEndianError",
    "NoWordsizeError",
    "Piece",
    "SegmentIndex",
    "Source",
    "open",
]
__version__ = "0.1.0"
