"""Seeded insert workloads for ``index_bench``: lists of ``(start, end, source, delta)``.

Every workload is a pure function of its size and a fixed seed, so every implementation
does exactly the same override work.  Source ids are the mapping numbers (unique), deltas
place each mapping at a random offset of a notional 1 TiB source.

* ``random`` — overrides at random page-aligned places of a 64 GiB space, lengths
  log-uniform between 4 KiB and 1 MiB.  A prefix of the size-N workload is a
  workload of the smaller size, so partial runs can be extrapolated.
* ``coredump`` — what an ELF core looks like: ascending segments (4 KiB to 1 MiB, small
  gaps), 5% of the inserts being overrides of 4 to 64 KiB at random places already laid.
* ``cover`` — adversarial: ``N - 1`` disjoint 4 KiB mappings in random order, then one
  mapping covering them all (its insert drops every earlier piece).
* ``split`` — adversarial: one 1 TiB mapping, then ``N - 1`` small mappings at random
  places inside it (repeated splits of one big piece).
* ``high`` — random overrides in the top 64 GiB below 2**64 (a tenth of them run to 2**64
  exactly) and a tenth straddling 2**63: implementations that keep signed 64-bit values
  fail here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PAGE = 4096
GIB = 1 << 30
TOP = 1 << 64
SOURCE_SPAN = 1 << 40


@dataclass(frozen=True)
class Workload:
    """Parallel lists of insert arguments, and the range lookups should sample."""

    name: str
    starts: list[int]
    ends: list[int]
    sources: list[int]
    deltas: list[int]
    span: tuple[int, int]

    def __len__(self) -> int:
        return len(self.starts)


def _log_length(rng: random.Random, low_bits: int, high_bits: int) -> int:
    """A page-aligned length, log-uniform between ``2**low_bits`` and ``2**high_bits``."""
    return max(PAGE, int(2 ** rng.uniform(low_bits, high_bits)) & ~(PAGE - 1))


def _delta(rng: random.Random, start: int) -> int:
    return rng.randrange(SOURCE_SPAN) - start


def random_overrides(size: int, seed: int = 1) -> Workload:
    """Random overrides over a 64 GiB space (see the module docstring)."""
    rng = random.Random(seed)
    space = 64 * GIB
    starts, ends, deltas = [], [], []
    for _ in range(size):
        length = _log_length(rng, 12, 20)
        start = rng.randrange(0, space - length) & ~(PAGE - 1)
        starts.append(start)
        ends.append(start + length)
        deltas.append(_delta(rng, start))
    return Workload("random", starts, ends, list(range(size)), deltas, (0, space))


def coredump(size: int, seed: int = 2) -> Workload:
    """Ascending segments with 5% overrides (see the module docstring)."""
    rng = random.Random(seed)
    base = 0x400000
    top = base
    starts, ends, deltas = [], [], []
    for _ in range(size):
        if top > base and rng.random() < 0.05:
            length = _log_length(rng, 12, 16)
            start = rng.randrange(base, top) & ~(PAGE - 1)
        else:
            length = _log_length(rng, 12, 20)
            start = top + rng.randrange(0, 16) * PAGE
            top = start + length
        starts.append(start)
        ends.append(start + length)
        deltas.append(_delta(rng, start))
    return Workload("coredump", starts, ends, list(range(size)), deltas, (base, top))


def cover(size: int, seed: int = 3) -> Workload:
    """Many small mappings, then one covering them all (see the module docstring)."""
    rng = random.Random(seed)
    slots = list(range(size - 1))
    rng.shuffle(slots)
    starts = [slot * 2 * PAGE for slot in slots]
    ends = [start + PAGE for start in starts]
    span = (0, max(size - 1, 1) * 2 * PAGE)
    starts.append(span[0])
    ends.append(span[1])
    deltas = [_delta(rng, start) for start in starts]
    return Workload("cover", starts, ends, list(range(size)), deltas, span)


def split(size: int, seed: int = 4) -> Workload:
    """One big mapping split again and again (see the module docstring)."""
    rng = random.Random(seed)
    span = (GIB, GIB + (1 << 40))
    starts, ends, deltas = [span[0]], [span[1]], [_delta(rng, span[0])]
    for _ in range(size - 1):
        length = _log_length(rng, 12, 16)
        start = rng.randrange(span[0], span[1] - length) & ~(PAGE - 1)
        starts.append(start)
        ends.append(start + length)
        deltas.append(_delta(rng, start))
    return Workload("split", starts, ends, list(range(size)), deltas, span)


def high(size: int, seed: int = 5) -> Workload:
    """Overrides near 2**64 and across 2**63 (see the module docstring)."""
    rng = random.Random(seed)
    space = 64 * GIB
    starts, ends, deltas = [], [], []
    for _ in range(size):
        length = _log_length(rng, 12, 20)
        draw = rng.random()
        if draw < 0.1:
            start = TOP - length
        elif draw < 0.2:
            start = (1 << 63) - rng.randrange(1, length // PAGE + 1) * PAGE
        else:
            start = (TOP - space + rng.randrange(0, space - length)) & ~(PAGE - 1)
        starts.append(start)
        ends.append(start + length)
        deltas.append(_delta(rng, start))
    return Workload("high", starts, ends, list(range(size)), deltas, (TOP - space, TOP))


WORKLOADS = {
    "random": random_overrides,
    "coredump": coredump,
    "cover": cover,
    "split": split,
    "high": high,
}
"""Every workload by name, ``random`` first (the one the targets are stated for)."""

PREFIX_STABLE = {"random", "coredump", "split", "high"}
"""Workloads whose size-n run is a prefix of the size-N run (extrapolation is sound)."""
