"""Load: concurrent readers over a mount with many extents while its layout keeps changing.

One ELF core with :data:`EXTENT_COUNT` extents is mounted.  For a bounded time
(:data:`DURATION` seconds, and at most :data:`MAX_READS` reads per reader):

* threads of the test process and worker processes make random ``pread`` calls on
  ``mem`` and on ``extents/`` files;
* a worker process runs ``dd`` over ``mem`` again and again, from random offsets;
* a rewriter process keeps writing ``.ctl/base`` (:data:`BASE_A` or :data:`BASE_B`) and
  ``.ctl/holes`` (``eio`` or ``zero``), as the shell's ``>`` does.

Every 8-byte word of the map holds its own address xor :data:`MAGIC`, so a byte from
the wrong place cannot pass.  Each ``pread`` of ``mem`` (at most 64 KiB: one FUSE request)
must equal what one of the four layouts in force gives, or fail with ``EIO`` where that
layout has a hole; each word ``dd`` copies must belong to one of them (``dd`` makes many
requests, so the layout may change between its reads).  ``extents/`` files never change.
The daemon must stay up, and its anonymous memory must stay flat after a warm-up.

This file is also the worker program: ``python test_load.py KIND ...`` (see
:func:`worker_main`); workers print one JSON summary line.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MAGIC = 0x9E3779B97F4A7C15
"""Word at address ``a`` (8-aligned) is ``a ^ MAGIC``: never zero below 2**63."""
EXTENT_COUNT = 3000
FIRST_ADDRESS = 0x10000
BASE_A = 0
BASE_B = 0x18088
"""The two bases the rewriter alternates between (multiples of 8, not of a page)."""
LAYOUTS: tuple[tuple[int, str], ...] = (
    (BASE_A, "eio"), (BASE_A, "zero"), (BASE_B, "eio"), (BASE_B, "zero"))
WARM_UP = 3.0
DURATION = 15.0
MAX_READS = 200_000
MAX_READ_SIZE = 65536
"""At most one FUSE request per ``pread`` (requests carry up to 128 KiB)."""
DD_BLOCK = 65536
RECORDS_IN = re.compile(rb"(\d+)\+(\d+) records in")
"""``dd``'s count of full and partial reads (a short read is a partial record)."""
RSS_GROWTH_LIMIT_KIB = 16 * 1024
"""How much the daemon's anonymous memory may grow between warm-up and the end."""


# ==================================================================== the reference model


class Reference:
    """What ``mem`` and ``extents/`` must show, from the extents alone."""

    def __init__(self, starts: list[int], ends: list[int]) -> None:
        self.starts = starts
        self.ends = ends
        self.top = ends[-1]

    @classmethod
    def load(cls, path: Path) -> Reference:
        table = np.load(path)
        return cls(table[0].tolist(), table[1].tolist())

    def save(self, path: Path) -> None:
        np.save(path, np.array([self.starts, self.ends], dtype=np.uint64))

    @staticmethod
    def content(start: int, end: int) -> bytes:
        """The mapped bytes ``[start, end)`` (assuming they are mapped)."""
        first = start & ~7
        words = np.arange(first, end + 7 & ~7, 8, dtype=np.uint64) ^ np.uint64(MAGIC)
        return words.astype("<u8").tobytes()[start - first:end - first]

    def mem_size(self, base: int) -> int:
        return max(0, self.top - base)

    def extent_of(self, address: int) -> int | None:
        """The index of the extent holding ``address``, or ``None`` for a hole."""
        number = bisect_right(self.starts, address) - 1
        if number >= 0 and address < self.ends[number]:
            return number
        return None

    def expected(self, layout: tuple[int, str], offset: int, size: int) -> bytes | None:
        """What a read of ``mem`` gives under ``layout``; ``None`` means ``EIO``."""
        base, holes = layout
        remaining = self.mem_size(base) - offset
        if remaining <= 0:
            return b""
        size = min(size, remaining)
        start = base + offset
        end = start + size
        if holes == "eio":
            number = self.extent_of(start)
            if number is None:
                return None
            return self.content(start, min(end, self.ends[number]))
        result = bytearray(size)
        number = max(0, bisect_right(self.starts, start) - 1)
        while number < len(self.starts) and self.starts[number] < end:
            low, high = max(start, self.starts[number]), min(end, self.ends[number])
            if low < high:
                result[low - start:high - start] = self.content(low, high)
            number += 1
        return bytes(result)

    def match(self, offset: int, size: int, data: bytes | None) -> tuple[int, str] | None:
        """The first layout under which a read gives ``data`` (``None``: ``EIO``)."""
        for layout in LAYOUTS:
            if self.expected(layout, offset, size) == data:
                return layout
        return None

    def stream_problem(self, offset: int, data: bytes) -> str | None:
        """Why ``data``, read from ``mem`` at ``offset`` by many requests, cannot be
        right: a word that belongs to no layout.  ``offset`` and ``len(data)`` are
        multiples of 8 (every request boundary then is one)."""
        words = np.frombuffer(data, dtype="<u8")
        offsets = np.arange(offset, offset + len(data), 8, dtype=np.uint64)
        good = np.zeros(len(words), dtype=bool)
        starts = np.array(self.starts, dtype=np.uint64)
        ends = np.array(self.ends, dtype=np.uint64)
        for base in (BASE_A, BASE_B):
            addresses = offsets + np.uint64(base)
            inside = offsets < np.uint64(self.mem_size(base))
            number = np.searchsorted(starts, addresses, side="right").astype(np.int64) - 1
            mapped = (number >= 0) & (addresses < ends[np.maximum(number, 0)])
            good |= inside & mapped & (words == (addresses ^ np.uint64(MAGIC)))
            good |= inside & ~mapped & (words == 0)
        bad = np.flatnonzero(~good)
        if not len(bad):
            return None
        at = offset + 8 * int(bad[0])
        return f"word at mem offset {at:#x} is {int(words[bad[0]]):#x}"

    def hole_in_some_layout(self, offset: int) -> bool:
        return any(offset < self.mem_size(base) and self.extent_of(base + offset) is None
                   for base in (BASE_A, BASE_B))

    def end_in_some_layout(self, offset: int) -> bool:
        return any(offset >= self.mem_size(base) for base in (BASE_A, BASE_B))


def make_map(directory: Path, seed: int = 11) -> tuple[Path, Reference]:
    """An ELF core with :data:`EXTENT_COUNT` extents (8-aligned, up to 4 KiB, with holes
    of up to 4 KiB between them), and its reference."""
    from artifacts.craft import Segment, build_elf

    rng = random.Random(seed)
    starts, ends, segments = [], [], []
    address = FIRST_ADDRESS
    for _ in range(EXTENT_COUNT):
        address += 8 * rng.randrange(1, 512)
        end = address + 8 * rng.randrange(1, 512)
        starts.append(address)
        ends.append(end)
        segments.append(Segment(address, Reference.content(address, end)))
        address = end
    rng.shuffle(segments)           # header order does not matter: nothing overlaps
    path = directory / "many.core"
    path.write_bytes(build_elf(segments))
    return path, Reference(starts, ends)


# ==================================================================== the readers


@dataclass
class Tally:
    """What one reader did and found."""

    reads: int = 0
    bytes: int = 0
    eio: int = 0
    layouts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 5:
            self.problems.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"reads": self.reads, "bytes": self.bytes, "eio": self.eio,
                "layouts": dict(self.layouts), "problems": self.problems,
                "problem_count": self.problem_count}

    def add(self, other: dict[str, Any]) -> None:
        self.reads += other["reads"]
        self.bytes += other["bytes"]
        self.eio += other["eio"]
        self.layouts.update(other["layouts"])
        self.problems.extend(other["problems"][:5])
        self.problem_count += other["problem_count"]


def random_preads(mountpoint: Path, reference: Reference, seed: int, deadline: float,
                  tally: Tally) -> None:
    """``pread`` ``mem`` and ``extents/`` files at random until ``deadline``."""
    rng = random.Random(seed)
    names = sorted(os.listdir(mountpoint / "extents"))
    mem = os.open(mountpoint / "mem", os.O_RDONLY)
    try:
        while time.monotonic() < deadline and tally.reads < MAX_READS:
            tally.reads += 1
            if rng.random() < 0.2:
                read_extent(mountpoint, names, reference, rng, tally)
                continue
            offset = rng.randrange(0, reference.top + 0x1000)
            size = rng.randrange(1, MAX_READ_SIZE + 1)
            try:
                data: bytes | None = os.pread(mem, size, offset)
            except OSError as error:
                if error.errno != errno.EIO:
                    tally.problem(f"pread({offset:#x}, {size}): {error}")
                    continue
                data = None
                tally.eio += 1
            else:
                tally.bytes += len(data)
            layout = reference.match(offset, size, data)
            if layout is None:
                shown = "EIO" if data is None else f"{len(data)} bytes {data[:16].hex()}..."
                tally.problem(f"pread({offset:#x}, {size}) gave {shown}: no layout")
            else:
                tally.layouts[f"{layout[0]:#x}/{layout[1]}"] += 1
    finally:
        os.close(mem)


def read_extent(mountpoint: Path, names: list[str], reference: Reference,
                rng: random.Random, tally: Tally) -> None:
    number = rng.randrange(len(names))
    start, end = reference.starts[number], reference.ends[number]
    offset = rng.randrange(0, end - start)
    size = rng.randrange(1, MAX_READ_SIZE + 1)
    fd = os.open(mountpoint / "extents" / names[number], os.O_RDONLY)
    try:
        data = os.pread(fd, size, offset)
    except OSError as error:
        tally.problem(f"extent {names[number]} pread({offset}, {size}): {error}")
        return
    finally:
        os.close(fd)
    tally.bytes += len(data)
    if data != reference.content(start + offset, min(end, start + offset + size)):
        tally.problem(f"extent {names[number]} pread({offset}, {size}): wrong bytes")
    tally.layouts["extent"] += 1


def dd_runs(mountpoint: Path, reference: Reference, seed: int, deadline: float,
            tally: Tally) -> None:
    """Run ``dd`` over ``mem`` from random 8-aligned offsets until ``deadline``."""
    rng = random.Random(seed)
    mem = mountpoint / "mem"
    while time.monotonic() < deadline and tally.reads < MAX_READS:
        tally.reads += 1
        offset = 8 * rng.randrange(0, reference.top // 8)
        count = rng.randrange(1, 64)
        result = subprocess.run(
            ["dd", f"if={mem}", f"bs={DD_BLOCK}", f"skip={offset}", "iflag=skip_bytes",
             f"count={count}", "status=noxfer"], capture_output=True, timeout=60)
        data = result.stdout
        tally.bytes += len(data)
        where = f"dd from {offset:#x} ({count} blocks)"
        if len(data) % 8:
            tally.problem(f"{where}: {len(data)} bytes, not a multiple of 8")
            continue
        problem = reference.stream_problem(offset, data)
        if problem:
            tally.problem(f"{where}: {problem}")
            continue
        stop = offset + len(data)
        if result.returncode != 0:
            if b"Input/output error" not in result.stderr:
                tally.problem(f"{where}: {result.stderr.decode(errors='replace').strip()}")
            elif not reference.hole_in_some_layout(stop):
                tally.problem(f"{where}: EIO at {stop:#x}, a hole in no layout")
            else:
                tally.eio += 1
        else:
            records = RECORDS_IN.search(result.stderr)
            reads = int(records[1]) + int(records[2]) if records else -1
            if reads != count and not reference.end_in_some_layout(stop):
                tally.problem(f"{where}: stopped at {stop:#x} after {reads} reads "
                              "without an error")


def rewrite_controls(mountpoint: Path, seed: int, deadline: float) -> dict[str, int]:
    """Write ``.ctl/base`` and ``.ctl/holes`` as ``echo VALUE > FILE`` does, until
    ``deadline``; every write must succeed."""
    rng = random.Random(seed)
    writes = 0
    failures = 0
    controls = mountpoint / ".ctl"
    while time.monotonic() < deadline:
        name, value = rng.choice([("base", f"{BASE_A:#x}"), ("base", f"{BASE_B:#x}"),
                                  ("holes", "eio"), ("holes", "zero")])
        try:
            fd = os.open(controls / name, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, f"{value}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            failures += 1
        writes += 1
    return {"writes": writes, "failures": failures}


def worker_main(argv: list[str]) -> int:
    """``KIND MOUNTPOINT REFERENCE SEED SECONDS``: run one reader or the rewriter and
    print its summary as one JSON line."""
    kind, mountpoint, reference_path, seed, seconds = argv
    deadline = time.monotonic() + float(seconds)
    if kind == "rewrite":
        print(json.dumps(rewrite_controls(Path(mountpoint), int(seed), deadline)))
        return 0
    reference = Reference.load(Path(reference_path))
    tally = Tally()
    run = random_preads if kind == "pread" else dd_runs
    run(Path(mountpoint), reference, int(seed), deadline, tally)
    print(json.dumps(tally.as_dict()))
    return 0


# ==================================================================== the test


def memory_of(pid: int) -> dict[str, int]:
    """``RssAnon``, ``RssFile``, ``RssShmem`` and ``VmRSS`` of ``pid`` in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


def start_worker(kind: str, mountpoint: Path, reference: Path, seed: int,
                 seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, kind, str(mountpoint), str(reference), str(seed),
         str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).parent)


def finish_worker(process: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("a load worker did not finish") from None
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def run_phase(mountpoint: Path, reference: Reference, reference_path: Path,
              seconds: float, seed: int) -> dict[str, Any]:
    """Two reader threads here, two ``pread`` processes, one ``dd`` process and the
    rewriter, for ``seconds``; the tallies."""
    workers = {
        "pread-processes": [start_worker("pread", mountpoint, reference_path, seed + n,
                                         seconds) for n in (1, 2)],
        "dd": [start_worker("dd", mountpoint, reference_path, seed + 3, seconds)],
        "rewrite": [start_worker("rewrite", mountpoint, reference_path, seed + 4,
                                 seconds)],
    }
    deadline = time.monotonic() + seconds
    thread_tallies = [Tally() for _ in range(2)]
    threads = [threading.Thread(target=random_preads,
                                args=(mountpoint, reference, seed + 10 + n, deadline, tally))
               for n, tally in enumerate(thread_tallies)]
    try:
        for thread in threads:
            thread.start()
    finally:
        for thread in threads:
            thread.join(timeout=seconds + 120)
        results: dict[str, Any] = {kind: [finish_worker(process, seconds)
                                          for process in processes]
                                   for kind, processes in workers.items()}
    assert not any(thread.is_alive() for thread in threads)
    results["pread-threads"] = [tally.as_dict() for tally in thread_tallies]
    return results


def summarise(results: dict[str, Any]) -> tuple[dict[str, Tally], dict[str, int]]:
    tallies = {}
    for kind in ("pread-threads", "pread-processes", "dd"):
        total = Tally()
        for tally in results[kind]:
            total.add(tally)
        tallies[kind] = total
    [rewrites] = results["rewrite"]
    return tallies, rewrites


@pytest.mark.mount
@pytest.mark.slow
def test_concurrent_readers_while_the_layout_changes(mounts: Any, tmp_path: Path) -> None:
    core, reference = make_map(tmp_path)
    reference_path = tmp_path / "reference.npy"
    reference.save(reference_path)
    # Direct mode: one request per pread, so each read shows one layout (the page-cache
    # mode under load is tested in test_pagecache.py).
    mount = mounts.foreground(core, "cache=never")
    extents = os.listdir(mount.path("extents"))
    assert len(extents) == EXTENT_COUNT
    memory_at_start = memory_of(mount.pid)

    run_phase(mount.mountpoint, reference, reference_path, WARM_UP, seed=100)
    memory_before = memory_of(mount.pid)
    started = time.monotonic()
    results = run_phase(mount.mountpoint, reference, reference_path, DURATION, seed=200)
    elapsed = time.monotonic() - started
    memory_after = memory_of(mount.pid)

    tallies, rewrites = summarise(results)
    report = {
        "extents": EXTENT_COUNT, "seconds": round(elapsed, 1),
        "memory_kib": {"start": memory_at_start, "after_warm_up": memory_before,
                       "end": memory_after},
        "rewrites": rewrites,
        **{kind: {"reads": t.reads, "eio": t.eio, "mib": round(t.bytes / 2**20, 1),
                  "layouts": dict(t.layouts)} for kind, t in tallies.items()},
    }
    print("\nload:", json.dumps(report))
    problems = [problem for tally in tallies.values() for problem in tally.problems]
    assert sum(t.problem_count for t in tallies.values()) == 0, problems
    assert rewrites["failures"] == 0
    assert rewrites["writes"] > 100
    # Each reader saw more than one layout, and reads of mem met holes.
    for kind in ("pread-threads", "pread-processes"):
        assert len(tallies[kind].layouts) >= 4, tallies[kind].layouts
        assert tallies[kind].eio > 0
    assert tallies["dd"].reads > 10
    assert mount.alive()
    assert mount.path("mem").stat().st_size in (reference.mem_size(BASE_A),
                                                reference.mem_size(BASE_B))
    growth = memory_after["RssAnon"] - memory_before["RssAnon"]
    assert growth < RSS_GROWTH_LIMIT_KIB, report["memory_kib"]


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
