"""Typed reads and search through the mount: ``at/``, a ``deref`` chain, ``find/``.

One file of random bytes (1 GiB at ``--size full``), with a 16-byte pattern planted at a
known number of places and a linked list of 41 pointers written at its start, is mounted
with ``mount.vmemfs FILE DIR -f -o wordsize=64,endian=little``, and measured:

* ``at/ADDRESS/pointer`` reads per second from a Python loop (``open``, ``read``,
  ``close``; 1000 distinct addresses, cycled), against the same loop over a small
  regular file (page-cached) and over ``DIR/.ctl/wordsize``;
* the same from a shell loop (``for ...; do cat at/$a/pointer; done``), against ``cat``
  of the regular file;
* a 40-step ``deref`` chain in one path (``at/A/deref/…/deref/pointer``): the first
  open (40 lookups and 40 readlinks) and the next ones (names cached by the kernel, the
  links read again);
* ``find/`` throughput: reading ``DIR/find/hex/PATTERN`` to its end, against
  ``LC_ALL=C grep -c -F PATTERN FILE`` (target ≥ 0.5×) and ``MemoryMap.find_all`` in
  process;
* the latency of random 4 KiB reads of ``DIR/mem`` while a ``find/`` scan of the whole
  file runs (target p99 ≤ 20 ms), and without one.

Every count is checked before its time is taken.  Rounds alternate the systems' order.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import (
    VENV_BIN,
    Section,
    Spread,
    Target,
    alternate,
    command_line,
    finish_part,
    fmt_bytes_rate,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    markdown_table,
    median,
    part_arguments,
)
from bench.mounts import Mount
from bench.search_bench import PATTERN, grep_count, make_haystack
from vmemfs import MemoryMap

FILE_SIZE = {"small": 64 << 20, "medium": 256 << 20, "full": 1 << 30}
MATCHES = {"small": 64, "medium": 256, "full": 1000}
ROUNDS = {"small": 3, "medium": 3, "full": 5}
PYTHON_READS = {"small": 5_000, "medium": 10_000, "full": 20_000}
SHELL_READS = {"small": 300, "medium": 500, "full": 1_000}
LATENCY_SCANS = {"small": 3, "medium": 4, "full": 6}
CHAIN = 40
"""Steps of the ``deref`` chain."""
NODE_SPACING = 4096
"""Bytes between the chain's nodes (each holds the address of the next)."""
DISTINCT = 1000
"""Distinct addresses cycled by the ``at/`` loops."""


def write_chain(path: Path) -> list[int]:
    """Write ``CHAIN + 1`` nodes at the start of ``path``, node ``i`` at
    ``i * NODE_SPACING`` holding the address of node ``i + 1`` (little endian, 64-bit);
    return the node addresses."""
    nodes = [i * NODE_SPACING for i in range(CHAIN + 1)]
    with open(path, "r+b") as stream:
        for node, following in zip(nodes, [*nodes[1:], 0], strict=True):
            os.pwrite(stream.fileno(), following.to_bytes(8, "little"), node)
    return nodes


def python_loop(paths: list[str], count: int) -> float:
    """Reads per second of ``open``/``read``/``close`` over ``paths``, cycled."""
    began = time.perf_counter()
    for number in range(count):
        with open(paths[number % len(paths)], "rb", buffering=0) as stream:
            stream.read(64)
    return count / (time.perf_counter() - began)


def shell_loop(paths: list[str], count: int) -> float:
    """Reads per second of ``cat`` in a bash loop over ``paths``, cycled."""
    listing = "\n".join(paths[number % len(paths)] for number in range(count)) + "\n"
    began = time.perf_counter()
    subprocess.run(["bash", "-c", 'while read -r p; do cat "$p"; done > /dev/null'],
                   input=listing.encode(), check=True)
    return count / (time.perf_counter() - began)


def forget_names() -> None:
    """Make the kernel drop its cached names (dentries and inodes): the next walk of a
    path looks every name up again (root only; otherwise a no-op)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("2\n")
    except OSError:
        pass


def read_to_end(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as stream:
        parts = []
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)


def mem_latencies(mem: Path, size: int, stop: threading.Event, seed: int) -> list[int]:
    """Nanoseconds per random 4 KiB ``pread`` of ``mem`` until ``stop`` is set."""
    rng = random.Random(seed)
    samples = []
    fd = os.open(mem, os.O_RDONLY)
    try:
        while not stop.is_set():
            offset = rng.randrange(size // 4096) * 4096
            began = time.perf_counter_ns()
            data = os.pread(fd, 4096, offset)
            samples.append(time.perf_counter_ns() - began)
            if len(data) != 4096:
                raise RuntimeError(f"short read of mem at {offset:#x}")
    finally:
        os.close(fd)
    return samples


def latency_during(mem: Path, size: int, scan: Path | None, expected: bytes,
                   seed: int) -> tuple[list[int], float]:
    """4 KiB ``mem`` read latencies while one ``find/`` scan runs (or for 1 s without
    one); and the scan's seconds."""
    stop = threading.Event()
    samples: list[int] = []

    def reader() -> None:
        samples.extend(mem_latencies(mem, size, stop, seed))

    thread = threading.Thread(target=reader)
    began = time.perf_counter()
    thread.start()
    try:
        if scan is None:
            time.sleep(1.0)
        else:
            text = read_to_end(scan)
            if text != expected:
                raise RuntimeError(f"find/ gave {len(text)} bytes, expected {len(expected)}")
    finally:
        elapsed = time.perf_counter() - began
        stop.set()
        thread.join()
    return samples, elapsed


def main() -> None:
    args = part_arguments(__doc__.splitlines()[0])
    size_name = args.size
    began = time.perf_counter()
    section = Section("typed_bench", "Typed reads and search",
                      command_line("typed_bench", size_name))
    size, matches = FILE_SIZE[size_name], MATCHES[size_name]
    rounds = ROUNDS[size_name]
    with tempfile.TemporaryDirectory(prefix="vmemfs-typed-",
                                     dir=os.environ.get("VMEMFS_BENCH_DIR")) as work_name:
        work = Path(work_name)
        haystack = work / "haystack.bin"
        print(f"writing {size >> 20} MiB with {matches} planted matches", flush=True)
        places = make_haystack(haystack, size, matches)
        nodes = write_chain(haystack)
        with open(haystack, "rb") as stream:  # the chain may have cut a planted pattern
            places = [place for place in places
                      if os.pread(stream.fileno(), len(PATTERN), place) == PATTERN]
        haystack.read_bytes()  # into the page cache
        small = work / "small.txt"
        small.write_bytes(b"0x0000000000000000\n")
        expected_text = b"".join(b"0x%016x\n" % place for place in places)
        memory_map = MemoryMap.of_file(haystack, 0)
        if memory_map.find_all(PATTERN) != places or grep_count(haystack) != len(places):
            raise SystemExit("the planted pattern is not where it was put")

        mountpoint = work / "mnt"
        with Mount([str(VENV_BIN / "mount.vmemfs"), str(haystack), str(mountpoint), "-f",
                    "-o", "wordsize=64,endian=little"], mountpoint, work / "vmemfs.log"):
            at = mountpoint / "at"
            rng = random.Random(5)
            addresses = [rng.randrange(size // 8) * 8 for _ in range(DISTINCT)]
            pointer_paths = [str(at / f"{address:#x}" / "pointer") for address in addresses]
            for path, address in zip(pointer_paths[:50], addresses, strict=False):
                want = b"0x%016x\n" % int.from_bytes(memory_map.get_bytes(address, 8), "little")
                if Path(path).read_bytes() != want:
                    raise SystemExit(f"{path} does not hold {want!r}")
            control = str(mountpoint / ".ctl" / "wordsize")

            # ---------------------------------------------------------- at/ loops
            count = PYTHON_READS[size_name]
            python = alternate({
                "at/ADDRESS/pointer": lambda: python_loop(pointer_paths, count),
                ".ctl/wordsize": lambda: python_loop([control], count),
                "regular file": lambda: python_loop([str(small)], count),
            }, rounds)
            shell_count = SHELL_READS[size_name]
            shell = alternate({
                "at/ADDRESS/pointer": lambda: shell_loop(pointer_paths, shell_count),
                "regular file": lambda: shell_loop([str(small)], shell_count),
            }, rounds)

            # ---------------------------------------------------------- a deref chain
            chain_path = at / f"{nodes[0]:#x}" / Path(*(["deref"] * CHAIN)) / "pointer"
            want = b"0x%016x\n" % 0
            cold = []
            for _ in range(rounds):
                forget_names()
                begin = time.perf_counter()
                if chain_path.read_bytes() != want:
                    raise SystemExit(f"{chain_path} does not end the chain")
                cold.append(time.perf_counter() - begin)
            warm = []
            for _ in range(20 * rounds):
                begin = time.perf_counter()
                chain_path.read_bytes()
                warm.append(time.perf_counter() - begin)

            # ---------------------------------------------------------- find/ vs grep
            result_path = mountpoint / "find" / "hex" / PATTERN.hex()

            def time_find() -> float:
                begin = time.perf_counter()
                text = read_to_end(result_path)
                elapsed = time.perf_counter() - begin
                if text != expected_text:
                    raise SystemExit(f"find/ gave {len(text)} bytes, expected "
                                     f"{len(expected_text)}")
                return elapsed

            def time_grep() -> float:
                begin = time.perf_counter()
                counted = grep_count(haystack)
                elapsed = time.perf_counter() - begin
                if counted != len(places):
                    raise SystemExit(f"grep counted {counted}")
                return elapsed

            def time_find_all() -> float:
                begin = time.perf_counter()
                found = memory_map.find_all(PATTERN)
                elapsed = time.perf_counter() - begin
                if len(found) != matches:
                    raise SystemExit(f"find_all found {len(found)}")
                return elapsed

            search = alternate({"find/": time_find, "grep -c -F": time_grep,
                                "find_all": time_find_all}, rounds)

            # ---------------------------------------------------------- mem during a scan
            mem = mountpoint / "mem"
            during: list[int] = []
            scan_seconds = []
            for number in range(LATENCY_SCANS[size_name]):
                samples, seconds = latency_during(mem, size, result_path, expected_text,
                                                  number)
                during += samples
                scan_seconds.append(seconds)
            quiet, _ = latency_during(mem, size, None, b"", 99)
        memory_map.close()

    # ------------------------------------------------------------------ report
    rates = {name: median(values) for name, values in python.items()}
    shell_rates = {name: median(values) for name, values in shell.items()}
    throughput = {name: size / median(times) for name, times in search.items()}
    find_ratio = throughput["find/"] / throughput["grep -c -F"]
    during_spread, quiet_spread = Spread.of_ns(during), Spread.of_ns(quiet)
    section.add_target(Target("find/ throughput / grep -c -F", find_ratio, 0.5, "×",
                              note=f"{size >> 20} MiB, page-cached"))
    section.add_target(Target("mem 4 KiB read p99 during a find/ scan",
                              during_spread.p99 / 1000, 20, "ms", higher_is_better=False,
                              note=f"{len(during)} reads over {len(scan_seconds)} scans"))
    for name, rate in rates.items():
        print(f"python loop {name:20} {fmt_rate(rate)}")
    for name, rate in shell_rates.items():
        print(f"shell loop  {name:20} {fmt_rate(rate)}")
    print(f"deref chain of {CHAIN}: cold {fmt_us(median(cold) * 1e6)}, "
          f"warm {fmt_us(median(warm) * 1e6)}")

    loop_rows = [
        ("`at/ADDRESS/pointer`", fmt_rate(rates["at/ADDRESS/pointer"]),
         fmt_ratio(rates["at/ADDRESS/pointer"] / rates["regular file"]),
         fmt_rate(shell_rates["at/ADDRESS/pointer"]),
         fmt_ratio(shell_rates["at/ADDRESS/pointer"] / shell_rates["regular file"])),
        ("`.ctl/wordsize`", fmt_rate(rates[".ctl/wordsize"]),
         fmt_ratio(rates[".ctl/wordsize"] / rates["regular file"]), "", ""),
        ("a 19-byte regular file", fmt_rate(rates["regular file"]), "1×",
         fmt_rate(shell_rates["regular file"]), "1×"),
    ]
    search_rows = [
        ("`find/hex/PATTERN` read to the end", fmt_bytes_rate(throughput["find/"]),
         fmt_ratio(find_ratio)),
        ("`LC_ALL=C grep -c -F`", fmt_bytes_rate(throughput["grep -c -F"]), "1×"),
        ("`MemoryMap.find_all` (in process)", fmt_bytes_rate(throughput["find_all"]),
         fmt_ratio(throughput["find_all"] / throughput["grep -c -F"])),
    ]
    latency_rows = [
        ("while a `find/` scan runs", f"{len(during):,}", fmt_us(during_spread.p50),
         fmt_us(during_spread.p99), fmt_us(during_spread.max)),
        ("no scan", f"{len(quiet):,}", fmt_us(quiet_spread.p50), fmt_us(quiet_spread.p99),
         fmt_us(quiet_spread.max)),
    ]
    section.markdown = "\n".join([
        f"A {size >> 20} MiB file of random bytes, page-cached, mounted with "
        "`-o wordsize=64,endian=little`. Rounds alternate the systems' order; cells are "
        f"medians of {rounds} rounds.",
        "",
        f"**`at/` reads.** A Python loop of `open`, `read`, `close` ({count:,} reads per "
        f"round over {DISTINCT} distinct addresses), and a bash loop running `cat` "
        f"({shell_count:,} per round), against the same loops over a small regular file:",
        "",
        markdown_table(("file", "Python loop", "vs regular file", "shell loop",
                        "vs regular file"), loop_rows),
        "",
        "Each `open`, `read`, `close` of a FUSE file is four or five requests to the "
        "daemon (`GETATTR`, `OPEN`, `READ`, `FLUSH`, `RELEASE`); `.ctl/wordsize`, whose "
        "read does no work, runs at about the same rate as `at/`, so the time goes to the "
        "round trips, not to the typed read. In a shell loop, starting `cat` costs more "
        "than either.",
        "",
        f"**A {CHAIN}-step `deref` chain in one path** (`at/0x0/deref/…/deref/pointer`, "
        f"one `read_bytes()`): cold, after the kernel dropped its cached names "
        f"({CHAIN * 2 + 2} lookups and {CHAIN} readlinks), {fmt_us(median(cold) * 1e6)} "
        f"(median of {len(cold)}); warm {fmt_us(median(warm) * 1e6)} (median of "
        f"{len(warm)}: names cached, the {CHAIN} links read again, as FUSE does not cache "
        "symlink targets).",
        "",
        f"**`find/` throughput.** The {len(PATTERN)}-byte pattern planted at {matches} "
        "places; every system must find exactly those before its time counts.",
        "",
        markdown_table(("system", "throughput", "vs grep"), search_rows),
        "",
        "Per-round seconds: find/ " + ", ".join(f"{t:.3f}" for t in search["find/"])
        + "; grep " + ", ".join(f"{t:.3f}" for t in search["grep -c -F"]) + ".",
        "",
        "**`mem` while a search runs.** One thread reads random 4 KiB blocks of `mem` "
        f"(`pread`) while another reads `find/` to its end, {len(scan_seconds)} times "
        f"(scans of {median(scan_seconds):.2f} s, median); then for 1 s with no scan:",
        "",
        markdown_table(("4 KiB reads of mem", "reads", "p50", "p99", "max"), latency_rows),
        "",
    ])
    section.data = {"file_bytes": size, "python": python, "shell": shell,
                    "chain": {"cold": cold, "warm": warm},
                    "search_seconds": search, "scan_seconds": scan_seconds,
                    "latency_ns": {"during": Spread.of_ns(during).__dict__,
                                   "quiet": Spread.of_ns(quiet).__dict__}}
    section.seconds = time.perf_counter() - began
    finish_part(section, args.out)


if __name__ == "__main__":
    np.random.seed(0)
    main()
