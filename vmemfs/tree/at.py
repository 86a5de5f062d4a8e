"""``at/``: typed reads at any address, as files and symlinks (SPEC §4.8).

``at/`` lists nothing; looking up a decimal or ``0x`` address makes a directory node for
it, and looking into that directory makes one node per field.  All of them are dynamic
nodes of the :class:`~vmemfs.tree.nodes.NodeTable`: counted as the kernel learns of them
and dropped when it forgets them.  Values are computed at ``open`` (fixed for that open)
from the map's current word size and endian; links at ``readlink``.
"""

from __future__ import annotations

from collections.abc import Iterator

from vmemfs import typed
from vmemfs.tree.nodes import (
    DIRECTORY_MODE,
    READ_ONLY_MODE,
    SYMLINK_MODE,
    Attributes,
    BytesHandle,
    Handle,
    Node,
    NodeTable,
    NotFound,
    Refused,
    TooLarge,
)
from vmemfs.tree.state import MountState

_FIELD_NAMES = tuple(field.encode("ascii") for field in typed.FIELDS)


class AtDirectory(Node):
    """``at/``: any address can be looked up; nothing is listed."""

    def __init__(self, state: MountState, table: NodeTable) -> None:
        self.state = state
        self.table = table

    def attributes(self) -> Attributes:
        return Attributes(DIRECTORY_MODE, nlink=2)

    def lookup(self, name: bytes) -> Node:
        try:
            address = typed.parse_address_name(name.decode("ascii"))
        except UnicodeDecodeError:
            address = None
        if address is None:
            raise NotFound(name)
        return self.directory(address)

    def directory(self, address: int) -> AddressDirectory:
        """The (dynamic) node of ``at/0x…`` for ``address``."""
        node = self.table.dynamic(("at", address),
                                  lambda: AddressDirectory(self.state, self.table, address))
        node.parent = self
        return node  # type: ignore[return-value]

    def entries(self, position: int) -> Iterator[tuple[bytes, Node, int]]:
        return iter(())


class AddressDirectory(Node):
    """``at/ADDRESS/``: the value files and the links of one address."""

    def __init__(self, state: MountState, table: NodeTable, address: int) -> None:
        self.state = state
        self.table = table
        self.address = address

    def attributes(self) -> Attributes:
        return Attributes(DIRECTORY_MODE, nlink=2)

    def _child(self, field: str) -> Node:
        def make() -> Node:
            if field in typed.LINKS:
                return LinkNode(self.state, self.address, field)
            return ValueFile(self.state, self.address, field)
        node = self.table.dynamic(("at", self.address, field), make)
        node.parent = self
        return node

    def lookup(self, name: bytes) -> Node:
        if name not in _FIELD_NAMES:
            raise NotFound(name)
        return self._child(name.decode("ascii"))

    def entries(self, position: int) -> Iterator[tuple[bytes, Node, int]]:
        for number in range(position, len(typed.FIELDS)):
            yield _FIELD_NAMES[number], self._child(typed.FIELDS[number]), number + 1


class ValueFile(Node):
    """``at/ADDRESS/FIELD``: a value's text, computed at open (``direct_io``: no cache).

    Its size shows as 0 (the value is only known, and may only fail, at open).
    """

    def __init__(self, state: MountState, address: int, field: str) -> None:
        self.state = state
        self.address = address
        self.field = field

    def attributes(self) -> Attributes:
        return Attributes(READ_ONLY_MODE, volatile=True)

    def open(self, writing: bool, owner: bool) -> Handle:
        """:raises Refused: for writing; the errors of :func:`vmemfs.typed.value`
        (``ENODATA``, ``EIO``), and :class:`TooLarge` for an endless string."""
        if writing:
            raise Refused(self.inode)
        state = self.state
        try:
            text = typed.value(state.map, self.address, self.field, state.zero_filled)
        except typed.StringTooLong:
            raise TooLarge(self.address) from None
        return BytesHandle(text)


class LinkNode(Node):
    """``at/ADDRESS/deref``, ``next``, ``prev``: a symlink to ``../0x…``."""

    def __init__(self, state: MountState, address: int, field: str) -> None:
        self.state = state
        self.address = address
        self.field = field

    def attributes(self) -> Attributes:
        return Attributes(SYMLINK_MODE, size=len(b"../0x") + 16, volatile=True)

    def readlink(self) -> bytes:
        state = self.state
        target = typed.link(state.map, self.address, self.field, state.zero_filled)
        return b"../" + typed.address_name(target).encode("ascii")
