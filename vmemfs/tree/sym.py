"""``sym/``: symbol names as symlinks into ``at/`` (SPEC §4.10 in docs/mounting.md).

The directory owns a range of inode numbers, one per usable name in sorted order, so a
kernel symbol table of 100,000+ names costs one list, not one node object per name.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_left
from collections.abc import Iterator, Mapping

from vmemfs import typed
from vmemfs.formats.symbols import file_names
from vmemfs.tree.nodes import (
    DIRECTORY_MODE,
    SYMLINK_MODE,
    Attributes,
    Node,
    NodeTable,
    NotFound,
    RangeOwner,
)

log = logging.getLogger(__name__)


class SymLink(Node):
    """``sym/NAME`` -> ``../at/0x…``."""

    def __init__(self, inode: int, address: int) -> None:
        self.inode = inode
        self.target = b"../at/" + typed.address_name(address).encode("ascii")

    def attributes(self) -> Attributes:
        return Attributes(SYMLINK_MODE, size=len(self.target))

    def readlink(self) -> bytes:
        return self.target


class SymDirectory(Node, RangeOwner):
    """``sym/``: one symlink per symbol whose name can be a file name."""

    def __init__(self, symbols: Mapping[str, int], table: NodeTable) -> None:
        usable, skipped = file_names(symbols)
        if skipped:
            log.info("sym/: %d symbol names cannot be file names (they hold '/')", skipped)
        self.names = sorted(os.fsencode(name) for name in usable)
        self.addresses = [usable[os.fsdecode(name)] for name in self.names]
        self.first = table.add_range(len(self.names), self)

    def attributes(self) -> Attributes:
        return Attributes(DIRECTORY_MODE, nlink=2)

    def child(self, inode: int) -> Node:
        number = inode - self.first
        if not 0 <= number < len(self.names):
            raise NotFound(inode)
        node = SymLink(inode, self.addresses[number])
        node.parent = self
        return node

    def lookup(self, name: bytes) -> Node:
        number = bisect_left(self.names, name)
        if number == len(self.names) or self.names[number] != name:
            raise NotFound(name)
        return self.child(self.first + number)

    def entries(self, position: int) -> Iterator[tuple[bytes, Node, int]]:
        for number in range(position, len(self.names)):
            yield self.names[number], self.child(self.first + number), number + 1
