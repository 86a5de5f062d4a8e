"""The override indexes compared by ``index_bench``, behind one small interface.

Every implementation keeps the same resolved map: a mapping ``[start, end)`` inserted later
wins wherever it overlaps earlier ones, and each address ``a`` of a mapping is served by
``source`` at offset ``(a + delta) mod 2**64``.  Storing ``delta`` instead of an offset lets
every implementation split a piece without touching its value.

* :class:`VmemfsIndex` — ``vmemfs.index.SegmentIndex`` itself.
* :class:`RebuildIndex` — the original design, written here for comparison: keep the list
  of mappings and, after every added mapping, recompute the whole resolved layout from it
  with a segment tree over the elementary intervals (vectorised with numpy, so the
  baseline is as fast as that design gets).
* :class:`IntervalTreeIndex` — ``intervaltree.IntervalTree``: ``chop`` then ``addi``.
* :class:`PortionIndex` — ``portion.IntervalDict``: assignment overrides.
* :class:`SortedDictIndex` — a plain ``sortedcontainers.SortedDict`` from piece start to
  ``(last, source, delta)``, trimmed and split on insert.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sortedcontainers import SortedDict

from vmemfs.index import ADDRESS_LIMIT, MASK64, Piece, SegmentIndex

U64_MAX = np.uint64(MASK64)


class IndexUnderTest:
    """The interface ``index_bench`` drives.

    ``insert(start, end, source, delta)`` is a plain attribute holding the cheapest
    callable each implementation offers, so the per-insert timing measures the structure,
    not an extra layer of Python calls.
    """

    name = ""
    insert: Callable[[int, int, int, int], None]

    def lookup(self, address: int) -> tuple[int, int] | None:
        """``(source, offset)`` serving ``address``, or ``None`` for a hole."""
        raise NotImplementedError

    def resolve(self, start: int, end: int) -> list[Piece]:
        """Pieces serving ``[start, end)``, clipped to it, ascending."""
        raise NotImplementedError

    def pieces(self) -> list[Piece]:
        """The whole resolved layout, ascending."""
        return self.resolve(0, ADDRESS_LIMIT)

    def piece_count(self) -> int:
        """How many pieces the structure holds."""
        raise NotImplementedError

    def finish(self) -> None:
        """Complete any deferred work (only :class:`RebuildIndex` defers)."""


def _piece(start: int, end: int, source: int, delta: int) -> Piece:
    return Piece(start, end, source, (start + delta) & MASK64)


# --------------------------------------------------------------------- vmemfs

class VmemfsIndex(IndexUnderTest):
    """``vmemfs.index.SegmentIndex``."""

    name = "vmemfs"

    def __init__(self) -> None:
        self.index = SegmentIndex()
        self.insert = self.index.insert

    def lookup(self, address: int) -> tuple[int, int] | None:
        piece = self.index.lookup(address)
        if piece is None:
            return None
        return piece.source, (piece.offset + address - piece.start) & MASK64

    def resolve(self, start: int, end: int) -> list[Piece]:
        return self.index.resolve(start, end)

    def piece_count(self) -> int:
        return len(self.index)


# --------------------------------------------------------------------- rebuild

class RebuildIndex(IndexUnderTest):
    """The original design: the resolved layout is recomputed from all mappings on every add.

    The rebuild sorts the mapping boundaries into elementary intervals, marks every mapping
    on a segment tree over them with ``max(mapping number)`` (the latest mapping wins),
    pushes the marks down to the leaves and joins runs with one winner into pieces.  Each
    rebuild costs ``O(n log n)`` numpy work for ``n`` mappings, so ``n`` one-at-a-time
    inserts cost ``O(n² log n)``.

    With ``deferred=True`` the layout is rebuilt only by :meth:`finish` (for the
    correctness check at sizes the per-insert rebuild cannot reach).
    """

    name = "rebuild"

    def __init__(self, *, deferred: bool = False) -> None:
        self._count = 0
        self._starts = np.empty(16, dtype=np.uint64)
        self._lasts = np.empty(16, dtype=np.uint64)
        self._sources = np.empty(16, dtype=np.int64)
        self._deltas = np.empty(16, dtype=np.uint64)
        self.layout = (np.empty(0, np.uint64), np.empty(0, np.uint64),
                       np.empty(0, np.int64), np.empty(0, np.uint64))
        self.insert = self._add_deferred if deferred else self._add_and_rebuild

    def _add_deferred(self, start: int, end: int, source: int, delta: int) -> None:
        if start == end:
            return
        n = self._count
        if n == len(self._starts):
            for attribute in ("_starts", "_lasts", "_sources", "_deltas"):
                old = getattr(self, attribute)
                grown = np.empty(2 * n, dtype=old.dtype)
                grown[:n] = old
                setattr(self, attribute, grown)
        self._starts[n] = start
        self._lasts[n] = end - 1
        self._sources[n] = source
        self._deltas[n] = delta & MASK64
        self._count = n + 1

    def _add_and_rebuild(self, start: int, end: int, source: int, delta: int) -> None:
        self._add_deferred(start, end, source, delta)
        self.finish()

    def finish(self) -> None:
        n = self._count
        starts, lasts = self._starts[:n], self._lasts[:n]
        if n == 0:
            return
        # Elementary intervals begin at every start and right after every last.
        after = lasts[lasts < U64_MAX] + np.uint64(1)
        bounds = np.unique(np.concatenate((starts, after)))
        leaves = len(bounds)
        lo = np.searchsorted(bounds, starts).astype(np.int64)
        hi = np.searchsorted(bounds, lasts, side="right").astype(np.int64)
        size = 1 << max(leaves - 1, 1).bit_length()
        mark = np.full(2 * size, -1, dtype=np.int64)
        left, right, number = lo + size, hi + size, np.arange(n, dtype=np.int64)
        while len(left):
            odd = (left & 1) == 1
            np.maximum.at(mark, left[odd], number[odd])
            left = left + odd
            odd = (right & 1) == 1
            right = right - odd
            np.maximum.at(mark, right[odd], number[odd])
            left >>= 1
            right >>= 1
            alive = left < right
            left, right, number = left[alive], right[alive], number[alive]
        first = 1
        while first < size:
            parents = np.arange(first, 2 * first)
            np.maximum(mark[2 * parents], mark[parents], out=mark[2 * first:4 * first:2])
            np.maximum(mark[2 * parents + 1], mark[parents],
                       out=mark[2 * first + 1:4 * first:2])
            first *= 2
        winner = mark[size:size + leaves]
        leaf_lasts = np.empty(leaves, dtype=np.uint64)
        leaf_lasts[:-1] = bounds[1:] - np.uint64(1)
        leaf_lasts[-1] = U64_MAX
        mapped = winner >= 0
        # Join consecutive leaves with the same winner into one piece.
        begins = mapped.copy()
        begins[1:] &= winner[1:] != winner[:-1]
        ends = mapped.copy()
        ends[:-1] &= winner[:-1] != winner[1:]
        piece_winner = winner[begins]
        self.layout = (bounds[begins], leaf_lasts[ends],
                       self._sources[piece_winner], self._deltas[piece_winner])

    def lookup(self, address: int) -> tuple[int, int] | None:
        starts, lasts, sources, deltas = self.layout
        j = int(starts.searchsorted(np.uint64(address), side="right")) - 1
        if j < 0 or int(lasts[j]) < address:
            return None
        return int(sources[j]), (address + int(deltas[j])) & MASK64

    def resolve(self, start: int, end: int) -> list[Piece]:
        if start >= end:
            return []
        starts, lasts, sources, deltas = self.layout
        last = end - 1
        j0 = int(lasts.searchsorted(np.uint64(start), side="left"))
        j1 = int(starts.searchsorted(np.uint64(last), side="right"))
        result = []
        for s, piece_last, source, delta in zip(starts[j0:j1].tolist(),
                                                lasts[j0:j1].tolist(),
                                                sources[j0:j1].tolist(),
                                                deltas[j0:j1].tolist(), strict=True):
            s = max(s, start)
            result.append(_piece(s, min(piece_last, last) + 1, source, delta))
        return result

    def piece_count(self) -> int:
        return len(self.layout[0])


# --------------------------------------------------------------------- intervaltree

class IntervalTreeIndex(IndexUnderTest):
    """``intervaltree.IntervalTree``: ``chop(start, end)`` then ``addi(start, end, value)``."""

    name = "intervaltree"

    def __init__(self) -> None:
        from intervaltree import IntervalTree

        self.tree = IntervalTree()
        tree = self.tree

        def insert(start: int, end: int, source: int, delta: int) -> None:
            if start < end:
                tree.chop(start, end)
                tree.addi(start, end, (source, delta & MASK64))

        self.insert = insert

    def lookup(self, address: int) -> tuple[int, int] | None:
        for interval in self.tree.at(address):
            source, delta = interval.data
            return source, (address + delta) & MASK64
        return None

    def resolve(self, start: int, end: int) -> list[Piece]:
        result = []
        for interval in sorted(self.tree.overlap(start, end)):
            source, delta = interval.data
            result.append(_piece(max(interval.begin, start), min(interval.end, end),
                                 source, delta))
        return result

    def pieces(self) -> list[Piece]:
        return [_piece(i.begin, i.end, *i.data) for i in sorted(self.tree)]

    def piece_count(self) -> int:
        return len(self.tree)


# --------------------------------------------------------------------- portion

class PortionIndex(IndexUnderTest):
    """``portion.IntervalDict``: ``d[closedopen(start, end)] = value`` overrides."""

    name = "portion"

    def __init__(self) -> None:
        import portion

        self.dict = portion.IntervalDict()
        mapping = self.dict
        closedopen = portion.closedopen

        def insert(start: int, end: int, source: int, delta: int) -> None:
            if start < end:
                mapping[closedopen(start, end)] = (source, delta & MASK64)

        self.insert = insert
        self._closedopen = closedopen

    def lookup(self, address: int) -> tuple[int, int] | None:
        value = self.dict.get(address)
        if value is None:
            return None
        source, delta = value
        return source, (address + delta) & MASK64

    def _atomic_pieces(self, items: object) -> list[Piece]:
        result = []
        for interval, (source, delta) in items:  # type: ignore[attr-defined]
            for atomic in interval:
                result.append(_piece(atomic.lower, atomic.upper, source, delta))
        result.sort()
        return result

    def resolve(self, start: int, end: int) -> list[Piece]:
        return self._atomic_pieces(self.dict[self._closedopen(start, end)].items())

    def pieces(self) -> list[Piece]:
        return self._atomic_pieces(self.dict.items())

    def piece_count(self) -> int:
        return sum(len(interval) for interval in self.dict.keys())


# --------------------------------------------------------------------- SortedDict

class SortedDictIndex(IndexUnderTest):
    """A plain ``SortedDict``: piece start -> ``(last, source, delta)``, disjoint pieces."""

    name = "SortedDict"

    def __init__(self) -> None:
        self.map = SortedDict()
        pieces = self.map
        keys = pieces.keys()

        def insert(start: int, end: int, source: int, delta: int) -> None:
            if start >= end:
                return
            last = end - 1
            first = pieces.bisect_left(start)
            stop = pieces.bisect_right(last)
            if first:
                before = keys[first - 1]
                before_last, before_source, before_delta = pieces[before]
                if before_last >= start:
                    pieces[before] = (start - 1, before_source, before_delta)
                    if before_last > last:
                        pieces[last + 1] = (before_last, before_source, before_delta)
            if stop > first:
                covered = keys[first:stop]
                tail_last, tail_source, tail_delta = pieces[covered[-1]]
                for key in covered:
                    del pieces[key]
                if tail_last > last:
                    pieces[last + 1] = (tail_last, tail_source, tail_delta)
            pieces[start] = (last, source, delta & MASK64)

        self.insert = insert

    def lookup(self, address: int) -> tuple[int, int] | None:
        i = self.map.bisect_right(address)
        if not i:
            return None
        _start, (last, source, delta) = self.map.peekitem(i - 1)
        if last < address:
            return None
        return source, (address + delta) & MASK64

    def resolve(self, start: int, end: int) -> list[Piece]:
        if start >= end:
            return []
        pieces = self.map
        last = end - 1
        first = pieces.bisect_right(start)
        if first and pieces.peekitem(first - 1)[1][0] >= start:
            first -= 1
        stop = pieces.bisect_right(last)
        result = []
        for key in pieces.keys()[first:stop]:
            piece_last, source, delta = pieces[key]
            result.append(_piece(max(key, start), min(piece_last, last) + 1, source, delta))
        return result

    def piece_count(self) -> int:
        return len(self.map)


IMPLEMENTATIONS: dict[str, Callable[[], IndexUnderTest]] = {
    "vmemfs": VmemfsIndex,
    "SortedDict": SortedDictIndex,
    "intervaltree": IntervalTreeIndex,
    "portion": PortionIndex,
    "rebuild": RebuildIndex,
}
"""Every implementation, vmemfs first, by the name the report uses."""
