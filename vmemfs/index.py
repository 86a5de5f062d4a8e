"""The segment index: which source serves each address of a 64-bit space.

The index holds the *resolved* map: sorted, disjoint, non-empty pieces, each a run
of addresses ``[start, last]`` served by one source at ``source_offset = address + delta``
(modulo 2**64).  Inclusive ends let a piece reach the very top of the address space
(``last = 2**64 - 1``) while every value stays a ``uint64``.

Two layers keep inserts cheap without ever rebuilding from scratch:

* the **base layer**: four parallel numpy arrays (``starts``, ``lasts``, ``sources``,
  ``deltas``), 28 bytes per piece;
* the **top layer**: a bounded set of pieces newer than every piece of the base layer,
  itself kept sorted and disjoint by override inserts (an insert trims, splits or drops
  the top pieces it covers: at most three new pieces).  Its starts live in a blocked
  sorted list (Python lists of at most ``2 * _BLOCK`` ints, searched with :mod:`bisect`),
  its values in a dict, so that an insert costs a handful of C-level operations.

Where the top layer has a piece it wins; elsewhere the base layer shows through.  When
the top layer grows past a fraction of the base layer it is merged into the arrays in
one vectorised pass that only touches the base pieces it overlaps, so the amortised
cost per insert is ``O(log n)`` Python work plus ``O(1)`` numpy element work.

Everything here is pure: no I/O, no knowledge of what a source is.

Pitfall guarded throughout: a numpy ``uint64`` compared with a Python ``int`` may be
promoted to float64, which is wrong above 2**53.  Scalars going into numpy are wrapped
in ``np.uint64`` first; values coming out are converted with ``int()`` or ``tolist()``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

import numpy as np

ADDRESS_LIMIT = 1 << 64
"""One past the highest address."""
MASK64 = ADDRESS_LIMIT - 1
_U64_MAX = np.uint64(MASK64)

_MIN_TOP = 4096
"""The top layer is merged once it holds more than this many pieces..."""
_TOP_SHIFT = 4
"""...or more than 1/16 of the base layer's pieces, whichever is larger."""
_BLOCK = 256
"""Top-layer blocks are split when they pass twice this many starts."""
_SAMPLE = 64
"""Every 64th base start is also kept in a Python list: a search bisects that list, then
64 entries of the array, without the cost of a numpy call (under 1 byte per piece)."""


class Piece(NamedTuple):
    """A run ``[start, end)`` of addresses served by ``source`` from ``offset`` on."""

    start: int
    end: int
    source: int
    offset: int


def check_range(start: int, end: int) -> None:
    """Raise ``ValueError`` unless ``0 <= start <= end <= 2**64``."""
    if not 0 <= start <= ADDRESS_LIMIT:
        raise ValueError(f"address {start:#x} is outside [0, 2**64)")
    if end < start:
        raise ValueError(f"range [{start:#x}, {end:#x}) ends before it starts")
    if end > ADDRESS_LIMIT:
        raise ValueError(f"range [{start:#x}, {end:#x}) passes 2**64")


def _empty(dtype: type) -> np.ndarray:
    return np.empty(0, dtype=dtype)


class SegmentIndex:
    """Resolved override map from 64-bit addresses to ``(source, offset)``.

    Later inserts win wherever they overlap earlier ones.  Source ids are small
    non-negative integers chosen by the caller; the index never interprets them.

    >>> ix = SegmentIndex()
    >>> ix.insert(0x1000, 0x3000, source=0, delta=-0x1000)
    >>> ix.insert(0x1800, 0x2000, source=1, delta=-0x1800)
    >>> ix.resolve(0x1000, 0x3000)
    [Piece(start=4096, end=6144, source=0, offset=0), Piece(start=6144, end=8192, \
source=1, offset=0), Piece(start=8192, end=12288, source=0, offset=4096)]
    >>> ix.extents()
    [(4096, 12288)]
    """

    __slots__ = ("_deltas", "_extents", "_hit", "_lasts", "_sample", "_sources", "_starts",
                 "_top", "_views")

    def __init__(self) -> None:
        self._starts: np.ndarray = _empty(np.uint64)
        self._lasts: np.ndarray = _empty(np.uint64)
        self._sources: np.ndarray = _empty(np.int32)
        self._deltas: np.ndarray = _empty(np.uint64)
        # start -> (last, source, delta), all Python ints; newer than the arrays.
        self._top = _TopLayer()
        # memoryviews of the base arrays: indexing one gives a Python int, 3x faster
        # than converting a numpy scalar.
        self._views: tuple[memoryview, ...] = ()
        self._sample: list[int] = []
        self._hit: Piece | None = None
        """The piece :meth:`lookup` found last (reads cluster); dropped by every change."""
        self._set_base(self._starts, self._lasts, self._sources, self._deltas)
        self._extents: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ inserts

    def insert(self, start: int, end: int, source: int, delta: int) -> None:
        """Map ``[start, end)`` to ``source`` at ``offset = address + delta (mod 2**64)``.

        The new piece takes precedence over every earlier one it overlaps; those are
        trimmed, split or dropped.  An empty range changes nothing.

        Runtime complexity: ``O(log n + k log n)`` for ``k`` covered top pieces, plus
        an amortised ``O(1)`` share of the periodic vectorised merge.

        :raises ValueError: if the range is not inside ``[0, 2**64]``.
        """
        check_range(start, end)
        if start == end:
            return
        self._extents = None
        self._hit = None
        top = self._top
        top.override(start, end - 1, source, delta & MASK64)
        if len(top.values) > _MIN_TOP and len(top.values) > len(self._starts) >> _TOP_SHIFT:
            self.flush()

    def insert_many(
        self,
        starts: Sequence[int] | np.ndarray,
        ends: Sequence[int] | np.ndarray,
        sources: Sequence[int] | np.ndarray,
        deltas: Sequence[int] | np.ndarray,
    ) -> None:
        """Insert many pieces, in order: the same result as calling :meth:`insert` on each.

        When the non-empty ranges are ascending and disjoint (the usual layout of an
        ELF core), they are merged in one vectorised pass; otherwise they are inserted
        one at a time.

        :raises ValueError: if any range is not inside ``[0, 2**64]`` (nothing is inserted).
        """
        count = len(starts)
        if not (len(ends) == len(sources) == len(deltas) == count):
            raise ValueError("insert_many needs sequences of one length")
        start_list = [int(s) for s in starts]
        end_list = [int(e) for e in ends]
        for s, e in zip(start_list, end_list, strict=True):
            check_range(s, e)
        keep = [i for i in range(count) if start_list[i] < end_list[i]]
        self.insert_runs(
            np.array([start_list[i] for i in keep], dtype=np.uint64),
            np.array([end_list[i] - 1 for i in keep], dtype=np.uint64),
            np.array([int(sources[i]) for i in keep], dtype=np.int32),
            np.array([int(deltas[i]) & MASK64 for i in keep], dtype=np.uint64),
        )

    def insert_runs(self, starts: np.ndarray, lasts: np.ndarray, sources: np.ndarray,
                    deltas: np.ndarray) -> None:
        """Insert non-empty pieces ``[starts[i], lasts[i]]`` (inclusive), in order.

        The arrays are ``uint64``, ``uint64``, ``int32``, ``uint64`` of one length, with
        ``starts <= lasts`` (the caller checks).  Ascending, disjoint pieces (an ELF
        core's loads) go through one vectorised merge; anything else is inserted one at a
        time.  Runtime complexity: ``O(k log n)`` plus one merge, or ``k`` inserts.
        """
        if len(starts) == 0:
            return
        if len(starts) > 1 and not bool(np.all(starts[1:] > lasts[:-1])):
            for s, last, source, delta in zip(starts.tolist(), lasts.tolist(),
                                               sources.tolist(), deltas.tolist(), strict=True):
                self.insert(s, last + 1, source, delta)
            return
        self.flush()
        self._extents = None
        self._hit = None
        self._merge(starts, lasts, sources, deltas)

    def flush(self) -> None:
        """Merge the top layer into the base arrays.

        Runtime complexity: ``O(b log n)`` searches plus a few linear numpy passes over
        the base layer, for ``b`` top pieces.  Called automatically; never needed for
        correctness.
        """
        top = self._top
        if not top.values:
            return
        self._merge(*top.arrays())
        top.clear()

    def _merge(self, ts: np.ndarray, tl: np.ndarray, tsrc: np.ndarray,
               td: np.ndarray) -> None:
        """Lay sorted, disjoint pieces ``ts..tl`` over the base layer (they win)."""
        ms, ml = self._starts, self._lasts
        if len(ms) == 0:
            self._set_base(ts, tl, tsrc, td)
            return
        # Base pieces overlapping top piece k are [first[k], stop[k]).
        first = np.searchsorted(ml, ts, side="left")
        stop = np.searchsorted(ms, tl, side="right")
        hit = stop > first
        first, stop = first[hit], stop[hit]
        if len(first):
            counts = stop - first
            total = int(counts.sum())
            run_starts = np.repeat(first, counts)
            run_offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            touched = run_starts + run_offsets
            # Ascending already (consecutive runs share at most their edge piece): drop
            # the repeats without sorting.
            touched = touched[np.concatenate(([True], touched[1:] != touched[:-1]))]
        else:
            touched = np.empty(0, dtype=np.intp)
        # What is left of each touched base piece outside the top pieces: intersect it
        # with the gaps between top pieces.
        gs = np.concatenate(([np.uint64(0)], tl + np.uint64(1)))
        gl = np.concatenate((ts - np.uint64(1), [_U64_MAX]))
        valid = gs <= gl
        valid[0] = bool(ts[0] > 0)
        valid[-1] = bool(tl[-1] < _U64_MAX)
        gs, gl = gs[valid], gl[valid]
        as_, al = ms[touched], ml[touched]
        g_first = np.searchsorted(gl, as_, side="left")
        g_stop = np.searchsorted(gs, al, side="right")
        g_counts = np.maximum(g_stop - g_first, 0)
        g_total = int(g_counts.sum())
        owner = np.repeat(np.arange(len(touched)), g_counts)
        gap = np.repeat(g_first, g_counts) + (
            np.arange(g_total) - np.repeat(np.cumsum(g_counts) - g_counts, g_counts))
        rest_s = np.maximum(as_[owner], gs[gap])
        rest_l = np.minimum(al[owner], gl[gap])
        rest_src = self._sources[touched][owner]
        rest_d = self._deltas[touched][owner]
        # New pieces: the top pieces and the remains of touched base pieces, sorted.
        new_s = np.concatenate((ts, rest_s))
        order = np.argsort(new_s, kind="stable")
        new_s = new_s[order]
        new_l = np.concatenate((tl, rest_l))[order]
        new_src = np.concatenate((tsrc, rest_src))[order]
        new_d = np.concatenate((td, rest_d))[order]
        # Untouched base pieces keep their order; place the new ones among them.
        keep = np.ones(len(ms), dtype=bool)
        keep[touched] = False
        kept_s = ms[keep]
        pos = np.searchsorted(kept_s, new_s) + np.arange(len(new_s))
        size = len(kept_s) + len(new_s)
        slot_is_kept = np.ones(size, dtype=bool)
        slot_is_kept[pos] = False
        self._set_base(
            _interleave(kept_s, new_s, pos, slot_is_kept, size),
            _interleave(ml[keep], new_l, pos, slot_is_kept, size),
            _interleave(self._sources[keep], new_src, pos, slot_is_kept, size),
            _interleave(self._deltas[keep], new_d, pos, slot_is_kept, size),
        )

    def _set_base(self, starts: np.ndarray, lasts: np.ndarray, sources: np.ndarray,
                  deltas: np.ndarray) -> None:
        self._starts, self._lasts, self._sources, self._deltas = starts, lasts, sources, deltas
        self._hit = None
        self._views = tuple(memoryview(a.data) for a in (starts, lasts, sources, deltas))
        self._sample = starts[::_SAMPLE].tolist()

    def _base_position(self, address: int) -> int:
        """The index of the last base piece starting at or before ``address`` (or -1)."""
        k = bisect_right(self._sample, address) - 1
        if k < 0:
            return -1
        low = k * _SAMPLE
        return bisect_right(self._views[0], address, low,
                            min(low + _SAMPLE, len(self._starts))) - 1

    # ------------------------------------------------------------------ lookups

    def lookup(self, address: int) -> Piece | None:
        """The whole piece that serves ``address``, or ``None`` for a hole.

        Runtime complexity: ``O(1)`` inside the piece found last, else ``O(log n)``.
        """
        hit = self._hit
        if hit is not None and hit.start <= address < hit.end:
            return hit
        top = self._top
        if top.values:
            key = top.predecessor(address)
            if key is not None:
                last, source, delta = top.values[key]
                if last >= address:
                    self._hit = Piece(key, last + 1, source, (key + delta) & MASK64)
                    return self._hit
        if not 0 <= address < ADDRESS_LIMIT:
            return None
        j = self._base_position(address)
        if j < 0:
            return None
        start_view, last_view, source_view, delta_view = self._views
        last = last_view[j]
        if last < address:
            return None
        start = start_view[j]
        base = Piece(start, last + 1, source_view[j], (start + delta_view[j]) & MASK64)
        if top.values:
            base = self._clip_by_top(base, address)
        self._hit = base
        return base

    def _clip_by_top(self, piece: Piece, address: int) -> Piece:
        """Shrink a base piece around ``address`` to the part the top layer leaves."""
        top = self._top
        start, end = piece.start, piece.end
        before = top.predecessor(address)
        if before is not None:
            last = top.values[before][0]
            if last >= start:
                start = last + 1
        after = top.successor(address)
        if after is not None and after < end:
            end = after
        return Piece(start, end, piece.source, (piece.offset + start - piece.start) & MASK64)

    def resolve(self, start: int, end: int) -> list[Piece]:
        """The pieces that serve ``[start, end)``, clipped to it, in address order.

        Addresses between consecutive pieces (and before the first, after the last) are
        holes.

        Runtime complexity: ``O(log n + k)`` for ``k`` pieces in the range.

        :raises ValueError: if the range is not inside ``[0, 2**64]``.
        """
        check_range(start, end)
        if start == end:
            return []
        last = end - 1
        base = self._base_slice(start, last)
        top = self._top
        if not top.values:
            return base
        keys = top.starts_between(start, last)
        before = top.predecessor(start)
        if before is not None and before < start and top.values[before][0] >= start:
            keys.insert(0, before)
        if not keys:
            return base
        if len(base) > 64:
            self.flush()
            return self._base_slice(start, last)
        covers = []
        for key in keys:
            piece_last, source, delta = top.values[key]
            s, e = max(key, start), min(piece_last, last) + 1
            covers.append(Piece(s, e, source, (s + delta) & MASK64))
        # Base pieces show only in the gaps between the covering top pieces.
        result: list[Piece] = []
        cover_index = 0
        for piece in base:
            s = piece.start
            while s < piece.end:
                while cover_index < len(covers) and covers[cover_index].end <= s:
                    cover_index += 1
                if cover_index == len(covers):
                    result.append(_sub(piece, s, piece.end))
                    break
                cover = covers[cover_index]
                if cover.start > s:
                    stop = min(cover.start, piece.end)
                    result.append(_sub(piece, s, stop))
                    s = stop
                else:
                    s = cover.end
        result.extend(covers)
        result.sort(key=lambda p: p.start)
        return result

    def _base_slice(self, start: int, last: int) -> list[Piece]:
        starts = self._starts
        count = len(starts)
        if count == 0:
            return []
        start_view, last_view, source_view, delta_view = self._views
        j0 = self._base_position(start)
        if j0 < 0 or last_view[j0] < start:
            j0 += 1
        # Few pieces (the usual read): walk them; many: slice the arrays at once.
        found: list[Piece] = []
        j = j0
        while j < count and j < j0 + 16:
            s = start_view[j]
            if s > last:
                return found
            s = max(s, start)
            piece_last = min(last_view[j], last)
            found.append(Piece(s, piece_last + 1, source_view[j], (s + delta_view[j]) & MASK64))
            j += 1
        if j == count:
            return found
        j1 = int(starts.searchsorted(np.uint64(last), side="right"))
        if j1 <= j0:
            return []
        s_list = starts[j0:j1].tolist()
        l_list = self._lasts[j0:j1].tolist()
        src_list = self._sources[j0:j1].tolist()
        d_list = self._deltas[j0:j1].tolist()
        s_list[0] = max(s_list[0], start)
        l_list[-1] = min(l_list[-1], last)
        return [
            Piece(s, piece_last + 1, src, (s + d) & MASK64)
            for s, piece_last, src, d in zip(s_list, l_list, src_list, d_list, strict=True)
        ]

    def extents(self) -> list[tuple[int, int]]:
        """Maximal runs ``(start, end)`` of mapped addresses, ascending.

        Runtime complexity: ``O(n)`` after a change, then cached.
        """
        starts, lasts = self._extent_arrays()
        return [(s, last + 1) for s, last in zip(starts.tolist(), lasts.tolist(),
                                                   strict=True)]

    def _extent_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._extents is None:
            self.flush()
            starts, lasts = self._starts, self._lasts
            if len(starts) == 0:
                self._extents = (_empty(np.uint64), _empty(np.uint64))
            else:
                breaks = np.flatnonzero(starts[1:] != lasts[:-1] + np.uint64(1))
                self._extents = (
                    starts[np.concatenate(([0], breaks + 1))],
                    lasts[np.concatenate((breaks, [len(starts) - 1]))],
                )
        return self._extents

    def extent_at(self, address: int) -> tuple[int, int] | None:
        """The extent ``(start, end)`` containing ``address``, or ``None`` for a hole.

        Runtime complexity: ``O(log e)`` for ``e`` extents once cached.
        """
        if not 0 <= address < ADDRESS_LIMIT:
            return None
        starts, lasts = self._extent_arrays()
        j = int(starts.searchsorted(np.uint64(address), side="right")) - 1
        if j < 0 or int(lasts[j]) < address:
            return None
        return int(starts[j]), int(lasts[j]) + 1

    def next_data(self, address: int) -> int | None:
        """The lowest mapped address ``>= address``, or ``None`` if there is none.

        Runtime complexity: ``O(log e)`` once extents are cached.
        """
        if address >= ADDRESS_LIMIT:
            return None
        address = max(address, 0)
        starts, lasts = self._extent_arrays()
        j = int(starts.searchsorted(np.uint64(address), side="right")) - 1
        if j >= 0 and int(lasts[j]) >= address:
            return address
        return int(starts[j + 1]) if j + 1 < len(starts) else None

    def next_hole(self, address: int) -> int:
        """The lowest unmapped address ``>= address`` (``2**64`` if none is left).

        Runtime complexity: ``O(log e)`` once extents are cached.
        """
        extent = self.extent_at(address)
        return address if extent is None else extent[1]

    def mapped_bytes(self) -> int:
        """How many addresses are mapped (up to ``2**64``)."""
        starts, lasts = self._extent_arrays()
        return int((lasts - starts).sum(dtype=np.uint64)) + len(starts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The flushed base layer: ``(starts, lasts, sources, deltas)``, read-only views."""
        self.flush()
        views = (self._starts, self._lasts, self._sources, self._deltas)
        result = []
        for array in views:
            view = array.view()
            view.flags.writeable = False
            result.append(view)
        return result[0], result[1], result[2], result[3]

    def sources_in_use(self) -> set[int]:
        """The source ids that still serve at least one address."""
        self.flush()
        return set(np.unique(self._sources).tolist())

    def __len__(self) -> int:
        """The number of pieces (merges the top layer first)."""
        self.flush()
        return len(self._starts)

    def nbytes(self) -> int:
        """Bytes held by the base arrays (the top layer is bounded and excluded)."""
        return sum(a.nbytes for a in (self._starts, self._lasts, self._sources, self._deltas))

    def _check(self) -> None:
        """Assert every invariant of both layers (for tests)."""
        for array, dtype in ((self._starts, np.uint64), (self._lasts, np.uint64),
                             (self._sources, np.int32), (self._deltas, np.uint64)):
            assert array.dtype == dtype, array.dtype
            assert array.ndim == 1
        n = len(self._starts)
        assert len(self._lasts) == len(self._sources) == len(self._deltas) == n
        if n:
            assert bool(np.all(self._starts <= self._lasts))
            assert bool(np.all(self._starts[1:] > self._lasts[:-1]))
            assert bool(np.all(self._sources >= 0))
        top = self._top
        keys = list(top.keys())
        assert sorted(keys) == keys and len(keys) == len(top.values)
        assert top.firsts == [block[0] for block in top.blocks]
        assert all(0 < len(block) <= 2 * _BLOCK for block in top.blocks)
        previous_last = -1
        for key in keys:
            last, source, delta = top.values[key]
            assert isinstance(key, int) and isinstance(last, int)
            assert previous_last < key <= last <= MASK64
            assert source >= 0 and 0 <= delta <= MASK64
            previous_last = last
        if self._extents is not None:
            starts, lasts = self._extents
            assert bool(np.all(starts <= lasts))
            if len(starts) > 1:
                assert bool(np.all(starts[1:] > lasts[:-1] + np.uint64(1)))


class _TopLayer:
    """Sorted, disjoint pieces ``start -> (last, source, delta)`` with cheap overrides.

    Starts are kept in blocks (sorted Python lists) indexed by their first elements, so
    every search is a C-level :func:`bisect.bisect_right` and every insert or delete moves
    at most ``2 * _BLOCK`` references.
    """

    __slots__ = ("blocks", "firsts", "values")

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []
        self.firsts: list[int] = []
        self.values: dict[int, tuple[int, int, int]] = {}

    def clear(self) -> None:
        self.blocks.clear()
        self.firsts.clear()
        self.values.clear()

    def keys(self) -> Iterator[int]:
        return chain.from_iterable(self.blocks)

    def _split(self, bi: int) -> None:
        """Split block ``bi`` in two halves once it has grown past ``2 * _BLOCK``."""
        block = self.blocks[bi]
        self.blocks.insert(bi + 1, block[_BLOCK:])
        self.firsts.insert(bi + 1, block[_BLOCK])
        del block[_BLOCK:]

    def predecessor(self, address: int) -> int | None:
        """The greatest start ``<= address``, or ``None``."""
        bi = bisect_right(self.firsts, address) - 1
        if bi < 0:
            return None
        block = self.blocks[bi]
        return block[bisect_right(block, address) - 1]

    def successor(self, address: int) -> int | None:
        """The least start ``> address``, or ``None``."""
        firsts = self.firsts
        bi = bisect_right(firsts, address) - 1
        if bi >= 0:
            block = self.blocks[bi]
            i = bisect_right(block, address)
            if i < len(block):
                return block[i]
        return firsts[bi + 1] if bi + 1 < len(firsts) else None

    def starts_between(self, low: int, high: int) -> list[int]:
        """Every start in ``[low, high]``, ascending."""
        firsts, blocks = self.firsts, self.blocks
        bi = max(bisect_right(firsts, low) - 1, 0)
        found: list[int] = []
        while bi < len(blocks):
            block = blocks[bi]
            i = bisect_left(block, low)
            j = bisect_right(block, high)
            found.extend(block[i:j])
            if j < len(block):
                break
            bi += 1
        return found

    def override(self, start: int, last: int, source: int, delta: int) -> None:
        """Lay ``[start, last]`` over the pieces here: trim, split or drop what it covers.

        The hot path of every insert: one search of the block index, one in a block, and
        list slicing, all in C.
        """
        values = self.values
        firsts, blocks = self.firsts, self.blocks
        if not blocks:
            blocks.append([start])
            firsts.append(start)
            values[start] = (last, source, delta)
            return
        bi = bisect_right(firsts, start) - 1
        before: int | None = None
        if bi < 0:
            bi, i = 0, 0
            block = blocks[0]
        else:
            block = blocks[bi]
            i = bisect_left(block, start)
            if i:
                before = block[i - 1]
            elif bi:  # block[0] == start: the piece before ends the previous block
                before = blocks[bi - 1][-1]
        if before is not None:
            before_last, before_source, before_delta = values[before]
            if before_last >= start:
                values[before] = (start - 1, before_source, before_delta)
                if before_last > last:
                    # Strictly inside an older piece: split it; nothing else is covered,
                    # and the older piece's key is block[i - 1].
                    values[start] = (last, source, delta)
                    values[last + 1] = (before_last, before_source, before_delta)
                    block[i:i] = (start, last + 1)
                    if len(block) > 2 * _BLOCK:
                        self._split(bi)
                    return
        # Drop every piece that starts inside [start, last]; keep the last one's tail.
        tail: tuple[int, int, int] | None = None
        j = bisect_right(block, last, i)
        reached_end = j == len(block)
        if j > i:
            for key in block[i:j]:
                tail = values.pop(key)
            del block[i:j]
        if reached_end:
            # The covered starts may go on in the following blocks.
            following = bi + 1
            while following < len(blocks):
                later = blocks[following]
                k = bisect_right(later, last)
                if k == 0:
                    break
                for key in later[:k]:
                    tail = values.pop(key)
                if k < len(later):
                    del later[:k]
                    firsts[following] = later[0]
                    break
                del blocks[following]
                del firsts[following]
        values[start] = (last, source, delta)
        if tail is not None and tail[0] > last:
            values[last + 1] = tail
            block[i:i] = (start, last + 1)
        else:
            block.insert(i, start)
        firsts[bi] = block[0]
        if len(block) > 2 * _BLOCK:
            self._split(bi)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The pieces as ``(starts, lasts, sources, deltas)`` arrays."""
        count = len(self.values)
        keys = list(self.keys())
        ordered = itemgetter(*keys)(self.values) if count > 1 else [self.values[keys[0]]]
        table = np.fromiter(chain.from_iterable(ordered), dtype=np.uint64,
                            count=3 * count).reshape(count, 3)
        return (np.array(keys, dtype=np.uint64), table[:, 0].copy(),
                table[:, 1].astype(np.int32), table[:, 2].copy())


def _sub(piece: Piece, start: int, end: int) -> Piece:
    return Piece(start, end, piece.source, (piece.offset + start - piece.start) & MASK64)


def _interleave(kept: np.ndarray, new: np.ndarray, pos: np.ndarray,
                slot_is_kept: np.ndarray, size: int) -> np.ndarray:
    out = np.empty(size, dtype=kept.dtype)
    out[pos] = new
    out[slot_is_kept] = kept
    return out


def flatten(pieces: Iterable[Piece]) -> list[tuple[int, int, int, int]]:
    """Join touching pieces with the same source and a continuous offset.

    Two indexes that serve every address from the same place flatten to the same list,
    whatever splits their insert histories left behind.
    """
    result: list[tuple[int, int, int, int]] = []
    for piece in pieces:
        if result:
            s, e, src, off = result[-1]
            if e == piece.start and src == piece.source and (off + e - s) & MASK64 == piece.offset:
                result[-1] = (s, piece.end, src, off)
                continue
        result.append(tuple(piece))  # type: ignore[arg-type]
    return result
