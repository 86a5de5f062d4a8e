"""MemoryMap against a naive reference model: a dict from address to byte."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmemfs.index as index_module
from vmemfs import HoleError, MemoryMap

SPACE = 512
BASES = [0, 2**53 - 256, 2**63 - 256, 2**64 - SPACE]

mapping = st.tuples(
    st.integers(0, SPACE - 1),
    st.binary(min_size=0, max_size=48),
)
scenario = st.tuples(
    st.sampled_from(BASES),
    st.lists(mapping, min_size=1, max_size=40),
    st.lists(st.integers(0, SPACE - 1), min_size=1, max_size=8),
    st.binary(min_size=1, max_size=3),
    st.sampled_from([32, 64]),
)


def reference_of(base: int, mappings: list[tuple[int, bytes]]) -> dict[int, int]:
    memory: dict[int, int] = {}
    for offset, data in mappings:
        data = data[:SPACE - offset]
        for i, byte in enumerate(data):
            memory[base + offset + i] = byte
    return memory


def naive_read(memory: dict[int, int], address: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size and address + len(out) in memory:
        out.append(memory[address + len(out)])
    return bytes(out)


def naive_extents(memory: dict[int, int]) -> list[tuple[int, int]]:
    extents: list[list[int]] = []
    for address in sorted(memory):
        if extents and extents[-1][1] == address:
            extents[-1][1] = address + 1
        else:
            extents.append([address, address + 1])
    return [(s, e) for s, e in extents]


def naive_find_all(memory: dict[int, int], pattern: bytes, align: int) -> list[int]:
    return [a for a in sorted(memory)
            if a % align == 0 and naive_read(memory, a, len(pattern)) == pattern]


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenario)
def test_memory_map_matches_a_byte_dict(case: tuple) -> None:
    base, mappings, probes, pattern, wordsize = case
    # Small thresholds so that merges of the index's top layer happen inside examples.
    saved = index_module._MIN_TOP, index_module._BLOCK
    index_module._MIN_TOP, index_module._BLOCK = 3, 2
    try:
        check(base, mappings, probes, pattern, wordsize)
    finally:
        index_module._MIN_TOP, index_module._BLOCK = saved


def check(base: int, mappings: list[tuple[int, bytes]], probes: list[int], pattern: bytes,
          wordsize: int) -> None:
    m = MemoryMap()
    m.wordsize = wordsize
    for offset, data in mappings:
        m.add_bytes(data[:SPACE - offset], base + offset)
    m._index._check()
    memory = reference_of(base, mappings)
    assert m.extents() == naive_extents(memory)
    assert m.mapped_bytes() == len(memory)
    for probe in probes:
        address = base + probe
        assert m.is_mapped(address) == (address in memory)
        for size in (1, 7, 64):
            expected = naive_read(memory, address, size)
            assert m.read(address, size) == expected
            if expected:  # the view: the same bytes, up to the first hole
                assert bytes(m.view(address, size)) == expected
            else:
                try:
                    m.view(address, size)
                except HoleError as error:
                    assert error.address == address
                else:
                    raise AssertionError("a view of a hole did not raise")
            if address + size > 2**64:
                try:
                    m.get_bytes(address, size)
                except ValueError:
                    pass
                else:
                    raise AssertionError("a range past 2**64 was accepted")
            elif len(expected) == size:
                assert m.get_bytes(address, size) == expected
            else:
                try:
                    m.get_bytes(address, size)
                except HoleError as error:
                    assert error.address == address + len(expected)
                else:
                    raise AssertionError("a read across a hole did not raise")
    assert m.find_all(pattern) == naive_find_all(memory, pattern, 1)
    assert m.find_all_align(pattern) == naive_find_all(memory, pattern, wordsize // 8)
    start = base + probes[0]
    assert m.find_all(pattern, start) == [a for a in naive_find_all(memory, pattern, 1)
                                          if a >= start]
