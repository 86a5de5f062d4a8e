"""``MemoryMap.add_bytes``: the copies of all calls kept end to end in one source and the
calls recorded in arrays, with the contract of one source per call (SPEC §2)."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest

from vmemfs import HoleError, MemoryMap
from vmemfs.memmap import Mapping


def test_a_copy_is_mapped() -> None:
    data = bytearray(b"hello")
    m = MemoryMap()
    m.add_bytes(data, 0x1000)
    m.add_bytes(memoryview(b"-world-")[1:6], 0x1005)
    data[:] = b"XXXXX"
    assert m.get_bytes(0x1000, 10) == b"helloworld"


def test_reads_cross_from_one_call_into_the_next() -> None:
    """Adjacent calls: one extent, read through one request as through many."""
    m = MemoryMap()
    for number in range(100):
        m.add_bytes(bytes([number]) * 7, 0x10 + 7 * number)
    expected = b"".join(bytes([number]) * 7 for number in range(100))
    assert m.extents() == [(0x10, 0x10 + 700)]
    assert m.get_bytes(0x10, 700) == expected
    assert bytes(m.view(0x13, 9)) == expected[3:12]                # across two calls
    assert m.read(0x10 + 695, 100) == expected[695:]
    assert [p.offset for p in m.pieces(0x10, 0x10 + 21)] == [0, 0, 0]


def test_mappings_keep_the_order_of_every_kind_of_add(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"F" * 64)
    m = MemoryMap()
    m.add_bytes(b"ab", 0x100)
    m.add_bytes(b"", 0x200)                                         # covers nothing
    m.add_file(path, 0x101, offset=8, length=4)
    m.add_bytes(b"Z", 0x102)
    m.add_file_regions(path, [(0x300, 0, 2)])
    m.add_bytes(b"cd", 0x301)
    assert [(x.address, x.length, x.kind, x.offset) for x in m.mappings] == [
        (0x100, 2, "bytes", 0), (0x200, 0, "bytes", 0), (0x101, 4, "file", 8),
        (0x102, 1, "bytes", 0), (0x300, 2, "file", 0), (0x301, 2, "bytes", 0)]
    assert all(isinstance(x, Mapping) for x in m.mappings)
    assert m.mappings[0].source == "<bytes>"
    assert m.get_bytes(0x100, 5) == b"aFZFF"
    assert m.get_bytes(0x300, 3) == b"Fcd"
    assert not m.is_mapped(0x200)
    assert "6 mappings" in repr(m)
    assert m.file_names() == [str(path)]
    m.close()


@pytest.mark.parametrize(("address", "error"), [
    (-1, ValueError), (2**64 - 1, ValueError), (1.5, TypeError), ("0x10", TypeError)])
def test_bad_addresses_add_nothing(address: object, error: type[Exception]) -> None:
    m = MemoryMap.of_bytes(b"x", 0)
    with pytest.raises(error):
        m.add_bytes(b"ab", address)  # type: ignore[arg-type]
    assert len(m.mappings) == 1
    assert m.extents() == [(0, 1)]


def test_the_top_of_the_address_space() -> None:
    m = MemoryMap()
    m.add_bytes(b"top", 2**64 - 3)
    m.add_bytes(b"", 2**64)
    assert m.get_bytes(2**64 - 3, 3) == b"top"
    assert m.extents() == [(2**64 - 3, 2**64)]


@pytest.mark.parametrize("seed", range(5))
def test_against_a_byte_dict(seed: int) -> None:
    rng = random.Random(seed)
    m = MemoryMap()
    reference: dict[int, int] = {}
    for _ in range(400):
        address = rng.randrange(0, 0x4000)
        data = rng.randbytes(rng.randrange(0, 300))
        m.add_bytes(data, address)
        reference.update(zip(range(address, address + len(data)), data, strict=True))
    for _ in range(500):
        address = rng.randrange(0, 0x4200)
        size = rng.randrange(1, 600)
        expected = bytearray()
        for at in range(address, address + size):
            if at not in reference:
                break
            expected.append(reference[at])
        assert m.read(address, size) == expected
        if len(expected) < size:
            with pytest.raises(HoleError) as caught:
                m.get_bytes(address, size)
            assert caught.value.address == address + len(expected)


def test_a_call_leaves_no_object_for_the_garbage_collector() -> None:
    """What made many calls slow: an object per call that every full collection visits."""
    m = MemoryMap()
    blocks = [bytes([n % 256]) * (1 + n % 50) for n in range(20_000)]
    m.add_bytes(b"first", 0)
    gc.collect()
    before = len(gc.get_objects())
    for number, data in enumerate(blocks):
        m.add_bytes(data, 0x1000 + 64 * number)
    gc.collect()
    assert len(gc.get_objects()) - before < 500
    assert m.get_bytes(0x1000 + 64 * 19_999, 2) == blocks[19_999][:2]
