"""The mounted tree as a model, without FUSE: names, sizes, the base rule, reads, .ctl.

:class:`Layout` below drives the node table the way the adapter does (inode numbers in,
names, attributes and bytes out), so each check reads as the request it stands for.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmemfs import HoleError, MemoryMap
from vmemfs.ctl import ControlValueError
from vmemfs.sources import Buffer
from vmemfs.tree import MountState, NotFound, build, default_base, extent_name
from vmemfs.tree import files as tree
from vmemfs.tree.nodes import (
    Attributes,
    Handle,
    IsDirectory,
    NodeError,
    NotDirectory,
    Refused,
)


class Layout:
    """Requests by inode number against the tree of one map (what the adapter sends)."""

    def __init__(self, memory_map: MemoryMap, **options: Any) -> None:
        self.state = MountState(memory_map, **options)
        self.tree = build(self.state)
        self.table = self.tree.table

    def __getattr__(self, name: str) -> Any:
        return getattr(self.state, name)       # base, mem_size, set_base, read_mem, ...

    @property
    def mem_blocks(self) -> int:
        return self.attributes(tree.MEM).blocks

    @property
    def inode_count(self) -> int:
        return self.table.node_count

    def attributes(self, inode: int) -> Attributes:
        return self.table.get(inode).attributes()

    def lookup(self, parent: int, name: bytes) -> int:
        return self.table.get(parent).lookup(name).inode

    def entries(self, directory: int, position: int = 0) -> Iterator[tuple[bytes, int, int]]:
        for name, node, following in self.table.get(directory).entries(position):
            yield name, node.inode, following

    def open(self, inode: int, writing: bool = False) -> Handle:
        return self.table.get(inode).open(writing, True)

    def read(self, inode: int, offset: int, size: int) -> Buffer:
        return self.open(inode).read(offset, size)

    def read_extent(self, inode: int, offset: int, size: int) -> Buffer:
        return self.read(inode, offset, size)

    def maps_text(self) -> bytes:
        return bytes(self.read(tree.CTL_MAPS, 0, 1 << 30))

    def control_name(self, inode: int) -> str | None:
        try:
            self.table.get(inode).truncate(True)
        except NodeError:
            return None
        return next(name for name, number in tree.CONTROL_INODES.items() if number == inode)

    def write_control(self, inode: int, offset: int, data: bytes) -> int:
        return self.open(inode, writing=True).write(offset, data)

TOP = 2**64
HALF = 2**63


def two_extents() -> MemoryMap:
    """::

        0x1000      0x3000      0x5000  0x5010
        [  "A"*0x2000  ]  hole  [ "B"*16 ]
    """
    memory_map = MemoryMap.of_bytes(b"A" * 0x2000, 0x1000)
    memory_map.add_bytes(b"B" * 0x10, 0x5000)
    return memory_map


# -------------------------------------------------------------------- the base rule


@pytest.mark.parametrize(("extents", "base"), [
    ([], 0),
    ([(0, 1)], 0),
    ([(HALF - 1, HALF + 1)], 0),
    ([(0x1000, 0x2000), (0xffffffff81000000, 0xffffffff82000000)], 0),
    ([(HALF, HALF + 1)], HALF),
    ([(0xffffffff81000000, 0xffffffff82000000)], 0xffffffff00000000),
    ([(0xffff888000000000, 0xffff888000001000), (TOP - 1, TOP)], 0xffff888000000000),
    ([(0xfffffffffffff000, TOP)], 0xffffffff00000000),
])
def test_default_base(extents: list[tuple[int, int]], base: int) -> None:
    assert default_base(extents) == base


def test_layout_uses_default_base_unless_told() -> None:
    memory_map = MemoryMap.of_bytes(b"kernel", 0xffffffff81000000)
    layout = Layout(memory_map)
    assert layout.base == layout.default_base == 0xffffffff00000000
    assert layout.mem_size == 0x81000000 + 6
    assert bytes(layout.read_mem(0x81000000, 100)) == b"kernel"
    assert Layout(memory_map, base=0xffffffff81000002).read_mem(0, 100) == b"rnel"


# -------------------------------------------------------------------- sizes and blocks


def test_empty_map() -> None:
    layout = Layout(MemoryMap())
    assert (layout.base, layout.mem_size, layout.mem_blocks) == (0, 0, 0)
    assert layout.read_mem(0, 4096) == b""
    assert list(layout.entries(tree.EXTENTS)) == []
    assert layout.maps_text() == b""
    assert layout.attributes(tree.MEM).size == 0


def test_mem_size_and_blocks_follow_base() -> None:
    layout = Layout(two_extents())
    assert layout.mem_size == 0x5010
    assert layout.mem_blocks == (0x2000 + 0x200) // 512  # 16 mapped bytes take a block
    layout.set_base(0x2000)
    assert layout.mem_size == 0x3010
    assert layout.mem_blocks == (0x1000 + 0x200) // 512
    layout.set_base(0x5010)
    assert (layout.mem_size, layout.mem_blocks) == (0, 0)
    layout.set_base(TOP - 1)
    assert layout.mem_size == 0
    with pytest.raises(ControlValueError):
        layout.set_base(TOP)
    assert layout.base == TOP - 1


def test_mem_size_stops_at_the_largest_file_size() -> None:
    memory_map = MemoryMap.of_bytes(b"low", 0x1000)
    memory_map.add_bytes(b"high", TOP - 4)
    layout = Layout(memory_map)
    assert layout.base == 0
    assert layout.mem_size == 2**63 - 1
    assert layout.mem_blocks == 1  # "high" lies beyond the end of mem
    layout.set_base(TOP - 0x1000)
    assert layout.mem_size == 0x1000
    assert bytes(layout.read_mem(0xffc, 10)) == b"high"


def test_attributes() -> None:
    layout = Layout(two_extents())
    mem = layout.attributes(tree.MEM)
    assert (mem.mode, mem.size, mem.volatile) == (0o100444, 0x5010, False)  # page-cached
    first = layout.attributes(tree.FIRST_EXTENT)
    assert (first.mode, first.size, first.blocks, first.volatile) == (0o100444, 0x2000, 16, False)
    second = layout.attributes(tree.FIRST_EXTENT + 1)
    assert (second.size, second.blocks) == (0x10, 1)
    for directory in (tree.ROOT, tree.EXTENTS, tree.CTL):
        assert layout.attributes(directory).mode == 0o40555
    assert layout.attributes(tree.ROOT).nlink == 7   # 2 + extents, .ctl, at, find, views
    base = layout.attributes(tree.CTL_BASE)
    assert (base.mode, base.size, base.volatile) == (0o100644, 19, True)
    maps = layout.attributes(tree.CTL_MAPS)
    assert (maps.mode, maps.size) == (0o100444, len(layout.maps_text()))
    for missing in (0, 10, tree.FIRST_EXTENT + 2, 10**9):
        with pytest.raises(NotFound):
            layout.attributes(missing)
    assert layout.inode_count == 11 + 2 + 4 + 3   # .ctl/cache, find/ (4), views/ (3)


# -------------------------------------------------------------------- names


def test_names_and_lookup() -> None:
    layout = Layout(two_extents())
    assert [name for name, _, _ in layout.entries(tree.ROOT)] == [
        b"mem", b"extents", b".ctl", b"at", b"find", b"views"]
    assert [name for name, _, _ in layout.entries(tree.CTL)] == [
        b"wordsize", b"endian", b"base", b"holes", b"maps", b"cache"]
    extents = list(layout.entries(tree.EXTENTS))
    assert extents == [
        (b"0000000000001000-0000000000003000", tree.FIRST_EXTENT, 1),
        (b"0000000000005000-0000000000005010", tree.FIRST_EXTENT + 1, 2),
    ]
    assert list(layout.entries(tree.EXTENTS, 1)) == extents[1:]
    assert list(layout.entries(tree.EXTENTS, 2)) == []
    assert list(layout.entries(tree.CTL, 4)) == [(b"maps", tree.CTL_MAPS, 5),
                                                 (b"cache", tree.CTL_CACHE, 6)]
    for name, inode, _ in extents:
        assert layout.lookup(tree.EXTENTS, name) == inode
    assert layout.lookup(tree.ROOT, b"mem") == tree.MEM
    assert layout.lookup(tree.ROOT, b".ctl") == tree.CTL
    assert layout.lookup(tree.CTL, b"holes") == tree.CTL_HOLES
    for parent, name in [
        (tree.ROOT, b"maps"), (tree.CTL, b"mem"),
        (tree.EXTENTS, b"0000000000001000-0000000000003001"),   # wrong end
        (tree.EXTENTS, b"0000000000001001-0000000000003000"),   # inside an extent
        (tree.EXTENTS, b"0000000000001000-0000000000003000 "),
        (tree.EXTENTS, b"0000000000001000-00000000000030000"),
        (tree.EXTENTS, b"000000000000100A-0000000000003000"),   # upper case
        (tree.EXTENTS, b"0000000000000000-0000000000001000"),   # before the first
        (tree.EXTENTS, b"1000-3000"),
    ]:
        with pytest.raises(NotFound):
            layout.lookup(parent, name)
    with pytest.raises(NotDirectory):
        layout.lookup(tree.MEM, b"x")
    with pytest.raises(NotDirectory):
        list(layout.entries(tree.MEM))


def test_extent_at_the_top_of_the_address_space() -> None:
    layout = Layout(MemoryMap.of_bytes(b"top", TOP - 3))
    [(name, inode, _)] = list(layout.entries(tree.EXTENTS))
    assert name == b"fffffffffffffffd-10000000000000000" == extent_name(TOP - 3, TOP)
    assert layout.lookup(tree.EXTENTS, name) == inode
    assert bytes(layout.read_extent(inode, 0, 10)) == b"top"
    assert layout.base == 0xffffffff00000000
    assert bytes(layout.read_mem(0xfffffffd, 10)) == b"top"


# -------------------------------------------------------------------- reading mem


def test_read_mem_under_eio() -> None:
    layout = Layout(two_extents())
    with pytest.raises(HoleError) as caught:
        layout.read_mem(0, 10)
    assert caught.value.address == 0
    assert bytes(layout.read_mem(0x1000, 16)) == b"A" * 16
    assert bytes(layout.read_mem(0x2ff0, 0x100)) == b"A" * 16        # short at the hole
    with pytest.raises(HoleError) as caught:
        layout.read_mem(0x3000, 10)
    assert caught.value.address == 0x3000
    assert bytes(layout.read_mem(0x5008, 0x100)) == b"B" * 8          # short at the end
    assert layout.read_mem(0x5010, 10) == b""
    assert layout.read_mem(2**62, 10) == b""


def test_read_mem_under_zero() -> None:
    layout = Layout(two_extents(), holes="zero")
    assert bytes(layout.read_mem(0, 0x1004)) == bytes(0x1000) + b"AAAA"
    assert bytes(layout.read_mem(0x2ffe, 0x2004)) == b"AA" + bytes(0x2000) + b"BB"
    assert bytes(layout.read_mem(0x5008, 0x100)) == b"B" * 8
    assert layout.read_mem(0x5010, 1) == b""
    layout.set_holes("eio")
    with pytest.raises(HoleError):
        layout.read_mem(0, 1)
    with pytest.raises(ControlValueError):
        layout.set_holes("ones")
    assert layout.holes == "eio"


def test_read_extent_and_text() -> None:
    layout = Layout(two_extents())
    assert bytes(layout.read_extent(tree.FIRST_EXTENT, 0x1ffe, 100)) == b"AA"
    assert layout.read_extent(tree.FIRST_EXTENT, 0x2000, 100) == b""
    assert bytes(layout.read(tree.FIRST_EXTENT + 1, 0, 100)) == b"B" * 16
    assert layout.read(tree.CTL_BASE, 0, 100) == b"0x0000000000000000\n"
    assert layout.read(tree.CTL_BASE, 2, 4) == b"0000"
    assert layout.read(tree.CTL_HOLES, 0, 100) == b"eio\n"
    assert layout.read(tree.CTL_MAPS, 0, 10**6) == layout.maps_text()
    with pytest.raises(NotFound):
        layout.read_extent(tree.FIRST_EXTENT + 2, 0, 1)
    with pytest.raises(IsDirectory):
        layout.read(tree.EXTENTS, 0, 1)


def test_maps_text_lists_every_mapping_in_order() -> None:
    memory_map = two_extents()
    memory_map.add_bytes(b"C", 0x1000)   # overrides part of the first: still listed
    lines = Layout(memory_map).maps_text().decode().splitlines()
    assert lines == [str(mapping) for mapping in memory_map.mappings]
    assert len(lines) == 3
    assert lines[0].startswith("0x0000000000001000-0x0000000000003000 bytes")


def test_reference_model_seeded() -> None:
    """Random byte strings at random addresses against a byte dict, both hole policies."""
    rng = random.Random(20240611)
    for _ in range(30):
        memory_map = MemoryMap()
        reference: dict[int, int] = {}
        for _ in range(rng.randrange(1, 8)):
            address = rng.randrange(0, 600)
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
            memory_map.add_bytes(data, address)
            reference.update(zip(range(address, address + len(data)), data, strict=True))
        top = max(reference) + 1
        for _ in range(40):
            base = rng.randrange(0, top + 10)
            layout = Layout(memory_map, base=base)
            assert layout.mem_size == max(0, top - base)
            assert layout.mem_blocks == -(-sum(1 for a in reference if a >= base) // 512)
            offset, size = rng.randrange(0, 700), rng.randrange(1, 300)
            start = base + offset
            wanted = range(start, min(start + size, top))
            zero_filled = bytes(reference.get(address, 0) for address in wanted)
            layout.set_holes("zero")
            assert bytes(layout.read_mem(offset, size)) == zero_filled
            layout.set_holes("eio")
            if not wanted:
                assert layout.read_mem(offset, size) == b""
            elif start not in reference:
                with pytest.raises(HoleError):
                    layout.read_mem(offset, size)
            else:
                expected = bytearray()
                for address in wanted:
                    if address not in reference:
                        break
                    expected.append(reference[address])
                assert bytes(layout.read_mem(offset, size)) == bytes(expected)


# -------------------------------------------------------------------- a shrinking file


def test_bytes_lost_from_a_shrunken_file_read_as_holes(tmp_path: Path) -> None:
    path = tmp_path / "dump"
    path.write_bytes(b"x" * 0x3000)
    memory_map = MemoryMap.of_file(str(path), 0x10000)
    layout = Layout(memory_map)
    assert bytes(layout.read_extent(tree.FIRST_EXTENT, 0, 4)) == b"xxxx"
    os.truncate(path, 0x1000)
    assert layout.attributes(tree.FIRST_EXTENT).size == 0x3000    # the layout stays
    with pytest.raises(HoleError) as caught:
        layout.read_extent(tree.FIRST_EXTENT, 0xff0, 0x100)       # never a short read
    assert caught.value.address == 0x11000
    with pytest.raises(HoleError):
        layout.read_mem(0x12000, 16)
    assert bytes(layout.read_extent(tree.FIRST_EXTENT, 0, 16)) == b"x" * 16
    memory_map.close()


# -------------------------------------------------------------------- control writes


def test_write_control() -> None:
    memory_map = two_extents()
    layout = Layout(memory_map)
    assert layout.write_control(tree.CTL_WORDSIZE, 0, b"64\n") == 3
    assert memory_map.wordsize == 64
    assert layout.write_control(tree.CTL_ENDIAN, 0, b"be") == 2
    assert memory_map.endian == "big"
    layout.write_control(tree.CTL_BASE, 0, b"0x2000\n")
    assert (layout.base, layout.mem_size) == (0x2000, 0x3010)
    assert layout.read(tree.CTL_BASE, 0, 100) == b"0x0000000000002000\n"
    layout.write_control(tree.CTL_HOLES, 0, b"zero\n")
    assert bytes(layout.read_mem(0x1000, 4)) == bytes(4)
    layout.write_control(tree.CTL_WORDSIZE, 0, b"unset\n")
    assert memory_map.wordsize is None
    assert layout.read(tree.CTL_WORDSIZE, 0, 100) == b"unset\n"


@pytest.mark.parametrize(("inode", "offset", "data"), [
    (tree.CTL_WORDSIZE, 0, b"48\n"),
    (tree.CTL_WORDSIZE, 1, b"4"),
    (tree.CTL_ENDIAN, 0, b"pdp\n"),
    (tree.CTL_BASE, 0, b"-1\n"),
    (tree.CTL_BASE, 0, b"0x10000000000000000"),
    (tree.CTL_BASE, 19, b"0x1000\n"),
    (tree.CTL_HOLES, 0, b""),
])
def test_refused_control_write_changes_nothing(inode: int, offset: int, data: bytes) -> None:
    memory_map = two_extents()
    memory_map.wordsize = 32
    layout = Layout(memory_map, base=0x1000)
    before = {i: layout.read(i, 0, 100) for i in (tree.CTL_WORDSIZE, tree.CTL_ENDIAN,
                                                   tree.CTL_BASE, tree.CTL_HOLES)}
    with pytest.raises(ControlValueError):
        layout.write_control(inode, offset, data)
    assert {i: layout.read(i, 0, 100) for i in before} == before
    assert (layout.mem_size, memory_map.wordsize) == (0x4010, 32)


def test_only_control_files_are_writable() -> None:
    layout = Layout(two_extents())
    for inode in (tree.MEM, tree.CTL_MAPS, tree.FIRST_EXTENT, tree.ROOT):
        assert layout.control_name(inode) is None
        with pytest.raises((Refused, IsDirectory)):
            layout.write_control(inode, 0, b"64")
