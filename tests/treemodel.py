"""The mount's tree without a mount: :func:`tree_of` a map, as ``mount.vmemfs`` builds it."""

from __future__ import annotations

from typing import Any

from vmemfs.memmap import MemoryMap
from vmemfs.tree import MountState, Tree, build


def tree_of(memory_map: MemoryMap, **options: Any) -> Tree:
    """The tree over ``memory_map`` with ``base``/``holes`` ``options``."""
    return build(MountState(memory_map, **options))
