"""The mounted tree as a pure model (no FUSE): a table of nodes over a memory map.

:func:`build` makes the tree of SPEC §4 (docs/mounting.md) for a :class:`MountState`;
:mod:`vmemfs.fs` serves it.  See :mod:`vmemfs.tree.nodes` for the node protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmemfs import ctl
from vmemfs.tree import files
from vmemfs.tree.at import AtDirectory
from vmemfs.tree.files import (
    CONTROL_INODES,
    ControlFile,
    Directory,
    ExtentsDirectory,
    MemFile,
    TextFile,
    cache_text,
    extent_name,
    maps_text,
)
from vmemfs.tree.find import find_directory
from vmemfs.tree.nodes import (
    Attributes,
    Handle,
    HandleTable,
    Node,
    NodeError,
    NodeTable,
    NotFound,
)
from vmemfs.tree.state import MountState, default_base
from vmemfs.tree.sym import SymDirectory
from vmemfs.tree.views import add_views

__all__ = [
    "Attributes",
    "Handle",
    "HandleTable",
    "MountState",
    "Node",
    "NodeError",
    "NodeTable",
    "NotFound",
    "Tree",
    "build",
    "default_base",
    "extent_name",
]


@dataclass
class Tree:
    """A mount's nodes: the table, the root, and the state they show."""

    state: MountState
    table: NodeTable
    root: Directory
    extents: ExtentsDirectory


def build(state: MountState) -> Tree:
    """The tree over ``state``: ``mem``, ``extents/``, ``.ctl/`` (and what the map offers).

    Runtime complexity: ``O(1)`` nodes made, whatever the number of extents.
    """
    table = NodeTable()
    memory_map = state.map
    root = Directory()
    table.add_fixed(files.ROOT, root)
    root.parent = root
    root.add(b"mem", table.add_fixed(files.MEM, MemFile(state)))
    extents = ExtentsDirectory(state, table)
    assert extents.first == files.FIRST_EXTENT
    root.add(b"extents", table.add_fixed(files.EXTENTS, extents))
    control = Directory()
    root.add(b".ctl", table.add_fixed(files.CTL, control))

    for name in ctl.CONTROLS:
        node = ControlFile(name, state)
        control.add(name.encode("ascii"), table.add_fixed(CONTROL_INODES[name], node))
    control.add(b"maps", table.add_fixed(files.CTL_MAPS, TextFile(lambda: maps_text(state))))
    control.add(b"cache", table.add_fixed(
        files.CTL_CACHE, TextFile(lambda: cache_text(state), volatile=True)))
    vmcoreinfo = memory_map.vmcoreinfo
    if vmcoreinfo is not None:
        control.add(b"vmcoreinfo",
                    table.add_fixed(files.CTL_VMCOREINFO, TextFile(lambda: vmcoreinfo)))
    at = AtDirectory(state, table)
    root.add(b"at", table.add_fixed(files.AT, at))
    root.add(b"find", table.add_fixed(files.FIND, find_directory(state, table)))
    if memory_map.symbols is not None:
        root.add(b"sym", table.add_fixed(files.SYM, SymDirectory(memory_map.symbols, table)))
    root.add(b"views", add_views(state, table))
    root.nlink = 2 + sum(1 for _, child in root.children if child.is_directory())
    return Tree(state, table, root, extents)
