"""The segment index alone: override cases, the top of the address space, invariants."""

from __future__ import annotations

import random

import numpy as np
import pytest

import vmemfs.index as index_module
from vmemfs.index import ADDRESS_LIMIT, MASK64, Piece, SegmentIndex, flatten

TOP = ADDRESS_LIMIT


def layout(ix: SegmentIndex, start: int = 0, end: int = TOP) -> list[tuple[int, int, int, int]]:
    """The flattened resolution of a range: (start, end, source, offset) runs."""
    ix._check()
    return flatten(ix.resolve(start, end))


def build(*mappings: tuple[int, int, int]) -> SegmentIndex:
    """Insert (start, end, source) with offset 0 at each mapping's own start."""
    ix = SegmentIndex()
    for start, end, source in mappings:
        ix.insert(start, end, source, -start)
    return ix


# Each case draws the old mapping (A, source 0) over the new one (B, source 1), which wins.


def test_same_start_shorter() -> None:
    # A: [----------)
    # B: [----)
    ix = build((10, 20, 0), (10, 15, 1))
    assert layout(ix) == [(10, 15, 1, 0), (15, 20, 0, 5)]


def test_same_start_longer() -> None:
    # A: [----)
    # B: [----------)
    ix = build((10, 15, 0), (10, 20, 1))
    assert layout(ix) == [(10, 20, 1, 0)]


def test_inside() -> None:
    # A: [----------)
    # B:    [---)
    ix = build((10, 20, 0), (13, 16, 1))
    assert layout(ix) == [(10, 13, 0, 0), (13, 16, 1, 0), (16, 20, 0, 6)]
    assert len(ix) == 3


def test_head() -> None:
    # A:    [-------)
    # B: [-----)
    ix = build((10, 20, 0), (5, 12, 1))
    assert layout(ix) == [(5, 12, 1, 0), (12, 20, 0, 2)]


def test_tail() -> None:
    # A: [-------)
    # B:     [-------)
    ix = build((10, 20, 0), (15, 25, 1))
    assert layout(ix) == [(10, 15, 0, 0), (15, 25, 1, 0)]


def test_head_and_tail() -> None:
    # A: [----)  [----)
    # B:    [------)
    ix = build((10, 20, 0), (30, 40, 2), (15, 35, 1))
    assert layout(ix) == [(10, 15, 0, 0), (15, 35, 1, 0), (35, 40, 2, 5)]


def test_subsuming() -> None:
    # A:   [-) [-) [-)
    # B: [-------------)
    ix = build((10, 12, 0), (14, 16, 2), (18, 20, 3), (5, 25, 1))
    assert layout(ix) == [(5, 25, 1, 0)]
    assert len(ix) == 1


def test_adjacent() -> None:
    # A: [----)
    # B:      [----)
    ix = build((10, 15, 0), (15, 20, 1))
    assert layout(ix) == [(10, 15, 0, 0), (15, 20, 1, 0)]
    assert ix.extents() == [(10, 20)]


def test_exact_duplicate() -> None:
    # A: [----)
    # B: [----)
    ix = build((10, 15, 0), (10, 15, 1))
    assert layout(ix) == [(10, 15, 1, 0)]


def test_disjoint_leaves_a_hole() -> None:
    # A: [--)
    # B:       [--)
    ix = build((10, 15, 0), (20, 25, 1))
    assert ix.extents() == [(10, 15), (20, 25)]
    assert ix.lookup(17) is None
    assert ix.next_data(15) == 20
    assert ix.next_hole(12) == 15
    assert ix.next_hole(17) == 17
    assert ix.next_data(25) is None


def test_top_of_address_space() -> None:
    #                A: [--------) 2**64
    #                B:      [---) 2**64
    ix = build((TOP - 0x100, TOP, 0), (TOP - 0x10, TOP, 1))
    assert layout(ix) == [(TOP - 0x100, TOP - 0x10, 0, 0), (TOP - 0x10, TOP, 1, 0)]
    assert ix.extents() == [(TOP - 0x100, TOP)]
    assert ix.lookup(TOP - 1) == Piece(TOP - 0x10, TOP, 1, 0)
    assert ix.next_hole(TOP - 1) == TOP
    assert ix.mapped_bytes() == 0x100


def test_whole_address_space() -> None:
    ix = build((0, TOP, 0))
    assert ix.extents() == [(0, TOP)]
    assert ix.mapped_bytes() == TOP
    ix.insert(5, 6, 1, 0)
    assert layout(ix, 0, 10) == [(0, 5, 0, 0), (5, 6, 1, 5), (6, 10, 0, 6)]
    assert ix.lookup(TOP - 1) == Piece(6, TOP, 0, 6)


@pytest.mark.parametrize("base", [2**53 - 2, 2**63 - 2, 2**64 - 8])
def test_addresses_beyond_float_precision(base: int) -> None:
    # Neighbours that float64 cannot tell apart must stay distinct.
    ix = SegmentIndex()
    for k in range(4):
        ix.insert(base + k, base + k + 1, k, 0)
    ix.flush()
    for k in range(4):
        piece = ix.lookup(base + k)
        assert piece is not None
        assert (piece.start, piece.source) == (base + k, k)
    assert ix.extents() == [(base, base + 4)]
    ix.insert(base + 1, base + 2, 9, 0)
    assert [p.source for p in ix.resolve(base, base + 4)] == [0, 9, 2, 3]


def test_offsets_wrap_modulo_2_64() -> None:
    # A mapping at a high address of a source at offset 0: delta wraps around.
    ix = SegmentIndex()
    start = 0xFFFF_FFFF_8100_0000
    ix.insert(start, start + 0x1000, 0, -start)
    ix.flush()
    assert ix.lookup(start + 0x10) == Piece(start, start + 0x1000, 0, 0)
    assert ix.resolve(start + 0x10, start + 0x20) == [Piece(start + 0x10, start + 0x20, 0, 0x10)]


def test_bad_ranges_are_value_errors() -> None:
    ix = SegmentIndex()
    with pytest.raises(ValueError, match="passes 2\\*\\*64"):
        ix.insert(TOP - 1, TOP + 1, 0, 0)
    with pytest.raises(ValueError, match="outside"):
        ix.insert(-1, 5, 0, 0)
    with pytest.raises(ValueError, match="ends before"):
        ix.resolve(10, 5)
    with pytest.raises(ValueError):
        ix.insert_many([0, TOP], [5, TOP + 2], [0, 0], [0, 0])
    assert ix.extents() == []


def test_empty_insert_covers_nothing() -> None:
    ix = build((10, 20, 0))
    ix.insert(15, 15, 1, 0)
    assert layout(ix) == [(10, 20, 0, 0)]


def test_insert_many_matches_one_at_a_time() -> None:
    rng = random.Random(7)
    for ascending in (True, False):
        starts, ends = [], []
        cursor = 0
        for _ in range(500):
            if ascending:
                cursor += rng.randrange(0, 50)
                start = cursor
                cursor += rng.randrange(1, 50)
                end = cursor
            else:
                start = rng.randrange(10_000)
                end = start + rng.randrange(0, 300)
            starts.append(start)
            ends.append(end)
        sources = [i % 5 for i in range(500)]
        deltas = [rng.randrange(1 << 40) for _ in range(500)]
        one = SegmentIndex()
        one.insert(0, 20_000, 9, 0)  # something for the batch to override
        for row in zip(starts, ends, sources, deltas, strict=True):
            one.insert(*row)
        many = SegmentIndex()
        many.insert(0, 20_000, 9, 0)
        many.insert_many(np.array(starts, dtype=np.uint64), ends, sources, deltas)
        assert layout(one) == layout(many)


def test_merges_keep_every_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny thresholds force many merges and block splits.
    monkeypatch.setattr(index_module, "_MIN_TOP", 4)
    monkeypatch.setattr(index_module, "_BLOCK", 2)
    monkeypatch.setattr(index_module, "_SAMPLE", 3)
    rng = random.Random(3)
    ix = SegmentIndex()
    reference: dict[int, tuple[int, int]] = {}
    for step in range(600):
        start = rng.randrange(400)
        end = min(400, start + rng.choice([1, 2, 5, 30, 120]))
        delta = rng.randrange(1 << 64)
        ix.insert(start, end, step, delta)
        for a in range(start, end):
            reference[a] = (step, (a + delta) & MASK64)
        if step % 50 == 0:
            ix._check()
    got: dict[int, tuple[int, int]] = {}
    for piece in ix.resolve(0, 400):
        for a in range(piece.start, piece.end):
            got[a] = (piece.source, piece.offset + a - piece.start)
    assert got == reference
    for a in range(400):
        piece = ix.lookup(a)
        assert (piece is None) == (a not in reference)
        if piece is not None:
            assert (piece.source, piece.offset + a - piece.start) == reference[a]


def test_lookups_between_inserts_never_see_a_stale_piece(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``lookup`` remembers the piece it found last: every kind of insert (one, many,
    runs, and the merges they set off) must make it look again."""
    monkeypatch.setattr(index_module, "_MIN_TOP", 4)
    monkeypatch.setattr(index_module, "_SAMPLE", 3)
    rng = random.Random(8)
    ix = SegmentIndex()
    reference: dict[int, tuple[int, int]] = {}

    def check(address: int) -> None:
        piece = ix.lookup(address)
        assert (piece is None) == (address not in reference), address
        if piece is not None:
            assert piece.start <= address < piece.end
            assert (piece.source, piece.offset + address - piece.start) == reference[address]

    for step in range(400):
        start = rng.randrange(300)
        end = min(300, start + rng.choice([1, 3, 20, 90]))
        delta = rng.randrange(1 << 64)
        check(rng.randrange(start, end))          # remembered, then overridden
        kind = rng.choice(["one", "many", "runs"])
        if kind == "one":
            ix.insert(start, end, step, delta)
        elif kind == "many":
            ix.insert_many([start], [end], [step], [delta])
        else:
            ix.insert_runs(np.array([start], dtype=np.uint64),
                           np.array([end - 1], dtype=np.uint64),
                           np.array([step], dtype=np.int32),
                           np.array([delta], dtype=np.uint64))
        for a in range(start, end):
            reference[a] = (step, (a + delta) & MASK64)
        for address in (start, end - 1, rng.randrange(300)):
            check(address)


def test_memory_per_piece_is_a_few_tens_of_bytes() -> None:
    ix = SegmentIndex()
    rng = random.Random(11)
    for _ in range(20_000):
        start = rng.randrange(1 << 36)
        ix.insert(start, start + rng.randrange(1, 1 << 16), 1, 0)
    assert ix.nbytes() / len(ix) <= 32


def test_sources_in_use_and_arrays_are_read_only() -> None:
    ix = build((0, 10, 0), (0, 10, 1), (20, 30, 2))
    assert ix.sources_in_use() == {1, 2}
    starts, lasts, sources, deltas = ix.arrays()
    assert deltas.tolist() == [0, 2**64 - 20]
    assert starts.dtype == np.uint64 and sources.dtype == np.int32
    assert starts.tolist() == [0, 20] and lasts.tolist() == [9, 29]
    with pytest.raises(ValueError):
        starts[0] = 5


def test_top_layer_spanning_many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # No merges at all and tiny blocks: overrides must find covered starts in any block,
    # including blocks after the one where the new start falls.
    monkeypatch.setattr(index_module, "_MIN_TOP", 10**9)
    monkeypatch.setattr(index_module, "_BLOCK", 3)
    for seed in range(60):
        rng = random.Random(seed)
        ix = SegmentIndex()
        reference: dict[int, int] = {}
        for step in range(200):
            start = rng.randrange(2000)
            end = min(2000, start + rng.choice([1, 5, 20, 100, 400]))
            ix.insert(start, end, step, 0)
            for a in range(start, end):
                reference[a] = step
            ix._check()
        got = {a: p.source for p in ix.resolve(0, 2000) for a in range(p.start, p.end)}
        assert got == reference, seed
