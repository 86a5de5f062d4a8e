"""Startup and save benchmark.

* **Startup**: an ELF64 core with 100,000 ``PT_LOAD`` segments (512 bytes each, one every
  4 KiB, so 100,000 extents; ``PN_XNUM`` headers since the count passes 65,534), written
  here with ``struct``.  Timed from starting ``mount.vmemfs CORE DIR -f`` to the first
  successful read of ``DIR/mem`` (polled every millisecond), page-cached, median of runs.
* **Save**: ``MemoryMap.save()`` of a 1 GiB map (one raw file), and the command
  ``vmemfs save`` (interpreter start included), against ``cp`` of the same file.
  ``save`` ends with ``fsync`` (the file is durable when it returns), so it is compared
  with ``cp`` followed by ``sync OUT``, and, for reference, with ``cp`` alone (which
  leaves the data in the page cache).  Rounds alternate the order.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    VENV_BIN,
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
from bench.mounts import Mount
from vmemfs import MemoryMap

LOADS = {"small": 100_000, "medium": 100_000, "full": 100_000}
SEGMENT = 512
STRIDE = 4096
FIRST_ADDRESS = 0x400000
STARTUP_RUNS = {"small": 2, "medium": 3, "full": 5}
SAVE_SIZE = {"small": 256 << 20, "medium": 512 << 20, "full": 1 << 30}
SAVE_ROUNDS = {"small": 2, "medium": 3, "full": 3}

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
PN_XNUM = 0xFFFF


def write_core(path: Path, loads: int) -> None:
    """An ELF64 little-endian x86-64 core with ``loads`` small ``PT_LOAD`` segments.

    Segment ``i`` maps ``SEGMENT`` bytes at ``FIRST_ADDRESS + i * STRIDE``; its bytes are
    ``i`` as a little-endian 64-bit integer, repeated.
    """
    phoff = ELF_HEADER.size
    shoff = phoff + loads * PROGRAM_HEADER.size
    data_offset = -(-(shoff + SECTION_HEADER.size) // 4096) * 4096
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ELF_HEADER.pack(ident, 4, 62, 1, 0, phoff, shoff, 0, ELF_HEADER.size,
                             PROGRAM_HEADER.size, PN_XNUM if loads >= PN_XNUM else loads,
                             SECTION_HEADER.size, 1, 0)
    table = bytearray(loads * PROGRAM_HEADER.size)
    for i in range(loads):
        address = FIRST_ADDRESS + i * STRIDE
        PROGRAM_HEADER.pack_into(table, i * PROGRAM_HEADER.size, 1, 4,
                                 data_offset + i * SEGMENT, address, address,
                                 SEGMENT, SEGMENT, 1)
    section_zero = SECTION_HEADER.pack(0, 0, 0, 0, 0, 0, 0,
                                       loads if loads >= PN_XNUM else 0, 0, 0)
    payload = np.repeat(np.arange(loads, dtype="<u8"), SEGMENT // 8)
    with path.open("wb") as file:
        file.write(header)
        file.write(table)
        file.write(section_zero)
        file.write(bytes(data_offset - file.tell()))
        file.write(payload.tobytes())


def first_read_seconds(core: Path, work: Path, run_number: int, loads: int) -> float:
    """Seconds from starting ``mount.vmemfs -f`` to a successful read of ``mem``."""
    mountpoint = work / f"mnt-{run_number}"
    mountpoint.mkdir()
    expected = (0).to_bytes(8, "little") * (SEGMENT // 8)
    begin = time.perf_counter()
    with Mount([str(VENV_BIN / "mount.vmemfs"), str(core), str(mountpoint), "-f"],
               mountpoint, work / "vmemfs.log", poll=0.001):
        with (mountpoint / "mem").open("rb", buffering=0) as mem:
            data = os.pread(mem.fileno(), SEGMENT, FIRST_ADDRESS)
        elapsed = time.perf_counter() - begin
        if data != expected:
            raise RuntimeError(f"mem at {FIRST_ADDRESS:#x} read {data[:16]!r}...")
        last = FIRST_ADDRESS + (loads - 1) * STRIDE
        with (mountpoint / "mem").open("rb", buffering=0) as mem:
            tail = os.pread(mem.fileno(), 8, last)
        if int.from_bytes(tail, "little") != loads - 1:
            raise RuntimeError(f"mem at {last:#x} read {tail!r}")
    mountpoint.rmdir()
    return elapsed


def save_comparison(work: Path, size: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per round for ``save()``, ``cp`` + ``sync`` and ``cp`` of a ``size``-byte file."""
    source = work / "memory.bin"
    rng = np.random.default_rng(31)
    with source.open("wb") as file:
        for _ in range(max(size // (64 << 20), 1)):
            file.write(rng.bytes(min(64 << 20, size)))
    os.sync()
    memmap = MemoryMap.of_file(source, 0x7F0000000000)
    target = work / "out"

    def fresh() -> None:
        target.unlink(missing_ok=True)
        os.sync()

    def timed_save() -> float:
        fresh()
        begin = time.perf_counter()
        memmap.save(target)
        return time.perf_counter() - begin

    def timed_cli() -> float:
        fresh()
        begin = time.perf_counter()
        run([str(VENV_BIN / "vmemfs"), "save", "-o", "address=0x7f0000000000",
             str(source), str(target)])
        return time.perf_counter() - begin

    def timed_cp_sync() -> float:
        fresh()
        begin = time.perf_counter()
        run(["cp", str(source), str(target)])
        run(["sync", str(target)])
        return time.perf_counter() - begin

    def timed_cp() -> float:
        fresh()
        begin = time.perf_counter()
        run(["cp", str(source), str(target)])
        return time.perf_counter() - begin

    timed_save()
    if MemoryMap.load(target).read(0x7F0000000000 + size - 16, 16) != \
            source.read_bytes()[-16:]:
        raise RuntimeError("the saved core does not hold the map's bytes")
    writers = {"save()": timed_save, "cp + sync": timed_cp_sync, "cp": timed_cp}
    if (VENV_BIN / "vmemfs").exists():
        writers["vmemfs save"] = timed_cli
    samples = alternate(writers, rounds)
    fresh()
    memmap.close()
    return samples


def main() -> None:
    args = part_arguments(__doc__.splitlines()[0])
    size_name = args.size
    began = time.perf_counter()
    section = Section("startup_bench", "Startup and save",
                      command_line("startup_bench", size_name))
    loads = LOADS[size_name]
    with tempfile.TemporaryDirectory(prefix="vmemfs-startup-",
                                     dir=os.environ.get("VMEMFS_BENCH_DIR")) as name:
        work = Path(name)
        core = work / "core.elf"
        write_core(core, loads)
        readelf = run(["readelf", "-lW", str(core)]).stdout
        if f"There are {loads} program headers" not in readelf:
            raise RuntimeError("readelf does not see the core's program headers")
        core.read_bytes()  # page-cached
        startups = [first_read_seconds(core, work, i, loads)
                    for i in range(STARTUP_RUNS[size_name])]
        for number, seconds in enumerate(startups):
            print(f"startup run {number}: {seconds:.3f} s", flush=True)
        size = SAVE_SIZE[size_name]
        saves = save_comparison(work, size, SAVE_ROUNDS[size_name])

    startup = median(startups)
    section.add_target(Target(f"startup, {loads:,} loads, to first read of mem", startup,
                              2.0, "s", higher_is_better=False,
                              note=f"median of {len(startups)}"))
    rates = {name: size / median(times) for name, times in saves.items()}
    section.add_target(Target("save() / (cp + sync) speed", rates["save()"] / rates["cp + sync"],
                              0.5, "×", note="both durable"))
    section.add_target(Target("save() / cp speed", rates["save()"] / rates["cp"], 0.5, "×",
                              note="cp's data still in the page cache"))
    file_mib = (ELF_HEADER.size + loads * PROGRAM_HEADER.size + loads * SEGMENT) >> 20
    section.markdown = "\n".join([
        f"**Startup.** An ELF64 core with {loads:,} `PT_LOAD`s of {SEGMENT} bytes, one "
        f"every {STRIDE} bytes ({loads:,} extents, about {file_mib} MiB, `PN_XNUM` "
        "headers), page-cached. Time from starting `mount.vmemfs core.elf DIR -f` to the "
        "first successful `pread` of `DIR/mem` (the mount point is polled every "
        "millisecond):",
        "",
        markdown_table(("runs", "median", "min", "max"),
                       [(str(len(startups)), f"{startup:.3f} s", f"{min(startups):.3f} s",
                         f"{max(startups):.3f} s")]),
        "",
        f"**Save.** `MemoryMap.of_file(FILE, 0x7f0000000000).save(OUT)` and "
        "`vmemfs save -o address=0x7f0000000000 FILE OUT` of a "
        f"{size >> 20} MiB file against `cp FILE OUT` (the output deleted and "
        "`sync` run before each round; rounds alternate the order). `save()` "
        "`fsync`s its output before it returns, so `cp` + `sync OUT` is the like-for-like "
        "comparison; `cp` alone returns with the data still in the page cache.",
        "",
        markdown_table(("writer", "median time", "speed", "save() vs this"),
                       [(name, f"{median(times):.3f} s", fmt_bytes_rate(rates[name]),
                         fmt_ratio(rates["save()"] / rates[name]))
                        for name, times in saves.items()]),
        "",
    ])
    section.data = {"startup_seconds": startups, "save_bytes": size, "save_seconds": saves}
    section.seconds = time.perf_counter() - began
    finish_part(section, args.out)


if __name__ == "__main__":
    main()
