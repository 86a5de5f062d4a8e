"""Search benchmark: ``MemoryMap.find_all`` against ``grep -c -F`` and a naive Python loop.

One file of random bytes (1 GiB at ``--size full``) with a 16-byte pattern planted at a
known number of places is scanned, page-cached, by:

* ``find_all`` on ``MemoryMap.of_file(path, 0x10000000)``;
* ``LC_ALL=C grep -c -F PATTERN file`` (counts matching lines; the planted matches are
  megabytes apart, so each is on its own line);
* a naive Python loop: every position compared with the pattern's first byte, then a
  slice compared with the pattern (budgeted: its throughput is taken over the bytes it
  managed to scan).

The three counts must agree before any time is reported.  Rounds alternate the order of
the systems; the table gives medians.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    Section,
    Target,
    alternate,
    command_line,
    finish_part,
    fmt_bytes_rate,
    fmt_ratio,
    markdown_table,
    median,
    part_arguments,
    run,
)
from vmemfs import MemoryMap

PATTERN = b"\x8fvmemfs-needle\x17!"
"""16 bytes, no NUL or newline (it is passed to grep as an argument)."""
FILE_SIZE = {"small": 64 << 20, "medium": 256 << 20, "full": 1 << 30}
MATCHES = {"small": 64, "medium": 256, "full": 1000}
ROUNDS = {"small": 3, "medium": 3, "full": 5}
NAIVE_BUDGET = {"small": 1.0, "medium": 2.0, "full": 4.0}
BASE = 0x10000000
"""Where the file is placed in the map."""


def make_haystack(path: Path, size: int, matches: int, seed: int = 11) -> list[int]:
    """Write ``size`` random bytes with ``PATTERN`` at ``matches`` places; return the offsets.

    Consecutive places are about ``size / matches`` bytes apart.
    """
    rng = np.random.default_rng(seed)
    spacing = size // matches
    places = [int(i * spacing + rng.integers(0, spacing - len(PATTERN)))
              for i in range(matches)]
    chunk = 64 << 20
    with path.open("wb") as file:
        for begin in range(0, size, chunk):
            file.write(rng.bytes(min(chunk, size - begin)))
        for place in places:
            os.pwrite(file.fileno(), PATTERN, place)
    return places


def grep_count(path: Path) -> int:
    """``grep -c -F`` in the C locale; the count of matching lines."""
    result = run([b"grep", b"-c", b"-F", b"-a", b"--", PATTERN, bytes(path)],
                 env={**os.environ, "LC_ALL": "C"})
    return int(result.stdout.strip())


def naive_scan(path: Path, budget: float) -> tuple[int, int, float]:
    """The naive loop: ``(bytes scanned, matches, seconds)`` until the budget ends."""
    first = PATTERN[0]
    width = len(PATTERN)
    scanned = matches = 0
    chunk = 1 << 20
    begin = time.perf_counter()
    with path.open("rb") as file:
        while time.perf_counter() - begin < budget:
            data = file.read(chunk + width - 1)
            if len(data) < width:
                break
            file.seek(-(width - 1), os.SEEK_CUR)
            for i in range(len(data) - width + 1):
                if data[i] == first and data[i:i + width] == PATTERN:
                    matches += 1
            scanned += len(data) - width + 1
    return scanned, matches, time.perf_counter() - begin


def main() -> None:
    args = part_arguments(__doc__.splitlines()[0])
    size_name = args.size
    began = time.perf_counter()
    section = Section("search_bench", "Search", command_line("search_bench", size_name))
    size, matches = FILE_SIZE[size_name], MATCHES[size_name]
    with tempfile.TemporaryDirectory(prefix="vmemfs-search-",
                                     dir=os.environ.get("VMEMFS_BENCH_DIR")) as work:
        path = Path(work) / "haystack.bin"
        print(f"writing {size >> 20} MiB with {matches} planted matches", flush=True)
        places = make_haystack(path, size, matches)
        path.read_bytes()  # into the page cache (and no other reads are cold)
        memmap = MemoryMap.of_file(path, BASE)
        expected = [BASE + place for place in places]

        found = memmap.find_all(PATTERN)
        if found != expected:
            raise SystemExit(f"find_all found {len(found)} matches, expected {matches}")
        counted = grep_count(path)
        if counted != matches:
            raise SystemExit(f"grep -c -F counted {counted} lines, expected {matches}")

        def time_find_all() -> float:
            begin = time.perf_counter()
            count = len(memmap.find_all(PATTERN))
            elapsed = time.perf_counter() - begin
            assert count == matches
            return elapsed

        def time_grep() -> float:
            begin = time.perf_counter()
            count = grep_count(path)
            elapsed = time.perf_counter() - begin
            assert count == matches
            return elapsed

        samples = alternate({"find_all": time_find_all, "grep -c -F": time_grep},
                            ROUNDS[size_name])
        scanned, naive_matches, naive_seconds = naive_scan(path, NAIVE_BUDGET[size_name])
        expected_naive = sum(1 for place in places if place < scanned)
        if naive_matches != expected_naive:
            raise SystemExit(f"naive loop found {naive_matches}, expected {expected_naive}")
        memmap.close()

    rates = {name: size / median(times) for name, times in samples.items()}
    naive_rate = scanned / naive_seconds
    ratio = rates["find_all"] / rates["grep -c -F"]
    for name, rate in rates.items():
        print(f"{name:12} {fmt_bytes_rate(rate)} (median of {len(samples[name])})")
    print(f"{'naive loop':12} {fmt_bytes_rate(naive_rate)} over {scanned >> 20} MiB")
    section.add_target(Target("find_all throughput / grep -c -F", ratio, 0.5, "×",
                              note=f"{size >> 20} MiB, page-cached"))

    rows = [
        ("`MemoryMap.find_all`", fmt_bytes_rate(rates["find_all"]),
         fmt_ratio(ratio), f"median of {len(samples['find_all'])}; {matches} matches"),
        ("`LC_ALL=C grep -c -F`", fmt_bytes_rate(rates["grep -c -F"]), "1×",
         f"median of {len(samples['grep -c -F'])}; {matches} lines"),
        ("naive Python loop", fmt_bytes_rate(naive_rate),
         fmt_ratio(naive_rate / rates["grep -c -F"]),
         f"{scanned >> 20} MiB scanned in {naive_seconds:.1f} s; {naive_matches} matches"),
    ]
    section.markdown = "\n".join([
        f"A {size >> 20} MiB file of random bytes, page-cached, with a {len(PATTERN)}-byte "
        f"pattern planted at {matches} known places; every system must find exactly those "
        "before its time counts. Rounds alternate the systems' order.",
        "",
        markdown_table(("system", "throughput", "vs grep", "note"), rows),
        "",
        "Per-round seconds: find_all "
        + ", ".join(f"{t:.3f}" for t in samples["find_all"])
        + "; grep " + ", ".join(f"{t:.3f}" for t in samples["grep -c -F"]) + ".",
        "",
    ])
    section.data = {"file_bytes": size, "seconds": samples,
                    "naive": {"bytes": scanned, "seconds": naive_seconds}}
    section.seconds = time.perf_counter() - began
    finish_part(section, args.out)


if __name__ == "__main__":
    random.seed(0)
    main()
