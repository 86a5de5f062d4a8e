"""A small linked list in memory, for the typed-read tests (``at/``, ``sym/`` and
``vmemfs at``): three nodes ``{next, name}`` (64-bit little endian) from
:data:`CHAIN_ADDRESS`, and the 32-bit word ``0xdeadbeef`` at ``CHAIN_ADDRESS + 0x100``."""

from __future__ import annotations

import struct

CHAIN_ADDRESS = 0x10000000
NODES = [(0x10000000, b"first"), (0x10000040, b"second"), (0x10000080, b"third")]
"""Each node's address and name; a node's name follows its two words."""


def chain_bytes() -> bytes:
    """The 0x104 bytes to place at :data:`CHAIN_ADDRESS`."""
    blob = bytearray(0x104)
    for number, (address, name) in enumerate(NODES):
        at = address - CHAIN_ADDRESS
        following = NODES[number + 1][0] if number + 1 < len(NODES) else 0
        struct.pack_into("<QQ", blob, at, following, address + 16)
        blob[at + 16:at + 16 + len(name) + 1] = name + b"\0"
    struct.pack_into("<I", blob, 0x100, 0xDEADBEEF)
    return bytes(blob)
