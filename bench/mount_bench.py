"""Mount benchmark: vmemfs's ``mem`` and ``extents/`` files against the file itself and peers.

One file of random bytes (1 GiB at ``--size full``) is read through:

* ``direct`` — the file itself;
* ``mem page`` — ``mount.vmemfs FILE DIR`` (the file at address 0: a page-aligned layout,
  so ``mem`` is served through the page cache), ``DIR/mem``;
* ``mem direct`` — ``mount.vmemfs FILE DIR -o cache=never``, ``DIR/mem`` (every read goes
  to the daemon, ``direct_io``);
* ``extents`` — ``DIR/extents/0000000000000000-…`` of the first mount;
* ``xmount`` — ``xmount --in raw FILE DIR``, ``DIR/<name>.dd``;
* ``bindfs`` — ``bindfs FOLDER DIR``, ``DIR/<name>``;
* ``pyfuse3 floor`` — ``python -m bench.minimal_fs FILE DIR``: a pyfuse3 server whose read
  handler only returns a ``memoryview`` of the file's ``mmap`` (``direct_io``, pyfuse3's
  default worker tasks), the floor of any pyfuse3 design that sends every read to the
  daemon; ``pyfuse3 floor 1 task`` the same with one worker task (the fastest pyfuse3
  can serve, and how ``mount.vmemfs`` ran before ``find/`` needed more tasks);
  ``pyfuse3 floor page`` the same through the page cache (``keep_cache``), the floor for
  page-cache reads that miss.

Measurements: ``dd`` sequential reads with 1 MiB and 128 KiB blocks, warm and cold;
``fio`` random 4 KiB reads (``psync``) with one and two jobs, warm and cold.  A warm
measurement starts from a warm cache: the whole file is read once (untimed) just before
it.  A cold one drops the caches (``/proc/sys/vm/drop_caches``) just before it.  Every
round runs every system once, rotating the order; the tables give medians and ratios to
``direct``.

Run as root: the cold rounds drop the page cache (they are left out otherwise), and
``xmount`` asks for ``allow_other``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from bench.common import (
    VENV_BIN,
    Section,
    Target,
    alternate,
    command_line,
    drop_caches,
    finish_part,
    fmt_bytes_rate,
    fmt_rate,
    fmt_ratio,
    markdown_table,
    median,
    part_arguments,
    run,
)
from bench.mounts import Mount

FILE_SIZE = {"small": 256 << 20, "medium": 512 << 20, "full": 1 << 30}
ROUNDS = {"small": 2, "medium": 3, "full": 7}
COLD_ROUNDS = {"small": 1, "medium": 2, "full": 5}
FIO_ROUNDS = {"small": 2, "medium": 3, "full": 5}
FIO_SECONDS = {"small": 1, "medium": 2, "full": 2}
SYSTEMS = ("direct", "mem page", "mem direct", "extents", "xmount", "bindfs",
           "pyfuse3 floor", "pyfuse3 floor 1 task", "pyfuse3 floor page")
PAIRED_ROUNDS = {"small": 3, "medium": 7, "full": 21}
MISSES = "fio 4 KiB 1 job, page-cache misses"
PAIRED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fio 4 KiB 1 job, direct_io", "warm", ("mem direct", "pyfuse3 floor",
                                            "pyfuse3 floor 1 task")),
    (MISSES, "evicted", ("mem page", "pyfuse3 floor page", "pyfuse3 floor")),
)
"""The comparisons with the floors: rates bound by the daemon move with the load of the
machine, so these run more, shorter rounds of a few systems, and the ratio is taken in
each round (the systems a few seconds apart) before the median.  Misses are measured
with the file's own cached pages evicted and the backing file cached (``evicted``), so
that every read is a request to the daemon and none waits for the disk: after
``drop_caches`` both sides also fault the backing file in from disk, which adds the
same cost to each and a spread that hides a few percent."""
FLOORS = {"pyfuse3 floor": (), "pyfuse3 floor 1 task": ("--tasks", "1"),
          "pyfuse3 floor page": ("--page-cache",)}
DD_SPEED = re.compile(rb"(\d+) bytes .* copied, ([0-9.e+-]+) s")


class Systems:
    """The mounted systems and how to reach each one's copy of the file."""

    def __init__(self, work: Path, backing: Path, stack: ExitStack) -> None:
        self.paths: dict[str, Path] = {"direct": backing}
        for system, options in (("mem page", ()), ("mem direct", ("-o", "cache=never"))):
            folder = work / f"mnt-{system.replace(' ', '-')}"
            stack.enter_context(Mount(
                [str(VENV_BIN / "mount.vmemfs"), str(backing), str(folder), "-f", *options],
                folder, work / f"{folder.name}.log"))
            mode = (folder / ".ctl" / "cache").read_text().strip()
            if mode != system.split()[1]:
                raise RuntimeError(f"{system}: .ctl/cache says {mode}")
            self.paths[system] = folder / "mem"
            if system == "mem page":
                extents = sorted((folder / "extents").iterdir())
                if len(extents) != 1:
                    raise RuntimeError(f"expected one extent, found {[e.name for e in extents]}")
                self.paths["extents"] = extents[0]
        xmount_dir = work / "mnt-xmount"
        stack.enter_context(Mount(["xmount", "--in", "raw", str(backing), str(xmount_dir)],
                                  xmount_dir, work / "xmount.log", forks=True))
        self.paths["xmount"] = xmount_dir / (backing.stem + ".dd")
        bindfs_dir = work / "mnt-bindfs"
        stack.enter_context(Mount(["bindfs", "-f", str(backing.parent), str(bindfs_dir)],
                                  bindfs_dir, work / "bindfs.log"))
        self.paths["bindfs"] = bindfs_dir / backing.name
        for system, options in FLOORS.items():
            floor_dir = work / f"mnt-{system.replace(' ', '-')}"
            stack.enter_context(Mount([str(VENV_BIN / "python"), "-m", "bench.minimal_fs",
                                       str(backing), str(floor_dir), *options], floor_dir,
                                      work / f"{floor_dir.name}.log"))
            self.paths[system] = floor_dir / "data"

    def path(self, system: str) -> Path:
        """The file to read for ``system``."""
        return self.paths[system]


def dd_rate(path: Path, block: int) -> float:
    """Bytes per second ``dd`` reports for reading the whole file with ``block``-byte reads."""
    result = run(["dd", f"if={path}", "of=/dev/null", f"bs={block}"], text=False)
    match = DD_SPEED.search(result.stderr)  # type: ignore[arg-type]
    if match is None:
        raise RuntimeError(f"cannot read dd's summary: {result.stderr!r}")
    return int(match.group(1)) / float(match.group(2))


def fio_iops(path: Path, jobs: int, seconds: float, size: int) -> float:
    """Random 4 KiB reads per second (all jobs together) from ``fio``."""
    result = run(["fio", "--name=randread", f"--filename={path}", "--readonly",
                  "--rw=randread", "--bs=4k", "--ioengine=psync", f"--numjobs={jobs}",
                  f"--size={size}", f"--runtime={seconds}", "--time_based",
                  "--invalidate=0", "--group_reporting", "--output-format=json"])
    report = json.loads(result.stdout[result.stdout.index("{"):])
    return float(report["jobs"][0]["read"]["iops"])


def warm_up(path: Path) -> None:
    """Read the whole file once, untimed, so that a warm measurement starts warm."""
    run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], text=False)


def evict(path: Path) -> None:
    """Drop the cached pages of ``path`` alone (``POSIX_FADV_DONTNEED``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(systems: Systems, rounds: int, reading: Callable[[Path], float], *,
            cold: bool = False, evicted: bool = False,
            which: tuple[str, ...] = SYSTEMS) -> dict[str, list[float]]:
    """Alternate ``reading`` over the systems ``which`` for ``rounds`` rounds, each
    measurement just after a warm-up read of that system's file, just after dropping
    the caches (``cold``), or just after evicting that system's file from the page
    cache with the backing file read whole first (``evicted``)."""
    def runner(system: str) -> Callable[[], float]:
        def once() -> float:
            path = systems.path(system)
            if cold:
                if not drop_caches():
                    raise RuntimeError("cannot drop the page cache (needs root)")
            elif evicted:
                warm_up(systems.path("direct"))
                evict(path)
            else:
                warm_up(path)
            return reading(path)
        return once

    return alternate({system: runner(system) for system in which}, rounds)


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    throughput = [name for name in results if name.startswith("dd")]
    random_reads = [name for name in results if name.startswith("fio")]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(SYSTEMS)
    for k, system in enumerate(SYSTEMS):
        xs = np.arange(len(throughput)) + k * width
        left.bar(xs, [results[name][system] / 1e9 for name in throughput], width,
                 label=system)
        xs = np.arange(len(random_reads)) + k * width
        right.bar(xs, [results[name][system] / 1e3 for name in random_reads], width,
                  label=system)
    for axis, names, unit in ((left, throughput, "GB/s"),
                              (right, random_reads, "thousand reads/s (log scale)")):
        axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        axis.set_xticklabels(names, fontsize="small")
        axis.set_ylabel(unit)
        axis.grid(True, axis="y", which="both", alpha=0.3)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(NullFormatter())
    left.set_title("sequential reads (dd)")
    right.set_title("random 4 KiB reads (fio, psync)")
    left.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def started_line() -> str:
    """When this part started, and the load on the machine then (other work)."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"Started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
            f"{load}.")


def main() -> None:
    args = part_arguments(__doc__.splitlines()[0])
    size_name = args.size
    began = time.perf_counter()
    section = Section("mount_bench", "Mount", command_line("mount_bench", size_name))
    when = started_line()
    for tool in ("xmount", "bindfs", "fio", "fusermount3"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run bash bench/setup")
    size = FILE_SIZE[size_name]
    rounds, cold_rounds, fio_seconds = (ROUNDS[size_name], COLD_ROUNDS[size_name],
                                        FIO_SECONDS[size_name])
    fio_rounds = FIO_ROUNDS[size_name]
    results: dict[str, dict[str, float]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="vmemfs-mount-",
                                     dir=os.environ.get("VMEMFS_BENCH_DIR")) as name, \
            ExitStack() as stack:
        work = Path(name)
        backing = work / "data" / "memory.bin"
        backing.parent.mkdir()
        print(f"writing {size >> 20} MiB", flush=True)
        rng = np.random.default_rng(21)
        with backing.open("wb") as file:
            for _ in range(size // (64 << 20) or 1):
                file.write(rng.bytes(min(64 << 20, size)))
        systems = Systems(work, backing, stack)
        for system in SYSTEMS:
            if systems.path(system).stat().st_size != size:
                raise RuntimeError(f"{system}: {systems.path(system)} is not {size} bytes")
        with backing.open("rb") as expected:
            for system in SYSTEMS[1:]:
                with systems.path(system).open("rb") as shown:
                    for offset in (0, size // 2 + 123, size - 4096):
                        expected.seek(offset)
                        shown.seek(offset)
                        if shown.read(4096) != expected.read(4096):
                            raise RuntimeError(f"{system} differs from the backing file at "
                                               f"{offset:#x}")

        plan: list[tuple[str, int, Callable[[Path], float], bool]] = [
            ("dd 1 MiB warm", rounds, lambda p: dd_rate(p, 1 << 20), False),
            ("dd 128 KiB warm", rounds, lambda p: dd_rate(p, 128 << 10), False),
            ("dd 1 MiB cold", cold_rounds, lambda p: dd_rate(p, 1 << 20), True),
            ("fio 4 KiB 1 job warm", fio_rounds,
             lambda p: fio_iops(p, 1, fio_seconds, size), False),
            ("fio 4 KiB 2 jobs warm", fio_rounds,
             lambda p: fio_iops(p, 2, fio_seconds, size), False),
            ("fio 4 KiB 1 job cold", cold_rounds,
             lambda p: fio_iops(p, 1, fio_seconds, size), True),
        ]
        if os.geteuid() != 0:
            print("not root: the cold rounds are left out", flush=True)
            plan = [step for step in plan if not step[3]]
        for label, count, reading, cold in plan:
            print(f"{label}: {count} rounds", flush=True)
            samples[label] = measure(systems, count, reading, cold=cold)
            results[label] = {s: median(v) for s, v in samples[label].items()}
            for system, value in results[label].items():
                shown = fmt_bytes_rate(value) if label.startswith("dd") else fmt_rate(value)
                print(f"  {system:15} {shown}", flush=True)
        paired: dict[str, dict[str, list[float]]] = {}
        for label, state, which in PAIRED:
            print(f"{label}: {PAIRED_ROUNDS[size_name]} rounds of {which}", flush=True)
            paired[label] = measure(systems, PAIRED_ROUNDS[size_name],
                                    lambda p: fio_iops(p, 1, fio_seconds, size),
                                    evicted=state == "evicted", which=which)
            for system, values in paired[label].items():
                print(f"  {system:20} {fmt_rate(median(values))}", flush=True)

    warm = results["dd 1 MiB warm"]
    section.add_target(Target("mem dd 1 MiB warm / direct",
                              warm["mem page"] / warm["direct"], 0.6, "×",
                              note=f"{size >> 20} MiB page-cached"))
    for peer in ("xmount", "bindfs"):
        section.add_target(Target(f"mem dd 1 MiB warm / {peer}",
                                  warm["mem page"] / warm[peer], 2.5, "×"))
    section.add_target(Target("extents warm re-read / direct",
                              warm["extents"] / warm["direct"], 0.8, "×"))
    one_job = results["fio 4 KiB 1 job warm"]
    for peer in ("bindfs", "xmount"):
        section.add_target(Target(f"mem random 4 KiB warm / {peer}",
                                  one_job["mem page"] / one_job[peer], 5.0, "×",
                                  note=f"1 job; mem {one_job['mem page']:,.0f}/s, "
                                       f"{peer} {one_job[peer]:,.0f}/s"))
    section.add_target(Target("mem random 4 KiB warm / direct",
                              one_job["mem page"] / one_job["direct"], 0.5, "×",
                              note="1 job"))
    def ratio(label: str, mine: str, floor: str) -> tuple[float, list[float]]:
        """The median of the per-round ratios, and the ratios."""
        rounds = [a / b for a, b in zip(paired[label][mine], paired[label][floor],
                                        strict=True)]
        return median(rounds), rounds

    # (reads, measured, against, a target?): each target compares mem with the floor
    # that reads the same way (direct_io, or page-cache misses); the other rows show
    # what the kernel's page-cache miss costs by itself, and pyfuse3's task hand-over.
    comparisons = [
        ("fio 4 KiB 1 job, direct_io", "mem direct", "pyfuse3 floor", True),
        ("fio 4 KiB 1 job, direct_io", "mem direct", "pyfuse3 floor 1 task", False),
        (MISSES, "mem page", "pyfuse3 floor page", True),
        (MISSES, "mem page", "pyfuse3 floor", False),
        (MISSES, "pyfuse3 floor page", "pyfuse3 floor", False),
    ]
    ratio_rows = []
    for label, mine, floor, target in comparisons:
        if label not in paired:
            continue
        value, per_round = ratio(label, mine, floor)
        ratio_rows.append((label, f"{mine} / {floor}", fmt_ratio(value),
                           ", ".join(f"{r:.2f}" for r in per_round)))
        if target:
            name = ("mem direct random 4 KiB" if mine == "mem direct"
                    else "mem random 4 KiB page-cache miss") + f" / {floor}"
            section.add_target(Target(
                name, value, 0.9, "×",
                note=f"median of {len(per_round)} per-round ratios; mem "
                     f"{median(paired[label][mine]):,.0f}/s, floor "
                     f"{median(paired[label][floor]):,.0f}/s"))

    figure = "perf/mount_throughput.png"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(results, args.out / "mount_throughput.png")
        section.figures.append(figure)

    def table(labels: list[str], rate: Callable[[float], str]) -> str:
        rows = []
        for system in SYSTEMS:
            cells = [system]
            for label in labels:
                value = results[label][system]
                cells.append(f"{rate(value)} ({fmt_ratio(value / results[label]['direct'])})")
            rows.append(cells)
        return markdown_table(["system", *labels], rows)

    byte_labels = [label for label in results if label.startswith("dd")]
    read_labels = [label for label in results if label.startswith("fio")]
    parts = [
        f"One {size >> 20} MiB file of random bytes. Each cell is the median of the rounds "
        f"({rounds} for warm `dd`, {fio_rounds} for warm `fio`, {cold_rounds} cold; every "
        "round runs every system once, "
        "rotating the order), and in brackets the ratio to reading the file directly. "
        "A warm measurement comes right after an untimed read of the whole file through "
        "the same system; a cold one right after dropping the page cache "
        "(`/proc/sys/vm/drop_caches`). "
        f"`fio` runs {fio_seconds} s per measurement: `--rw=randread --bs=4k "
        "--ioengine=psync --invalidate=0`.",
        "",
    ]
    if args.out is not None:
        parts += [f"![throughput per system]({figure})", ""]
    parts += [
        "#### Sequential reads (`dd if=FILE of=/dev/null bs=…`)", "",
        table(byte_labels, fmt_bytes_rate), "",
        "#### Random 4 KiB reads per second (`fio`)", "",
        table(read_labels, fmt_rate), "",
        "#### Against the floors", "",
        "Reads the daemon must answer run at the speed of its request loop, which moves "
        "with the load of the machine from one second to the next. So these ratios come "
        f"from {PAIRED_ROUNDS[size_name]} more rounds of `fio` (1 job, {fio_seconds} s) "
        "over just the systems compared, alternating: each round's ratio, then their "
        "median. `direct_io` reads are warm. Before each measurement of misses the "
        "backing file is read whole and the file measured is evicted from the page cache "
        "(`POSIX_FADV_DONTNEED`): every read is a request to the daemon, none waits for "
        "the disk (after `drop_caches` both sides also fault the backing file in from "
        "disk, which costs each the same and spreads the rounds). "
        "The targets compare `mem` with the floor that reads the same way: `mem direct` "
        "with the `direct_io` floor, a page-cache miss of `mem` with the floor served "
        "through the page cache. The row `pyfuse3 floor page / pyfuse3 floor` is what a "
        "page-cache miss costs in the kernel alone, against a `direct_io` read of the same "
        "server.",
        "",
        markdown_table(("reads", "ratio", "median", "per round"), ratio_rows), "",
        "Commands: `mount.vmemfs FILE DIR -f` (`DIR/mem`: page-cache mode, `.ctl/cache` "
        "says `page`; and `DIR/extents/…`), `mount.vmemfs FILE DIR -f -o cache=never` "
        "(`DIR/mem`: direct mode), `xmount --in raw FILE DIR` (`DIR/memory.dd`), "
        "`bindfs -f FOLDER DIR`, `python -m bench.minimal_fs FILE DIR [--tasks 1] "
        "[--page-cache]` (`DIR/data`).",
        "",
    ]
    section.data = {"file_bytes": size, "samples": samples, "paired": paired}
    section.markdown = when + "\n\n" + "\n".join(parts)
    section.seconds = time.perf_counter() - began
    finish_part(section, args.out)


if __name__ == "__main__":
    main()
