"""Compressed dumps and the kernel's virtual view, on a real QEMU guest.

* **Reading every dumped page**: ``dd bs=1M`` of every ``extents/`` file of a mount of
  the guest's kdump-zlib, kdump-lzo (makedumpfile), kdump-snappy and AVML files (the last
  two written from the guest's ELF dump by the test writers), against drgn (libkdumpfile,
  C) reading the same pages in 1 MiB ``Program.read(..., physical=True)`` calls.  AVML has
  no drgn reader: its row has no ratio.  Each round is a fresh mount (the dump file itself
  stays in the page cache, so both sides decode from memory).  Rounds alternate the order.
* **Opening**: from starting ``mount.vmemfs DUMP DIR`` (it returns once mounted) to the
  first ``pread`` of ``mem``, for the kdump-zlib file (and, with ``--size full``, of a
  4 GiB guest, built once per machine, which takes minutes and 13 GB the first time).
* **Virtual view**: the time to build the view of the guest (page-table walk), and ``dd``
  of the kernel text's extent in the virtual view against the same bytes read through
  the physical view (``dd`` of each mount's ``mem``, both served with ``direct_io``, at
  the virtual and the physical address, same block size).

The guest is the one the tests use (``tests/guest/build.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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
)
from bench.mounts import Mount

ROUNDS = {"small": 1, "medium": 2, "full": 3}
CHECKOUT = Path(__file__).resolve().parent.parent
BLOCK = 1 << 20

WRITE_EXTRA = """
import sys
from dumpwriters import write_avml, write_kdump
from vmemfs import MemoryMap
elf, folder = sys.argv[1], sys.argv[2]
m = MemoryMap.load(elf, physical=True)
write_kdump(folder + "/guest.kdump-snappy", m, compression="snappy", vmcoreinfo=m.vmcoreinfo)
write_avml(folder + "/guest.avml", m)
"""


def guest_folder(memory: str) -> Path:
    """The cached guest (built if missing) and its manifest."""
    result = subprocess.run([sys.executable, "-m", "tests.guest.build", "--memory", memory],
                            cwd=CHECKOUT, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"the guest cannot be had: {result.stderr.strip()}")
    return Path(result.stdout.strip().splitlines()[-1])


def extra_dumps(folder: Path, work: Path) -> dict[str, Path]:
    """kdump-snappy and AVML files of the guest, written by the test writers."""
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT / "tests"))
    subprocess.run([sys.executable, "-c", WRITE_EXTRA, str(folder / "guest.elf"), str(work)],
                   env=env, check=True, timeout=1800)
    return {"kdump-snappy": work / "guest.kdump-snappy", "AVML": work / "guest.avml"}


def mount_command(source: Path, mountpoint: Path, *options: str) -> list[str]:
    command = [str(VENV_BIN / "mount.vmemfs"), str(source), str(mountpoint), "-f"]
    if options:
        command += ["-o", ",".join(options)]
    return command


def dd_extents(source: Path, work: Path, tag: str) -> tuple[float, int]:
    """Seconds to ``dd`` every extent of a fresh mount of ``source``, and bytes read."""
    mountpoint = work / f"mnt-{tag}"
    with Mount(mount_command(source, mountpoint), mountpoint, work / f"{tag}.log"):
        names = sorted(os.listdir(mountpoint / "extents"))
        total = sum(int(n[17:], 16) - int(n[:16], 16) for n in names)
        began = time.perf_counter()
        for name in names:
            subprocess.run(["dd", f"if={mountpoint / 'extents' / name}", "of=/dev/null",
                            f"bs={BLOCK}", "status=none"], check=True)
        return time.perf_counter() - began, total


DRGN_READ = """
import sys, time, drgn
platform = drgn.Platform(drgn.Architecture.X86_64,
                         drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
program = drgn.Program(platform)
program.set_core_dump(sys.argv[1])
extents = [tuple(map(int, pair.split(":"))) for pair in sys.argv[2:]]
began = time.perf_counter()
for start, end in extents:
    for at in range(start, end, 1 << 20):
        program.read(at, min(1 << 20, end - at), True)
print(time.perf_counter() - began)
"""


def drgn_read(source: Path, extents: list[tuple[int, int]]) -> float:
    """Seconds drgn takes to read ``extents`` of ``source`` in 1 MiB reads."""
    result = subprocess.run([sys.executable, "-c", DRGN_READ, str(source),
                             *(f"{start}:{end}" for start, end in extents)],
                            capture_output=True, text=True, check=True, timeout=1800)
    return float(result.stdout.strip())


def dump_extents(source: Path) -> list[tuple[int, int]]:
    import vmemfs

    memmap = vmemfs.open(source)
    try:
        return memmap.extents()
    finally:
        memmap.close()


def open_to_first_read(source: Path, work: Path, tag: str, *options: str) -> float:
    """Seconds from starting ``mount.vmemfs`` (detached) to a first read of ``mem``."""
    mountpoint = work / f"open-{tag}"
    mountpoint.mkdir(exist_ok=True)
    began = time.perf_counter()
    command = [str(VENV_BIN / "mount.vmemfs"), str(source), str(mountpoint)]
    if options:
        command += ["-o", ",".join(options)]
    subprocess.run(command, check=True, capture_output=True)
    try:
        fd = os.open(mountpoint / "mem", os.O_RDONLY)
        try:
            first = int(sorted(os.listdir(mountpoint / "extents"))[0][:16], 16)
            base = int((mountpoint / ".ctl" / "base").read_text(), 16)
            os.pread(fd, 4096, first - base)
        finally:
            os.close(fd)
        return time.perf_counter() - began
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)


def virtual_comparison(folder: Path, work: Path,
                       rounds: int) -> tuple[float, dict[str, list[float]], int]:
    """Build time of the virtual view, and dd of kernel text: virtual vs physical."""
    import vmemfs
    from vmemfs.formats.virtual import build_virtual_map

    source = folder / "guest.kdump-zlib"
    physical = vmemfs.open(source)
    began = time.perf_counter()
    view = build_virtual_map(physical, vmcoreinfo=physical.vmcoreinfo)
    build_seconds = time.perf_counter() - began
    stext = next(int(line.split()[0], 16) for line in
                 (folder / "kallsyms").read_text().splitlines() if line.endswith(" _stext"))
    extent = view.memmap.extent_at(stext)
    assert extent is not None
    text_start, text_end = extent
    physical_start = view.to_physical(text_start)
    assert physical_start is not None
    length = text_end - text_start
    view.memmap.close()
    virtual_mount = work / "virt"
    physical_mount = work / "phys"
    with Mount(mount_command(source, virtual_mount, "virtual"), virtual_mount,
               work / "virt.log"), \
            Mount(mount_command(source, physical_mount), physical_mount, work / "phys.log"):
        base = int((virtual_mount / ".ctl" / "base").read_text(), 16)

        def dd_text(mem: Path, skip: int) -> float:
            """Seconds for ``dd`` to read the kernel text from ``skip`` in ``mem``."""
            began = time.perf_counter()
            subprocess.run(["dd", f"if={mem}", "of=/dev/null", f"bs={BLOCK}",
                            f"skip={skip}", f"count={length}",
                            "iflag=skip_bytes,count_bytes", "status=none"], check=True)
            return time.perf_counter() - began

        samples = alternate(
            {"virtual (mem)": lambda: dd_text(virtual_mount / "mem", text_start - base),
             "physical (mem)": lambda: dd_text(physical_mount / "mem", physical_start)},
            rounds)
    return build_seconds, samples, length


def main() -> None:
    args = part_arguments(__doc__.splitlines()[0])
    size_name = args.size
    rounds = ROUNDS[size_name]
    began = time.perf_counter()
    section = Section("dumps_bench", "Compressed dumps and the virtual view",
                      command_line("dumps_bench", size_name))
    folder = guest_folder("128M")
    manifest = json.loads((folder / "manifest.json").read_text())
    with tempfile.TemporaryDirectory(prefix="vmemfs-dumps-",
                                     dir=os.environ.get("VMEMFS_BENCH_DIR")) as name:
        work = Path(name)
        files = {"kdump-zlib": folder / "guest.kdump-zlib",
                 "kdump-lzo": folder / "guest.kdump-lzo", **extra_dumps(folder, work)}
        for path in files.values():
            path.read_bytes()      # the dump itself page-cached for both readers
        rows = []
        data: dict[str, object] = {}
        for kind, path in files.items():
            extents = dump_extents(path)
            runners: dict[str, Callable[[], float]] = {
                "vmemfs": lambda path=path, kind=kind: dd_extents(path, work, kind)[0]}
            if kind != "AVML":
                runners["drgn"] = lambda path=path, extents=extents: drgn_read(path, extents)
            samples = alternate(runners, rounds)
            total = sum(end - start for start, end in extents)
            ours = total / median(samples["vmemfs"])
            theirs = total / median(samples["drgn"]) if "drgn" in samples else float("nan")
            data[kind] = {"bytes": total, **samples}
            ratio = ours / theirs if theirs == theirs else float("nan")
            rows.append((kind, f"{total >> 20} MiB", fmt_bytes_rate(ours),
                         fmt_bytes_rate(theirs) if theirs == theirs else "—",
                         fmt_ratio(ratio) if ratio == ratio else "—"))
            if ratio == ratio:
                section.add_target(Target(f"{kind}: every page, vmemfs / drgn", ratio, 1.0,
                                          "×", note=f"median of {rounds}"))
        openings = [open_to_first_read(files["kdump-zlib"], work, f"o{i}")
                    for i in range(rounds + 2)]
        section.add_target(Target("open a 128 MiB guest's kdump-zlib, to first read",
                                  median(openings), 1.0, "s", higher_is_better=False))
        big_open = None
        if size_name == "full":
            big = guest_folder("4G")
            big_open = [open_to_first_read(big / "guest.kdump-zlib", work, f"b{i}")
                        for i in range(3)]
            section.add_target(Target("open a 4 GiB guest's kdump-zlib, to first read",
                                      median(big_open), 1.0, "s", higher_is_better=False))
            big_virtual = [open_to_first_read(big / "guest.kdump-zlib", work, f"v{i}",
                                              "virtual") for i in range(3)]
            section.add_target(Target("virtual view of a 4 GiB guest's kdump-zlib, to "
                                      "first read", median(big_virtual), 2.0, "s",
                                      higher_is_better=False))
            data["open_4g_virtual"] = big_virtual
        build_seconds, virtual_samples, text_bytes = virtual_comparison(folder, work, rounds
                                                                        + 2)
    rates = {name: text_bytes / median(times) for name, times in virtual_samples.items()}
    virtual_ratio = rates["virtual (mem)"] / rates["physical (mem)"]
    section.add_target(Target("kernel text: virtual view / physical view", virtual_ratio,
                              0.8, "×"))
    section.markdown = "\n".join([
        f"A QEMU 7.2 guest of {manifest.get('memory', '128M')} running Debian's kernel "
        f"{manifest.get('kernel', {}).get('abi', '')}. **Every dumped page** (`dd bs=1M` of each "
        "`extents/` file of a fresh mount, against drgn's `Program.read` in 1 MiB "
        f"pieces; median of {rounds} alternating rounds; the dump file page-cached):",
        "",
        markdown_table(("file", "dumped", "vmemfs", "drgn", "vmemfs / drgn"), rows),
        "",
        f"**Opening** (`mount.vmemfs` to the first read of `mem`): 128 MiB guest "
        f"{median(openings):.3f} s (median of {len(openings)})"
        + (f"; 4 GiB guest {median(big_open):.3f} s" if big_open else "") + ".",
        "",
        f"**Virtual view**: built in {build_seconds * 1000:.0f} ms (page-table walk of the "
        f"128 MiB guest). Kernel text ({text_bytes >> 20} MiB), `dd bs=1M` of `mem` at "
        "its virtual address in the virtual view and at its physical address in the "
        "physical one:",
        "",
        markdown_table(("read", "median", "speed"),
                       [(name, f"{median(times) * 1000:.1f} ms",
                         fmt_bytes_rate(rates[name]))
                        for name, times in virtual_samples.items()]),
        "",
    ])
    data["openings"] = openings
    data["virtual_build_seconds"] = build_seconds
    data["virtual"] = virtual_samples
    section.data = data
    section.seconds = time.perf_counter() - began
    finish_part(section, args.out)


if __name__ == "__main__":
    main()
