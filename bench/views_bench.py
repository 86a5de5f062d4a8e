"""``views/``: the map served as an ELF core and as LiME, against the files they stand for.

* **core.elf against the saved file**: ``dd bs=1M`` of ``views/core.elf`` against ``dd`` of
  the file ``vmemfs save`` writes for the same map (byte for byte the same content), both
  warm: the view read once before (its pages kept in the page cache across opens, as
  ``keep_cache`` allows when the headers have not changed) and the saved file in the page
  cache.  The first read of the view (every request answered by the daemon, the dump file
  page-cached) is shown too.  Sources: the guest's ELF dump and its kdump-zlib file.
  Times are ``dd``'s own (its summary line), so process start-up is left out.
* **volatility3 banners.Banners** (``vol -q -f FILE banners.Banners``) on ``views/lime``
  like for like: the view of a mount of the guest's kdump-zlib file against a copy of that
  view in a regular file (the same records), and the view of a mount of the guest's LiME
  file (written by the guest build from its ``/proc/iomem`` RAM ranges) against that
  file.  Each view against the LiME file is shown too.
* **Linear readers**: the same plugin on ``mem`` (stops at the first hole), on ``mem``
  with ``holes=zero`` (reads every hole) and on ``views/lime``, of the kdump with pages
  left out (``-d 31``) and of the kdump-zlib file.

The guest is the one the tests use (``tests/guest/build.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
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
from bench.dumps_bench import guest_folder, mount_command
from bench.mounts import Mount

ROUNDS = {"small": 1, "medium": 3, "full": 7}
VOL_ROUNDS = {"small": 1, "medium": 2, "full": 3}
BLOCK = "1M"
KDUMP_VIEW = "views/lime of a kdump-zlib mount"
KDUMP_COPY = "a copy of that view (cp)"
LIME_VIEW = "views/lime of a guest.lime mount"
LIME_FILE = "guest.lime"
_DD_SUMMARY = re.compile(r"^(\d+) bytes .* copied, ([0-9.e+-]+) s", re.MULTILINE)


def dd_seconds(path: Path) -> float:
    """``dd``'s own time to read ``path`` to the end with 1 MiB blocks."""
    result = subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={BLOCK}"],
                            capture_output=True, text=True, check=True, timeout=3600)
    match = _DD_SUMMARY.search(result.stderr)
    if match is None or int(match[1]) != os.stat(path).st_size:
        raise RuntimeError(f"dd of {path} did not read it all: {result.stderr.strip()}")
    return float(match[2])


def vol_seconds(path: Path, banner: str) -> float:
    """Seconds ``vol banners.Banners`` takes on ``path``; it must find ``banner``."""
    began = time.perf_counter()
    result = subprocess.run([str(VENV_BIN / "vol"), "-q", "-f", str(path), "banners.Banners"],
                            capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - began
    if result.returncode != 0 or banner not in result.stdout:
        raise RuntimeError(f"vol on {path} did not find the banner: "
                           f"{result.stderr.strip()[-500:]}")
    return seconds


def vol_linear(path: Path) -> tuple[float, bool, int]:
    """Seconds, whether a "Linux version" banner was found, exit status: ``vol`` on a
    file read linearly (``mem``)."""
    began = time.perf_counter()
    result = subprocess.run([str(VENV_BIN / "vol"), "-q", "-f", str(path), "banners.Banners"],
                            capture_output=True, text=True, timeout=3600)
    return time.perf_counter() - began, "Linux version" in result.stdout, result.returncode


def core_rows(sources: dict[str, Path], work: Path,
              rounds: int) -> tuple[list[tuple[str, ...]], dict[str, object], list[Target]]:
    """dd of views/core.elf (first and warm) against dd of the saved file, per source."""
    rows: list[tuple[str, ...]] = []
    data: dict[str, object] = {}
    targets = []
    for name, source in sources.items():
        saved = work / f"{name}.saved.core"
        subprocess.run([str(VENV_BIN / "vmemfs"), "save", str(source), str(saved)],
                       check=True, capture_output=True, timeout=3600)
        saved.read_bytes()                                   # page-cached
        mountpoint = work / f"mnt-{name}"
        with Mount(mount_command(source, mountpoint), mountpoint, work / f"{name}.log"):
            view = mountpoint / "views" / "core.elf"
            size = os.stat(view).st_size
            if size != os.stat(saved).st_size:
                raise RuntimeError(f"{view} and {saved} differ in size")
            first = dd_seconds(view)
            subprocess.run(["cmp", str(view), str(saved)], check=True, timeout=3600)
            runners: dict[str, Callable[[], float]] = {
                "views/core.elf": partial(dd_seconds, view),
                "saved file": partial(dd_seconds, saved)}
            samples = alternate(runners, rounds)
        saved.unlink()
        ours = size / median(samples["views/core.elf"])
        theirs = size / median(samples["saved file"])
        rows.append((name, f"{size >> 20} MiB", fmt_bytes_rate(size / first),
                     fmt_bytes_rate(ours), fmt_bytes_rate(theirs), fmt_ratio(ours / theirs)))
        data[name] = {"bytes": size, "first": first, **samples}
        targets.append(Target(f"{name}: views/core.elf dd 1 MiB warm / saved file",
                              ours / theirs, 0.8, "×", note=f"median of {rounds}"))
    return rows, data, targets


def main() -> None:
    args = part_arguments(__doc__.splitlines()[0])
    size_name = args.size
    rounds, vol_rounds = ROUNDS[size_name], VOL_ROUNDS[size_name]
    began = time.perf_counter()
    section = Section("views_bench", "Views", command_line("views_bench", size_name))
    folder = guest_folder("128M")
    manifest = json.loads((folder / "manifest.json").read_text())
    banner = manifest["banner"].strip()
    data: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="vmemfs-views-",
                                     dir=os.environ.get("VMEMFS_BENCH_DIR")) as name:
        work = Path(name)
        sources = {"ELF": folder / "guest.elf", "kdump-zlib": folder / "guest.kdump-zlib"}
        for path in (*sources.values(), folder / "guest.lime", folder / "guest.kdump-d31"):
            path.read_bytes()                                  # the dumps page-cached
        rows, data["core"], targets = core_rows(sources, work, rounds)
        for target in targets:
            section.add_target(target)

        kdump = sources["kdump-zlib"]
        lime_file = folder / "guest.lime"
        kdump_mount, lime_mount = work / "vol-kdump", work / "vol-lime"
        with Mount(mount_command(kdump, kdump_mount), kdump_mount, work / "vol-kdump.log"), \
                Mount(mount_command(lime_file, lime_mount), lime_mount, work / "vol-lime.log"):
            kdump_view = kdump_mount / "views" / "lime"
            lime_view = lime_mount / "views" / "lime"
            copy = work / "view-copy.lime"
            shutil.copyfile(kdump_view, copy)
            for path in (kdump_view, lime_view):
                vol_seconds(path, banner)                     # volatility's caches warm
            files = {KDUMP_VIEW: kdump_view, KDUMP_COPY: copy, LIME_VIEW: lime_view,
                     LIME_FILE: lime_file}
            vol_samples = alternate({label: partial(vol_seconds, path, banner)
                                     for label, path in files.items()}, vol_rounds)
        copy.unlink()
        times = {label: median(samples) for label, samples in vol_samples.items()}
        section.add_target(Target("vol banners: views/lime of kdump-zlib / the same records "
                                  "in a file", times[KDUMP_VIEW] / times[KDUMP_COPY], 1.2, "×",
                                  higher_is_better=False, note=f"median of {vol_rounds}"))
        section.add_target(Target("vol banners: views/lime of a LiME mount / that LiME file",
                                  times[LIME_VIEW] / times[LIME_FILE], 1.2, "×",
                                  higher_is_better=False, note=f"median of {vol_rounds}"))
        data["vol"] = vol_samples

        linear_rows: list[tuple[str, str, str, str, str]] = []
        dumps = (("kdump -d 31", folder / "guest.kdump-d31"), ("kdump-zlib", kdump))
        for dump, path in dumps:
            for label, options, read in (("mem", (), "mem"),
                                         ("mem, holes=zero", ("holes=zero",), "mem"),
                                         ("views/lime", (), "views/lime")):
                mountpoint = work / f"linear-{len(linear_rows)}"
                with Mount(mount_command(path, mountpoint, *options), mountpoint,
                           work / f"linear-{len(linear_rows)}.log"):
                    seconds, found, status = vol_linear(mountpoint / read)
                linear_rows.append((dump, label, f"{seconds:.1f} s",
                                    "yes" if found else "no", str(status)))
        data["linear"] = linear_rows

    section.markdown = "\n".join([
        f"The QEMU guest of the tests ({manifest.get('memory', '128M')}, Debian's kernel "
        f"{manifest.get('kernel', {}).get('abi', '')}), its dumps page-cached. "
        f"**`dd bs=1M` of `views/core.elf`** against `dd` of the file `vmemfs save` writes "
        f"for the same map (`cmp` equal); the first read of the view is answered by the "
        f"daemon, later ones come from the page cache; median of {rounds} alternating "
        "rounds, `dd`'s own times:",
        "",
        markdown_table(("source", "size", "view, first read", "view, warm", "saved file",
                        "view / saved (warm)"), rows),
        "",
        f"**`vol -q -f FILE banners.Banners`** (volatility3), median of {vol_rounds} "
        "alternating rounds after one run of each view to warm volatility's own caches. "
        "The guest's LiME file holds its RAM ranges from `/proc/iomem`; QEMU's kdump also "
        "holds the pages between them and the firmware at 0xfffc0000, so its view has "
        "other records: the copy of the view holds the same records in a regular file.",
        "",
        markdown_table(("file", "median", "vs the same records in a file", "vs guest.lime"),
                       [(label, f"{times[label]:.2f} s",
                         fmt_ratio(times[label] / times[same]),
                         fmt_ratio(times[label] / times[LIME_FILE]))
                        for label, same in ((KDUMP_VIEW, KDUMP_COPY), (KDUMP_COPY, KDUMP_COPY),
                                            (LIME_VIEW, LIME_FILE), (LIME_FILE, LIME_FILE))]),
        "",
        "**Linear readers**: the same plugin, once each, on `mem` (read from the front: "
        "it stops at the first hole), on `mem` with `holes=zero` (every hole read as "
        "zeros up to the top of the map) and on `views/lime`. The `-d 31` dump leaves out "
        "zero, cache, user and free pages (first hole at 1.1 MiB, top at 128 MiB); the "
        "kdump-zlib one holds all 128 MiB of RAM and the firmware below 4 GiB:",
        "",
        markdown_table(("dump", "file", "time", "banner found", "exit status"),
                       linear_rows),
        "",
    ])
    section.data = data
    section.seconds = time.perf_counter() - began
    finish_part(section, args.out)


if __name__ == "__main__":
    main()
