"""Index benchmark: ``vmemfs.index.SegmentIndex`` against the other ways to keep an override map.

Steps, in order:

1. **Correctness gate.**  Every implementation builds every workload (10,000 mappings;
   ``portion`` 1,000, see below) and must produce the same flattened layout as vmemfs.
   Nothing is timed if this fails.
2. **Inserts.**  For each workload and size (1e3 … 1e6), each implementation inserts the
   mappings one at a time, each insert timed with ``perf_counter_ns``, until the
   workload ends or its time budget runs out.  An implementation that runs out is not run
   at larger sizes; where the workload allows it (a smaller run is a prefix of a larger
   one), its mean insert cost at the larger sizes is *extrapolated* from a power-law fit of
   the per-insert times it did measure, and labelled so.
3. **Memory.**  ``tracemalloc`` around building the structure, divided by its pieces.
4. **Lookups.**  Point lookups per second (random and sorted addresses) and the time to
   resolve a 4 KiB and a 128 KiB range, on the ``random`` workload.
5. **The public API.**  ``MemoryMap.add_bytes`` on a sparse workload (100,000 mappings of
   1 byte to 4 KiB at random addresses below 2**32), against the index alone and
   ``intervaltree`` (``chop`` + ``addi``) doing the same override work: whole runs without
   per-insert clocks, rounds alternating the order, medians.

Run ``.venv/bin/python -m bench.index_bench --size small`` for a quick check.
"""

from __future__ import annotations

import cProfile
import gc
import io
import math
import os
import pstats
import random
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice, pairwise
from pathlib import Path

import numpy as np

from bench.common import (
    Section,
    Spread,
    Target,
    alternate,
    command_line,
    finish_part,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    markdown_table,
    part_arguments,
)
from bench.index_impls import (
    IMPLEMENTATIONS,
    IndexUnderTest,
    IntervalTreeIndex,
    RebuildIndex,
    VmemfsIndex,
)
from bench.index_workloads import PREFIX_STABLE, WORKLOADS, Workload
from vmemfs import MemoryMap
from vmemfs.index import MASK64, flatten

LADDER = {
    "small": (1_000, 10_000),
    "medium": (1_000, 10_000, 100_000),
    "full": (1_000, 10_000, 100_000, 1_000_000),
}
OTHER_LADDER = {
    "small": (1_000, 10_000),
    "medium": (1_000, 10_000, 100_000),
    "full": (1_000, 10_000, 100_000),
}
"""Sizes for the workloads other than ``random`` (1e6 only for ``random``, to keep the
suite's run time near a quarter of an hour)."""
BUDGET = {"small": 2.0, "medium": 8.0, "full": 15.0}
"""Seconds per implementation and size on the ``random`` workload..."""
OTHER_BUDGET = {"small": 1.0, "medium": 3.0, "full": 5.0}
"""...and on the other workloads..."""
TARGET_BUDGET = {"small": 2.0, "medium": 15.0, "full": 30.0}
"""...but on ``random`` at the size the targets are stated for (1e5), this much, so that
``intervaltree`` is measured there rather than extrapolated."""
GATE_SIZE = {"small": 1_000, "medium": 10_000, "full": 10_000}
PORTION_GATE_SIZE = 1_000
"""``portion`` rescans every stored interval on each assignment: 10,000 inserts take
about four minutes here, so it is checked at 1,000."""
TARGET_SIZE = 100_000
LOOKUP_SIZE = {"small": 10_000, "medium": 100_000, "full": 100_000}
LOOKUP_COUNT = {"small": 20_000, "medium": 100_000, "full": 200_000}
LOOKUP_BUDGET = {"small": 0.5, "medium": 2.0, "full": 3.0}
RESOLVE_COUNT = 2_000
REPEATS = 3
PLAIN_RUNS = 3
REPEAT_FRACTION = 8
"""Runs taking under 1/8 of the budget are made three times."""
API_SIZE = {"small": 10_000, "medium": 100_000, "full": 100_000}
"""Mappings in the public-API workload (``add_bytes``)."""
API_ROUNDS = {"small": 3, "medium": 3, "full": 5}
API_SPAN = 1 << 32
API_LONGEST = 4096
API_CHECKS = 2_000


def log(message: str) -> None:
    """Progress on the terminal (the report is printed at the end)."""
    print(message, flush=True)


# --------------------------------------------------------------------- the public API

@dataclass
class ApiWorkload:
    """``add_bytes(data, address)`` calls: the bytes of call ``k`` are a prefix of one
    random block, so byte ``a`` of mapping ``k`` is ``block[a - addresses[k]]``."""

    addresses: list[int]
    blocks: list[bytes]
    block: bytes

    def __len__(self) -> int:
        return len(self.addresses)


def sparse_workload(size: int, seed: int = 12) -> ApiWorkload:
    """``size`` mappings of 1 byte to 4 KiB at random addresses below 2**32."""
    rng = random.Random(seed)
    block = rng.randbytes(API_LONGEST)
    addresses, blocks = [], []
    for _ in range(size):
        length = rng.randrange(1, API_LONGEST + 1)
        addresses.append(rng.randrange(0, API_SPAN - length))
        blocks.append(block[:length])
    return ApiWorkload(addresses, blocks, block)


def api_add_bytes(workload: ApiWorkload) -> MemoryMap:
    memory_map = MemoryMap()
    add_bytes = memory_map.add_bytes
    for data, address in zip(workload.blocks, workload.addresses, strict=True):
        add_bytes(data, address)
    return memory_map


def api_index(workload: ApiWorkload, index: IndexUnderTest) -> IndexUnderTest:
    insert = index.insert
    for number, (data, address) in enumerate(zip(workload.blocks, workload.addresses,
                                                 strict=True)):
        insert(address, address + len(data), number, -address & MASK64)
    return index


@dataclass
class ApiRun:
    """Seconds per whole run of each way, and the result of the correctness check."""

    size: int
    seconds: dict[str, list[float]]
    checked: int

    def median(self, name: str) -> float:
        return float(np.median(self.seconds[name]))


def measure_public_api(size_name: str) -> ApiRun:
    """``add_bytes`` against the index alone and intervaltree, whole runs alternating."""
    workload = sparse_workload(API_SIZE[size_name])
    log(f"public API: add_bytes of {len(workload):,} sparse mappings")
    memory_map = api_add_bytes(workload)
    index = api_index(workload, VmemfsIndex())
    rng = random.Random(13)
    checked = 0
    for count in range(API_CHECKS):   # the same bytes where the index says they come from
        if count % 2:
            address = rng.randrange(API_SPAN)
        else:
            number = rng.randrange(len(workload))
            address = workload.addresses[number] + rng.randrange(len(workload.blocks[number]))
        found = index.lookup(address)
        if found is None:
            assert not memory_map.is_mapped(address), hex(address)
            continue
        number, offset = found
        assert (offset - address) & MASK64 == -workload.addresses[number] & MASK64
        assert memory_map.get_byte(address) == workload.block[address -
                                                              workload.addresses[number]]
        checked += 1
    del memory_map, index

    def timed(build_it: Callable[[], object]) -> Callable[[], float]:
        def once() -> float:
            gc.collect()
            begin = time.perf_counter()
            built = build_it()
            seconds = time.perf_counter() - begin
            del built
            return seconds
        return once

    seconds = alternate({
        "add_bytes": timed(lambda: api_add_bytes(workload)),
        "SegmentIndex.insert": timed(lambda: api_index(workload, VmemfsIndex())),
        "intervaltree": timed(lambda: api_index(workload, IntervalTreeIndex())),
    }, API_ROUNDS[size_name])
    for name, values in seconds.items():
        log(f"  {name}: " + ", ".join(f"{value:.2f} s" for value in values))
    return ApiRun(len(workload), seconds, checked)


def api_report(run: ApiRun) -> str:
    rounds = len(run.seconds["add_bytes"])
    mine = run.median("add_bytes")
    rows = [(name, f"{run.median(name):.3f} s", fmt_us(run.median(name) / run.size * 1e6),
             fmt_ratio(run.median(name) / mine), ", ".join(f"{v:.2f}" for v in values))
            for name, values in run.seconds.items()]
    return "\n".join([
        f"#### The public API: `MemoryMap.add_bytes`, {run.size:,} sparse mappings", "",
        f"{run.size:,} calls `add_bytes(data, address)`, 1 byte to 4 KiB each, at random "
        "addresses below 2**32 (few overlap). The index alone and `intervaltree` (`chop` "
        "then `addi`) do the same override work. Whole runs, the garbage collector on, "
        f"{rounds} rounds alternating the order; the median, and each round's seconds. "
        f"Checked first: {run.checked:,} mapped addresses (and the holes among random "
        "ones) read the byte, or the hole, the index says.", "",
        markdown_table(("way", "median", "per call", "time / add_bytes", "rounds (s)"),
                       rows), ""])


# --------------------------------------------------------------------- inserts

@dataclass
class InsertRun:
    """One implementation inserting one workload of one size."""

    implementation: str
    workload: str
    size: int
    done: int = 0
    wall: float = float("nan")
    spread: Spread = field(default_factory=lambda: Spread.of_ns([]))
    mean: float = float("nan")
    """Mean µs per insert over the whole size: measured, or extrapolated (see ``note``)."""
    note: str = ""
    error: str = ""
    repeats: int = 1
    """How many full runs were made (the one with the median mean is reported)."""

    @property
    def finished(self) -> bool:
        return self.done == self.size and not self.error


def timed_inserts(index: IndexUnderTest, workload: Workload, size: int,
                  budget: float) -> tuple[list[int], float]:
    """Insert the first ``size`` mappings one at a time, each timed, until the budget ends.

    Returns the per-insert nanoseconds and the wall-clock seconds of the whole loop.
    """
    insert = index.insert
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    rows = islice(zip(workload.starts, workload.ends, workload.sources, workload.deltas,
                      strict=True), size)
    begin = clock()
    deadline = begin + int(budget * 1e9)
    for start, end, source, delta in rows:
        before = clock()
        insert(start, end, source, delta)
        after = clock()
        append(after - before)
        if after > deadline:
            break
    return samples, (clock() - begin) / 1e9


@dataclass(frozen=True)
class Growth:
    """A power-law fit ``t(i) = a * i**b`` µs of the i-th insert's cost."""

    a: float
    b: float
    done: int
    measured_total: float

    @classmethod
    def fit(cls, samples_ns: list[int]) -> Growth:
        """Fit the later nine tenths of the samples, in log-spaced buckets of mean cost."""
        count = len(samples_ns)
        costs = np.asarray(samples_ns, dtype=np.float64) / 1000.0
        low = max(1, count // 10)
        edges = np.unique(np.geomspace(low, count, 17).astype(int))
        xs, ys = [], []
        for left, right in pairwise(edges):
            if right > left:
                xs.append(math.log((left + right) / 2))
                ys.append(math.log(float(costs[left:right].mean())))
        if len(xs) >= 2:
            b, log_a = np.polyfit(xs, ys, 1)
        else:
            b, log_a = 0.0, math.log(float(costs.mean()))
        b = min(max(float(b), 0.0), 2.5)
        if len(xs) >= 2 and b in (0.0, 2.5):
            log_a = float(np.mean(np.array(ys) - b * np.array(xs)))
        return cls(math.exp(log_a), b, count, float(costs.sum()))

    def mean_at(self, size: int) -> float:
        """Mean µs per insert over ``size`` inserts: the measured ones plus the fitted rest."""
        if size <= self.done:
            return self.measured_total / self.done
        power = self.b + 1
        rest = self.a * (size ** power - self.done ** power) / power
        return (self.measured_total + rest) / size


@dataclass(frozen=True)
class RebuildCurve:
    """The cost of the rebuild design's ``i``-th insert, from single rebuilds timed at a few n.

    One insert of the rebuild design costs one rebuild over all mappings so far, so timing
    a single rebuild at ``n`` mappings measures the ``n``-th insert directly; between the
    timed points the cost is interpolated on log–log axes.  More faithful than a power-law
    fit of small runs, where numpy's fixed per-call overhead hides the ``n log n`` growth.
    """

    points: tuple[int, ...]
    costs: tuple[float, ...]
    """µs per insert at each point."""
    done: int = 0
    measured_total: float = 0.0

    @classmethod
    def measure(cls, workload: Workload, size: int) -> RebuildCurve:
        """Time single rebuilds at 1,000 · 10^k mappings up to ``size`` (and at ``size``)."""
        points = sorted({n for n in (1_000, 10_000, 100_000, 1_000_000) if n < size} | {size})
        index = RebuildIndex(deferred=True)
        rows = zip(workload.starts, workload.ends, workload.sources, workload.deltas,
                   strict=True)
        added = 0
        costs = []
        for point in points:
            for row in islice(rows, point - added):
                index.insert(*row)
            added = point
            timings = []
            for _ in range(3 if point <= 100_000 else 1):
                begin = time.perf_counter()
                index.finish()
                timings.append(time.perf_counter() - begin)
            costs.append(min(timings) * 1e6)
        log(f"  rebuild    {workload.name:9} single rebuilds: "
            + ", ".join(f"{n:,}: {fmt_us(c)}" for n, c in zip(points, costs, strict=True)))
        return cls(tuple(points), tuple(costs))

    def with_samples(self, samples_ns: list[int]) -> RebuildCurve:
        """The same curve, with the first inserts' measured costs replacing the fit."""
        return RebuildCurve(self.points, self.costs, len(samples_ns), sum(samples_ns) / 1000)

    def mean_at(self, size: int) -> float:
        """Mean µs per insert over ``size`` inserts."""
        if size <= self.done:
            return self.measured_total / self.done
        grid = np.geomspace(max(self.done, 1), size, 4096)
        cost = np.exp(np.interp(np.log(grid), np.log(self.points), np.log(self.costs)))
        rest = float(np.sum((cost[1:] + cost[:-1]) / 2 * np.diff(grid)))
        return (self.measured_total + rest) / size


def run_ladder(name: str, workload_of: dict[int, Workload], sizes: tuple[int, ...],
               budgets: dict[int, float], keep_at: int | None,
               kept: dict[str, IndexUnderTest]) -> list[InsertRun]:
    """Run one implementation up the size ladder of one workload, with a budget per size."""
    runs: list[InsertRun] = []
    growth: Growth | RebuildCurve | None = None
    stopped_at = 0
    for size in sizes:
        workload = workload_of[size]
        run = InsertRun(name, workload.name, size)
        runs.append(run)
        if stopped_at:
            if name == "rebuild" and growth is not None:
                curve = RebuildCurve.measure(workload, size)
                run.mean = curve.mean_at(size)
                run.note = ("extrapolated: single rebuilds timed at "
                            + ", ".join(f"{n:,}" for n in curve.points))
            elif growth is not None and workload.name in PREFIX_STABLE:
                run.mean = growth.mean_at(size)
                run.note = f"extrapolated from {growth.done:,} inserts"
            else:
                run.note = f"not run: over budget at {stopped_at:,}"
            continue
        budget = budgets[size]
        gc.collect()
        index = IMPLEMENTATIONS[name]()
        try:
            samples, wall = timed_inserts(index, workload, size, budget)
        except (OverflowError, ValueError, TypeError) as error:
            run.error = f"{type(error).__name__}: {error}"
            run.note = "failed"
            stopped_at = size
            log(f"  {name:12} {workload.name:9} {size:>9,}: {run.error}")
            continue
        if len(samples) == size and wall * REPEAT_FRACTION < budget:
            # Quick enough to repeat: keep the run with the median mean, so one burst of
            # load on the machine does not decide the figure.
            trials = [(sum(samples) / size, samples, wall, index)]
            for _ in range(REPEATS - 1):
                gc.collect()
                other = IMPLEMENTATIONS[name]()
                other_samples, other_wall = timed_inserts(other, workload, size, budget)
                if len(other_samples) == size:
                    trials.append((sum(other_samples) / size, other_samples, other_wall, other))
            trials.sort(key=lambda trial: trial[0])
            _, samples, wall, index = trials[len(trials) // 2]
            run.repeats = len(trials)
            del trials
        run.done, run.wall, run.spread = len(samples), wall, Spread.of_ns(samples)
        if run.done == size:
            run.mean = run.spread.mean
        else:
            stopped_at = size
            if name == "rebuild":
                growth = RebuildCurve.measure(workload, size).with_samples(samples)
                how = "single rebuilds timed at " + ", ".join(f"{n:,}" for n in growth.points)
            else:
                growth = Growth.fit(samples)
                how = f"cost ∝ i^{growth.b:.2f}"
            run.mean = growth.mean_at(size)
            run.note = (f"{run.done:,} of {size:,} in the {budget:g} s budget; "
                        f"mean extrapolated ({how})")
        if keep_at == size and run.done == size:
            kept[name] = index
        del index
        log(f"  {name:12} {workload.name:9} {size:>9,}: {run.done:>9,} done in "
            f"{run.wall:7.2f} s, mean {fmt_us(run.mean)}, p99 {fmt_us(run.spread.p99)}"
            + (f" [{run.note}]" if run.note else ""))
    return runs


# --------------------------------------------------------------------- gate

def correctness_gate(size: int) -> list[str]:
    """Check every implementation against vmemfs on every workload; returns report lines."""
    lines = []
    for workload_name, make_workload in WORKLOADS.items():
        for name in IMPLEMENTATIONS:
            if name == "vmemfs":
                continue
            count = PORTION_GATE_SIZE if name == "portion" else size
            workload = make_workload(count)
            reference = build(VmemfsIndex(), workload)
            reference.index._check()
            expected = flatten(reference.pieces())
            if name == "rebuild":
                index: IndexUnderTest = RebuildIndex(deferred=True)
            else:
                index = IMPLEMENTATIONS[name]()
            got = flatten(build(index, workload).pieces())
            if got != expected:
                first = next((i for i, (g, e) in enumerate(zip(got, expected, strict=False))
                              if g != e), min(len(got), len(expected)))
                raise SystemExit(
                    f"correctness gate failed: {name} on {workload_name} ({count:,} mappings) "
                    f"differs from vmemfs at flattened piece {first}")
        lines.append(f"{workload_name}: all implementations agree "
                     f"({size:,} mappings; portion {PORTION_GATE_SIZE:,})")
        log(f"  gate {lines[-1]}")
    return lines


def build(index: IndexUnderTest, workload: Workload) -> IndexUnderTest:
    """Insert a whole workload (untimed) and complete deferred work."""
    insert = index.insert
    for row in zip(workload.starts, workload.ends, workload.sources, workload.deltas,
                   strict=True):
        insert(*row)
    index.finish()
    return index


# --------------------------------------------------------------------- memory

@dataclass
class MemoryRun:
    implementation: str
    size: int
    pieces: int
    traced: int
    note: str = ""

    @property
    def per_piece(self) -> float:
        return self.traced / self.pieces if self.pieces else float("nan")


def measure_memory(name: str, workload: Workload, note: str = "") -> MemoryRun:
    """Bytes ``tracemalloc`` sees retained after building the structure."""
    gc.collect()
    if name == "rebuild":
        index: IndexUnderTest = RebuildIndex(deferred=True)
    else:
        index = IMPLEMENTATIONS[name]()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        build(index, workload)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    run = MemoryRun(name, len(workload), index.piece_count(), traced, note)
    log(f"  memory {name:12} {len(workload):>9,} mappings: {run.pieces:,} pieces, "
        f"{run.per_piece:.1f} B/piece")
    return run


# --------------------------------------------------------------------- lookups

@dataclass
class LookupRun:
    implementation: str
    size: int
    random_rate: float
    sorted_rate: float
    resolve_4k: float
    resolve_128k: float
    note: str = ""


def lookup_rate(index: IndexUnderTest, addresses: list[int], budget: float) -> float:
    """Point lookups per second over ``addresses``, in chunks until the budget ends."""
    lookup = index.lookup
    done = 0
    begin = time.perf_counter()
    deadline = begin + budget
    for first in range(0, len(addresses), 1000):
        for address in addresses[first:first + 1000]:
            lookup(address)
        done = min(first + 1000, len(addresses))
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - begin)


def resolve_median(index: IndexUnderTest, starts: list[int], length: int,
                   budget: float) -> float:
    """Median µs to resolve ``[start, start + length)`` over the given starts."""
    resolve = index.resolve
    clock = time.perf_counter_ns
    samples = []
    deadline = clock() + int(budget * 1e9)
    for start in starts:
        before = clock()
        resolve(start, start + length)
        after = clock()
        samples.append(after - before)
        if after > deadline:
            break
    return float(np.median(samples)) / 1000.0


def measure_lookups(name: str, index: IndexUnderTest, size: int, workload: Workload,
                    count: int, budget: float, note: str) -> LookupRun:
    rng = random.Random(7)
    low, high = workload.span
    addresses = [rng.randrange(low, high) for _ in range(count)]
    ordered = sorted(addresses)
    starts = [rng.randrange(low, high - (1 << 17)) & ~0xFFF for _ in range(RESOLVE_COUNT)]
    run = LookupRun(
        name, size,
        random_rate=lookup_rate(index, addresses, budget),
        sorted_rate=lookup_rate(index, ordered, budget),
        resolve_4k=resolve_median(index, starts, 4096, budget),
        resolve_128k=resolve_median(index, starts, 128 * 1024, budget),
        note=note,
    )
    log(f"  lookups {name:12}: random {fmt_rate(run.random_rate)}, sorted "
        f"{fmt_rate(run.sorted_rate)}, resolve 4 KiB {fmt_us(run.resolve_4k)}, "
        f"128 KiB {fmt_us(run.resolve_128k)}")
    return run


def vectorised_lookup_rate(index: VmemfsIndex, workload: Workload, count: int) -> float:
    """Lookups per second through ``arrays()`` and one ``searchsorted`` per batch."""
    starts, lasts, _sources, _deltas = index.index.arrays()
    rng = np.random.default_rng(7)
    low, high = workload.span
    addresses = rng.integers(low, high, size=count, dtype=np.uint64)
    rounds = 0
    begin = time.perf_counter()
    while True:
        j = np.searchsorted(starts, addresses, side="right").astype(np.int64) - 1
        hit = (j >= 0) & (lasts[np.maximum(j, 0)] >= addresses)
        hit.sum()
        rounds += 1
        elapsed = time.perf_counter() - begin
        if elapsed > 0.2:
            return rounds * count / elapsed


# --------------------------------------------------------------------- profile

def profile_inserts(workload: Workload, size: int) -> str:
    """Where vmemfs's insert time goes: the top functions of a cProfile run."""
    index = VmemfsIndex()
    profiler = cProfile.Profile()
    profiler.enable()
    timed_inserts(index, workload, size, budget=120.0)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(12)
    return stream.getvalue()


@dataclass(frozen=True)
class FlushShare:
    """How much of building an index went into merging its write buffer."""

    size: int
    total: float
    flushes: int
    flushing: float

    def line(self) -> str:
        rest = self.total - self.flushing
        return (f"{self.size:,} inserts took {self.total:.2f} s: {self.flushes} merges of the "
                f"write buffer into the arrays (`SegmentIndex.flush`) took {self.flushing:.2f} s "
                f"({self.flushing / self.total:.0%}); the per-insert override work in the "
                f"buffer took the other {rest:.2f} s ({rest / self.size * 1e6:.1f} µs per "
                "insert).")


def flush_share(workload: Workload) -> FlushShare:
    """Build vmemfs's index over the whole workload, timing every ``flush`` on the side."""
    from vmemfs.index import SegmentIndex

    original = SegmentIndex.flush
    spent = [0.0, 0]

    def timed_flush(self: SegmentIndex) -> None:
        begin = time.perf_counter()
        original(self)
        spent[0] += time.perf_counter() - begin
        spent[1] += 1

    gc.collect()
    SegmentIndex.flush = timed_flush  # type: ignore[method-assign]
    try:
        begin = time.perf_counter()
        build(VmemfsIndex(), workload)
        total = time.perf_counter() - begin
    finally:
        SegmentIndex.flush = original  # type: ignore[method-assign]
    share = FlushShare(len(workload), total, int(spent[1]), spent[0])
    log("  " + share.line())
    return share


# --------------------------------------------------------------------- report

def insert_table(runs: list[InsertRun]) -> str:
    rows = []
    for run in runs:
        if run.error:
            rows.append((run.implementation, f"{run.size:,}", "—", "—", "—", "—", "—", "—",
                         run.error))
            continue
        measured = run.done > 0
        rows.append((
            run.implementation,
            f"{run.size:,}",
            f"{run.done:,}" if measured else "—",
            (f"{run.wall:.2f} s" + (f" (median of {run.repeats})" if run.repeats > 1 else ""))
            if measured else "—",
            fmt_us(run.mean) + (" *" if run.note and "extrapolated" in run.note else ""),
            fmt_us(run.spread.p50) if measured else "—",
            fmt_us(run.spread.p99) if measured else "—",
            fmt_us(run.spread.max) if measured else "—",
            run.note,
        ))
    return markdown_table(("implementation", "N", "inserts done", "wall", "mean",
                           "p50", "p99", "max", "note"), rows)


def plot_inserts(all_runs: dict[str, list[InsertRun]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(all_runs)
    columns = 3
    rows = -(-(len(names) + 1) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows),
                                sharey=True)
    axes = list(np.ravel(grid))
    handles = []
    for axis, workload in zip(axes, names, strict=False):
        for implementation in IMPLEMENTATIONS:
            runs = [r for r in all_runs[workload] if r.implementation == implementation
                    and r.mean == r.mean]
            measured = [r for r in runs if r.finished]
            guessed = [r for r in runs if not r.finished]
            line = axis.plot([r.size for r in measured], [r.mean for r in measured],
                             marker="o", label=implementation)[0]
            if workload == names[0]:
                handles.append(line)
            if guessed:
                tail = measured[-1:] + guessed
                axis.plot([r.size for r in tail], [r.mean for r in tail], linestyle="--",
                          marker="x", color=line.get_color())
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"workload: {workload}")
        axis.set_xlabel("mappings inserted (N)")
        axis.grid(True, which="both", alpha=0.3)
        axis.set_ylabel("mean µs per insert")
    legend_axis = axes[len(names)]
    legend_axis.axis("off")
    legend_axis.legend(handles=handles, loc="center", title="solid: measured\n"
                       "dashed: extrapolated")
    for axis in axes[len(names) + 1:]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def find_run(runs: list[InsertRun], implementation: str, size: int) -> InsertRun | None:
    for run in runs:
        if run.implementation == implementation and run.size == size:
            return run
    return None


@dataclass
class Results:
    """Everything one run of this part measured."""

    size_name: str
    target_size: int
    lookup_size: int
    gate_lines: list[str] = field(default_factory=list)
    inserts: dict[str, list[InsertRun]] = field(default_factory=dict)
    memory: list[MemoryRun] = field(default_factory=list)
    lookups: list[LookupRun] = field(default_factory=list)
    vectorised_rate: float = float("nan")
    plain_runs: list[float] = field(default_factory=list)
    share: FlushShare | None = None
    profile: str = ""
    api: ApiRun | None = None

    @property
    def random_runs(self) -> list[InsertRun]:
        return self.inserts["random"]


def measure_inserts(results: Results,
                    kept: dict[str, IndexUnderTest]) -> Workload:
    """Run every implementation up every workload's ladder; returns the largest ``random``."""
    size_name = results.size_name
    sizes = LADDER[size_name]
    random_largest: Workload | None = None
    for workload_name, make_workload in WORKLOADS.items():
        log(f"inserts: {workload_name}")
        ladder = sizes if workload_name == "random" else OTHER_LADDER[size_name]
        if workload_name in PREFIX_STABLE:
            largest = make_workload(ladder[-1])
            workload_of = {size: largest for size in ladder}
        else:
            workload_of = {size: make_workload(size) for size in ladder}
        if workload_name == "random":
            random_largest = workload_of[ladder[-1]]
            budgets = {size: TARGET_BUDGET[size_name] if size == results.target_size
                       else BUDGET[size_name] for size in ladder}
            keep_at: int | None = results.lookup_size
        else:
            budgets = dict.fromkeys(ladder, OTHER_BUDGET[size_name])
            keep_at = None
        runs: list[InsertRun] = []
        for name in IMPLEMENTATIONS:
            runs += run_ladder(name, workload_of, ladder, budgets, keep_at, kept)
        results.inserts[workload_name] = runs
    assert random_largest is not None
    return random_largest


def measure_memory_phase(results: Results, random_largest: Workload) -> None:
    """Every implementation at the lookup size (``portion`` at its gate size)."""
    log("memory")
    lookup_size = results.lookup_size
    for name in IMPLEMENTATIONS:
        count = lookup_size
        note = ""
        if name == "portion":
            count = PORTION_GATE_SIZE
            note = f"built to {PORTION_GATE_SIZE:,} (slower assignment)"
        elif name not in ("vmemfs", "rebuild"):
            run = find_run(results.random_runs, name, lookup_size)
            if run is not None and not run.finished:
                count = max(r.size for r in results.random_runs
                            if r.implementation == name and r.finished)
                note = f"built to {count:,} (over budget at {lookup_size:,})"
        results.memory.append(measure_memory(name, _prefix(random_largest, count), note))
    if len(random_largest) > lookup_size:
        results.memory.append(measure_memory("vmemfs", random_largest))


def measure_lookup_phase(results: Results, random_largest: Workload,
                         kept: dict[str, IndexUnderTest]) -> None:
    """Lookups and range resolution on the ``random`` workload at the lookup size."""
    lookup_size = results.lookup_size
    count_of_lookups = LOOKUP_COUNT[results.size_name]
    log(f"lookups at {lookup_size:,} mappings")
    lookup_workload = _prefix(random_largest, lookup_size)
    for name in IMPLEMENTATIONS:
        index = kept.get(name)
        note = ""
        if index is None and name == "rebuild":
            index = build(RebuildIndex(deferred=True), lookup_workload)
            note = "layout built once (same layout as after each insert)"
        elif index is None:
            count = max((r.size for r in results.random_runs
                         if r.implementation == name and r.finished), default=1_000)
            index = build(IMPLEMENTATIONS[name](), _prefix(random_largest, count))
            note = f"built to {count:,} mappings (inserts too slow for more)"
        results.lookups.append(measure_lookups(name, index, lookup_size, lookup_workload,
                                               count_of_lookups,
                                               LOOKUP_BUDGET[results.size_name], note))
    vmemfs_index = kept["vmemfs"]
    assert isinstance(vmemfs_index, VmemfsIndex)
    results.vectorised_rate = vectorised_lookup_rate(vmemfs_index, lookup_workload,
                                                     count_of_lookups)


def check_targets(section: Section, results: Results, random_largest: Workload) -> None:
    """Add the index targets to the section (timing 1e6 plain inserts if in the ladder)."""
    target_size = results.target_size

    def mean_of(name: str) -> tuple[float, str]:
        run = find_run(results.random_runs, name, target_size)
        if run is None:
            return float("nan"), "not run"
        return run.mean, "extrapolated" if "extrapolated" in run.note else "measured"

    vmemfs_mean, _ = mean_of("vmemfs")
    at = f"at {target_size:,}"
    if target_size != TARGET_SIZE:
        at += f" (goal is stated at {TARGET_SIZE:,})"
    for peer, goal in (("intervaltree", 10.0), ("portion", 10.0), ("rebuild", 1000.0)):
        peer_mean, how = mean_of(peer)
        section.add_target(Target(
            f"insert speed-up over {peer}", peer_mean / vmemfs_mean, goal, "×",
            note=f"{at}; {peer} {how}"))
    top = len(random_largest)
    if top >= 1_000_000:
        results.plain_runs = [_plain_insert_seconds(random_largest) for _ in range(PLAIN_RUNS)]
        section.add_target(Target(f"{top:,} inserts (wall time)",
                                  float(np.median(results.plain_runs)), 10.0, "s",
                                  higher_is_better=False,
                                  note=f"random workload, median of {PLAIN_RUNS}"))
    vmemfs_memory = [m for m in results.memory if m.implementation == "vmemfs"]
    worst_memory = max(vmemfs_memory, key=lambda m: m.per_piece)
    section.add_target(Target("index memory per piece", worst_memory.per_piece, 64.0, "B",
                              higher_is_better=False,
                              note=f"tracemalloc, {worst_memory.size:,} mappings"))
    if results.api is not None:
        api = results.api
        section.add_target(Target(
            "add_bytes speed-up over intervaltree", api.median("intervaltree")
            / api.median("add_bytes"), 10.0, "×",
            note=f"{api.size:,} sparse mappings below 2**32, median of "
                 f"{len(api.seconds['add_bytes'])}"))
    if any(not t.met for t in section.targets if not t.name.startswith("add_bytes")):
        log("a target was missed: profiling vmemfs inserts")
        results.share = flush_share(random_largest)
        results.profile = profile_inserts(random_largest, target_size)


def report(results: Results, figure: str | None) -> str:
    """The section's Markdown."""
    size_name, target_size = results.size_name, results.target_size
    parts = [
        "Every implementation does the same override work: mappings are inserted one at a "
        "time, a later one winning where they overlap. `rebuild` is the original design "
        "(the resolved layout recomputed from all mappings with a numpy segment tree after "
        "every insert), written for the benchmark; `SortedDict` is a plain "
        "`sortedcontainers` override map; `intervaltree` does `chop` then `addi`; "
        "`portion` assigns into an `IntervalDict`.",
        "",
        "**Correctness gate** (same flattened layout as vmemfs): "
        + "; ".join(results.gate_lines) + ".",
        "",
        f"Time budget per implementation and size: {BUDGET[size_name]:g} s on `random` "
        f"({TARGET_BUDGET[size_name]:g} s at {target_size:,}), "
        f"{OTHER_BUDGET[size_name]:g} s on the others. Means marked * are extrapolated "
        "from the inserts that did finish (a power-law fit of per-insert cost against "
        "the number of mappings already inserted; for `rebuild`, single rebuilds timed "
        "at the sizes named); p50/p99/max are of the measured inserts only. vmemfs's p99 "
        "and max include the periodic merges of its write buffer into the arrays.",
        "",
    ]
    if figure is not None:
        parts += [f"![insert cost against N]({figure})", ""]
    speedups = []
    for workload_name, runs in results.inserts.items():
        parts += [f"#### Inserts: `{workload_name}`", "", insert_table(runs), ""]
        mine = find_run(runs, "vmemfs", target_size)
        for peer in IMPLEMENTATIONS:
            if peer == "vmemfs":
                continue
            theirs = find_run(runs, peer, target_size)
            if mine and theirs and mine.mean == mine.mean and theirs.mean == theirs.mean:
                label = " *" if "extrapolated" in theirs.note else ""
                speedups.append((workload_name, peer,
                                 fmt_ratio(theirs.mean / mine.mean) + label))
    parts += [f"#### vmemfs speed-up per insert at {target_size:,} mappings", "",
              markdown_table(("workload", "against", "vmemfs faster by"), speedups), ""]
    if results.plain_runs:
        top = max(r.size for r in results.random_runs)
        parts += [f"{top:,} `random` inserts without per-insert clocks, "
                  f"{len(results.plain_runs)} runs: "
                  + ", ".join(f"{t:.2f} s" for t in results.plain_runs) + ".", ""]
    parts += [
        "#### Memory (tracemalloc around building the structure, `random` workload)", "",
        markdown_table(("implementation", "mappings", "pieces", "traced", "bytes per piece",
                        "note"),
                       [(m.implementation, f"{m.size:,}", f"{m.pieces:,}",
                         f"{m.traced / 1e6:.2f} MB", f"{m.per_piece:.1f}", m.note)
                        for m in results.memory]),
        "",
        "vmemfs's figure includes its write buffer (the pieces inserted since the last "
        "merge) as it stands after the last insert; the merged arrays take 28 B per piece.",
        "",
        f"#### Lookups (`random` workload, {results.lookup_size:,} mappings)", "",
        markdown_table(("implementation", "random lookups", "sorted lookups",
                        "resolve 4 KiB", "resolve 128 KiB", "note"),
                       [(r.implementation, fmt_rate(r.random_rate), fmt_rate(r.sorted_rate),
                         fmt_us(r.resolve_4k), fmt_us(r.resolve_128k), r.note)
                        for r in results.lookups]),
        "",
        f"Lookups are single `lookup(address)` calls in a Python loop. A vectorised batch "
        f"through `SegmentIndex.arrays()` and one `numpy.searchsorted` runs at "
        f"{fmt_rate(results.vectorised_rate)}.",
        "",
    ]
    if results.api is not None:
        parts += [api_report(results.api), ""]
    if results.profile:
        parts += ["#### Where vmemfs's insert time goes (a target was missed)", ""]
        if results.share is not None:
            parts += [results.share.line(), ""]
        parts += [f"cProfile of {target_size:,} `random` inserts (sorted by own time):", "",
                  "```", results.profile.strip(), "```", ""]
    return "\n".join(parts)


def started_line() -> str:
    """When this part started, and the load on the machine then (other work)."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"Started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
            f"{load}.")


def main() -> None:
    args = part_arguments(__doc__.splitlines()[0])
    size_name = args.size
    began = time.perf_counter()
    section = Section("index_bench", "Segment index", command_line("index_bench", size_name))
    when = started_line()
    sizes = LADDER[size_name]
    results = Results(size_name,
                      target_size=TARGET_SIZE if TARGET_SIZE in sizes else sizes[-1],
                      lookup_size=LOOKUP_SIZE[size_name])

    log(f"correctness gate at {GATE_SIZE[size_name]:,} mappings")
    results.gate_lines = correctness_gate(GATE_SIZE[size_name])
    kept: dict[str, IndexUnderTest] = {}
    random_largest = measure_inserts(results, kept)
    measure_memory_phase(results, random_largest)
    measure_lookup_phase(results, random_largest, kept)
    kept.clear()
    results.api = measure_public_api(size_name)
    check_targets(section, results, random_largest)

    figure = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot_inserts(results.inserts, args.out / "index_inserts.png")
        figure = "perf/index_inserts.png"
        section.figures.append(figure)
    section.markdown = when + "\n\n" + report(results, figure)
    section.data = {
        "inserts": [{"implementation": r.implementation, "workload": r.workload,
                     "size": r.size, "done": r.done, "mean_us": r.mean, "note": r.note,
                     "p50_us": r.spread.p50, "p99_us": r.spread.p99, "max_us": r.spread.max}
                    for runs in results.inserts.values() for r in runs],
        "memory": [{"implementation": m.implementation, "size": m.size, "pieces": m.pieces,
                    "traced": m.traced} for m in results.memory],
        "api_seconds": results.api.seconds if results.api else {},
    }
    section.seconds = time.perf_counter() - began
    finish_part(section, args.out)


def _prefix(workload: Workload, size: int) -> Workload:
    return Workload(workload.name, workload.starts[:size], workload.ends[:size],
                    workload.sources[:size], workload.deltas[:size], workload.span)


def _plain_insert_seconds(workload: Workload) -> float:
    """Wall-clock seconds for vmemfs to insert the whole workload without per-insert clocks."""
    gc.collect()
    index = VmemfsIndex()
    begin = time.perf_counter()
    build(index, workload)
    seconds = time.perf_counter() - begin
    log(f"  vmemfs {len(workload):,} inserts without per-insert clocks: {seconds:.2f} s")
    return seconds


if __name__ == "__main__":
    main()
