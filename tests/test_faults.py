"""Faults: backing files changed under a mount, a killed daemon, busy unmounts, a full or
read-only disk during save.  Each expected outcome is written in docs/reliability.md.

Mounts go through the fixtures of ``conftest.py``; tests that leave a dead FUSE mount
behind on purpose clear it in ``finally`` (:func:`clear_dead_mount`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Mounts
from mounting import Mount, mount_unavailable, run_tool, wait_for

from vmemfs import MemoryMap

pytestmark = pytest.mark.mount

VMEMFS = Path(sys.executable).parent / "vmemfs"
HELPER = Path(sys.executable).parent / "mount.vmemfs"
FIRST_SIZE = 64 * 1024
SECOND_AT = 0x20000
KEPT = 20_000
"""What is left of the first file after it is truncated."""


def in_proc_mounts(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is in the mount table (also when its daemon is dead, which
    ``os.path.ismount`` cannot see)."""
    with open("/proc/self/mounts") as table:
        return any(line.split()[1] == str(mountpoint) for line in table)


def clear_dead_mount(mountpoint: Path) -> None:
    if in_proc_mounts(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True,
                       timeout=30)
    assert not in_proc_mounts(mountpoint)


def errno_of(action: object) -> int:
    with pytest.raises(OSError) as caught:
        action()  # type: ignore[operator]
    return caught.value.errno


def pread(path: Path, size: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


class Pair:
    """A map file of two raw files: ``first`` at 0 and ``second`` at :data:`SECOND_AT`."""

    def __init__(self, directory: Path) -> None:
        rng = random.Random(7)
        self.first = directory / "first.bin"
        self.second = directory / "second.bin"
        self.first_bytes = rng.randbytes(FIRST_SIZE)
        self.second_bytes = rng.randbytes(16 * 1024)
        self.first.write_bytes(self.first_bytes)
        self.second.write_bytes(self.second_bytes)
        self.mapfile = directory / "pair.toml"
        self.mapfile.write_text(
            f'[[map]]\nfile = "{self.first.name}"\naddress = 0\n'
            f'[[map]]\nfile = "{self.second.name}"\naddress = {SECOND_AT:#x}\n')

    def state(self, mount: Mount) -> tuple[object, ...]:
        """What must not change when a backing file does: the layout and the controls."""
        return (os.stat(mount.path("mem")).st_size,
                sorted(os.listdir(mount.path("extents"))),
                mount.path(".ctl", "maps").read_text(),
                *(mount.path(".ctl", name).read_text()
                  for name in ("wordsize", "endian", "base", "holes")))


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


# ==================================================================== backing files


def test_truncated_backing_file(mounts: Mounts, pair: Pair) -> None:
    mount = mounts.foreground(pair.mapfile)
    before = pair.state(mount)
    mem = mount.path("mem")
    os.truncate(pair.first, KEPT)

    # The bytes before the cut still read; a read across it stops there; past it is EIO.
    assert pread(mem, 4096, 0) == pair.first_bytes[:4096]
    assert pread(mem, FIRST_SIZE, 0) == pair.first_bytes[:KEPT]
    assert errno_of(lambda: pread(mem, 16, KEPT)) == errno.EIO
    assert errno_of(lambda: pread(mem, 16, FIRST_SIZE - 16)) == errno.EIO
    # The other file is not affected, and neither is the layout.
    assert pread(mem, 1 << 20, SECOND_AT) == pair.second_bytes
    assert pair.state(mount) == before
    # Lost bytes are not holes to be zero-filled: they stay EIO under holes=zero.
    mount.path(".ctl", "holes").write_text("zero\n")
    assert pread(mem, 256, KEPT - 256) == pair.first_bytes[KEPT - 256:KEPT]
    assert errno_of(lambda: pread(mem, 16, KEPT + 16)) == errno.EIO
    assert len(pread(mem, 4096, FIRST_SIZE)) == 4096              # a real hole: zeros
    mount.path(".ctl", "holes").write_text("eio\n")
    # The extent file of the first file fails where bytes were lost (never a short
    # read, which the page cache would take for its end).
    extent = mount.path("extents", sorted(os.listdir(mount.path("extents")))[0])
    assert os.stat(extent).st_size == FIRST_SIZE
    assert errno_of(extent.read_bytes) == errno.EIO
    assert errno_of(lambda: pread(extent, 100, KEPT + 100)) == errno.EIO
    assert mount.alive()
    assert pread(mem, 16, SECOND_AT) == pair.second_bytes[:16]


def test_truncated_under_a_cached_extent(mounts: Mounts, pair: Pair) -> None:
    """``extents/`` files go through the page cache: pages read before the cut keep
    their (right) bytes until the cache lets them go; then the lost bytes give EIO."""
    mount = mounts.foreground(pair.mapfile)
    extent = mount.path("extents", sorted(os.listdir(mount.path("extents")))[0])
    assert extent.read_bytes() == pair.first_bytes
    os.truncate(pair.first, KEPT)
    fd = os.open(extent, os.O_RDONLY)
    try:
        try:
            cached: bytes | None = os.pread(fd, FIRST_SIZE, 0)
        except OSError as error:
            assert error.errno == errno.EIO
            cached = None
        assert cached in (pair.first_bytes, None)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)     # drop this file's pages
        assert errno_of(lambda: os.pread(fd, 100, KEPT + 100)) == errno.EIO
    finally:
        os.close(fd)
    assert pread(mount.path("mem"), FIRST_SIZE, 0) == pair.first_bytes[:KEPT]


RACE_SECONDS = 8.0


@pytest.mark.slow
def test_truncation_racing_readers(mounts: Mounts, tmp_path: Path) -> None:
    """A backing file cut and restored again and again under concurrent readers of
    ``mem`` and of its extent: the daemon never dies of SIGBUS, and a read gives a prefix
    of the right bytes (short, or EIO), never other bytes, except zeros at or above a cut:
    the kernel zeroes the rest of the page-cache folio holding the cut when it truncates
    (several pages with ext4's large folios), and a ``read(2)`` of the backing file itself
    returns the same zeros in the same race. The zeros need not begin exactly at the cut:
    the copy of a reply may already be past the cut when the truncation strikes. A ``mem``
    read (``direct_io``) can only see zeros of a cut made while it ran; an extent read can
    also see zeros an earlier read left in that file's page cache."""
    size = 1 << 20
    original = random.Random(5).randbytes(size)
    backing = tmp_path / "racing.bin"
    backing.write_bytes(original)
    # cache=never: every read of mem reaches the daemon (the page-cache mode with a
    # shrinking file is tested in test_pagecache.py).
    mount = mounts.foreground(backing, "cache=never")
    mounts.allow_errors = True          # a reply whose pages vanished is logged
    [extent_name] = os.listdir(mount.path("extents"))
    deadline = time.monotonic() + RACE_SECONDS
    counts: Counter[str] = Counter()
    wrong: list[str] = []
    # (path, offset, first zero, last zero, cuts begun before the read, after it)
    zeroed: list[tuple[Path, int, int, int, int, int]] = []
    cut_at: list[int] = []                  # appended before each cut is made

    def reader(path: Path, seed: int) -> None:
        rng = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            while time.monotonic() < deadline:
                offset = rng.randrange(size)
                length = rng.randrange(1, 128 * 1024)
                begun = len(cut_at)
                try:
                    data = os.pread(fd, length, offset)
                except OSError as error:
                    counts[errno.errorcode[error.errno]] += 1
                    continue
                counts["short" if len(data) < min(length, size - offset) else "full"] += 1
                expected = original[offset:offset + len(data)]
                if data != expected:
                    got = np.frombuffer(data, np.uint8)
                    differ = got != np.frombuffer(expected, np.uint8)
                    where = np.flatnonzero(differ)
                    first, last = offset + int(where[0]), offset + int(where[-1])
                    if got[differ].any():
                        wrong.append(f"{path.name} pread({offset}, {length}): "
                                     f"{len(where)} bytes differ from {first} to {last}")
                    else:
                        zeroed.append((path, offset, first, last, begun,
                                       len(cut_at)))  # checked below
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(path, seed)) for seed, path in
               enumerate([mount.path("mem"), mount.path("mem"),
                          mount.path("extents", extent_name)])]
    for thread in threads:
        thread.start()
    cuts = 0
    rng = random.Random(6)
    try:
        with open(backing, "r+b", buffering=0) as file:
            while time.monotonic() < deadline:
                cut = rng.randrange(size)
                cut_at.append(cut)
                os.ftruncate(file.fileno(), cut)
                os.pwrite(file.fileno(), original[cut:], cut)
                cuts += 1
    finally:
        for thread in threads:
            thread.join(timeout=RACE_SECONDS + 60)
    print(f"\ntruncation race: {cuts} cuts, reads {dict(counts)}, "
          f"{len(zeroed)} with zeros from a cut "
          f"({sum(z[0].name == 'mem' for z in zeroed)} of them of mem)")
    assert wrong == []
    for path, offset, first, last, begun, ended in zeroed:
        # The cut whose restore may still have been running when the read began (the one
        # before it had finished), and every cut begun until the read returned; for the
        # page-cached extent, every cut made before the read returned.
        window = cut_at[max(begun - 1, 0):ended] if path.name == "mem" else cut_at[:ended]
        assert window and min(window) <= first, (path.name, offset, first, last, window)
    assert mount.alive()
    assert set(counts) <= {"full", "short", "EIO"}, counts
    assert counts["full"] > 0 and counts["EIO"] + counts["short"] > 0
    assert pread(mount.path("mem"), size, 0) == original
    log = mount.log_text()
    assert "Traceback" not in log and "SIGBUS" not in log, log[-2000:]


def test_deleted_backing_file_is_still_served(mounts: Mounts, pair: Pair) -> None:
    mount = mounts.foreground(pair.mapfile)
    before = pair.state(mount)
    pair.first.unlink()
    assert pread(mount.path("mem"), FIRST_SIZE, 0) == pair.first_bytes
    extent = mount.path("extents", sorted(os.listdir(mount.path("extents")))[0])
    assert extent.read_bytes() == pair.first_bytes
    assert pair.state(mount) == before          # .ctl/maps still names the old path


def test_replaced_backing_file_keeps_the_old_inode(mounts: Mounts, pair: Pair) -> None:
    mount = mounts.foreground(pair.mapfile)
    before = pair.state(mount)
    replacement = pair.first.with_name("first.new")
    replacement.write_bytes(b"\xff" * (2 * FIRST_SIZE))
    os.replace(replacement, pair.first)
    assert pread(mount.path("mem"), FIRST_SIZE, 0) == pair.first_bytes
    assert pair.state(mount) == before
    # Writing the old inode in place (not a rename) does show: the file is shared.
    assert pair.second.stat().st_size == 16 * 1024
    with open(pair.second, "r+b") as second:
        second.write(b"NEW!")
    assert pread(mount.path("mem"), 8, SECOND_AT) == b"NEW!" + pair.second_bytes[4:8]


# ==================================================================== the daemon dies


@pytest.mark.parametrize("clear", [["fusermount3", "-u"], ["umount"]])
def test_killed_daemon(mounts: Mounts, pair: Pair, clear: list[str]) -> None:
    mount = mounts.foreground(pair.mapfile)
    mountpoint = mount.mountpoint
    held = os.open(mount.path("mem"), os.O_RDONLY)
    try:
        assert mount.process is not None
        mount.process.send_signal(signal.SIGKILL)
        assert mount.process.wait(timeout=30) == -signal.SIGKILL
        # Clients see "Transport endpoint is not connected": files held open, new opens,
        # listings, statfs.  (A stat of a name the kernel cached may still succeed.)
        assert errno_of(lambda: os.pread(held, 16, 0)) == errno.ENOTCONN
        assert errno_of(lambda: pread(mount.path("mem"), 16, 0)) == errno.ENOTCONN
        assert errno_of(lambda: os.listdir(mountpoint)) == errno.ENOTCONN
        assert errno_of(lambda: os.statvfs(mountpoint)) == errno.ENOTCONN
        assert in_proc_mounts(mountpoint)
        # A new mount there is refused with the fix in the message.
        refused = subprocess.run([HELPER, pair.mapfile, mountpoint], capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 32
        assert refused.stderr.strip() == (
            f"mount.vmemfs: error: mount point {mountpoint}: Transport endpoint is not "
            f"connected (a FUSE daemon died there: fusermount3 -u {mountpoint})")
        assert errno_of(lambda: os.close(held)) == errno.ENOTCONN   # the flush fails
        held = -1
        result = run_tool(*clear, str(mountpoint))
        assert result.returncode == 0, result.stderr
        assert not in_proc_mounts(mountpoint)
        assert os.listdir(mountpoint) == []
        again = mounts.foreground(pair.mapfile, mountpoint=mountpoint)
        assert pread(again.path("mem"), 16, 0) == pair.first_bytes[:16]
    finally:
        if held >= 0:
            with contextlib.suppress(OSError):
                os.close(held)
        if not mounts.started[-1].alive():
            clear_dead_mount(mountpoint)


def test_auto_unmount(mounts: Mounts, pair: Pair) -> None:
    mount = mounts.foreground(pair.mapfile, "auto_unmount")
    try:
        assert pread(mount.path("mem"), 16, 0) == pair.first_bytes[:16]
        assert mount.process is not None
        mount.process.send_signal(signal.SIGKILL)
        mount.process.wait(timeout=30)
        wait_for(lambda: not in_proc_mounts(mount.mountpoint), 30,
                 "fusermount3 to unmount the dead daemon's mount")
        assert os.listdir(mount.mountpoint) == []
    finally:
        clear_dead_mount(mount.mountpoint)
    again = mounts.foreground(pair.mapfile, mountpoint=mount.mountpoint)
    assert pread(again.path("mem"), 16, 0) == pair.first_bytes[:16]


# ==================================================================== busy unmounts


def test_busy_unmount_then_lazy(mounts: Mounts, pair: Pair) -> None:
    mount = mounts.foreground(pair.mapfile)
    mountpoint = str(mount.mountpoint)
    held = os.open(mount.path("mem"), os.O_RDONLY)
    try:
        busy = run_tool("fusermount3", "-u", mountpoint)
        assert busy.returncode != 0
        assert b"Device or resource busy" in busy.stderr
        busy = run_tool("umount", mountpoint)
        assert busy.returncode != 0
        assert b"target is busy" in busy.stderr
        assert os.path.ismount(mountpoint) and mount.alive()
        assert os.pread(held, 16, 0) == pair.first_bytes[:16]

        lazy = run_tool("fusermount3", "-u", "-z", mountpoint)
        assert lazy.returncode == 0, lazy.stderr
        assert not in_proc_mounts(mount.mountpoint)
        # Detached from the tree, still serving the file held open.
        assert mount.alive()
        assert os.pread(held, 16, 100) == pair.first_bytes[100:116]
    finally:
        os.close(held)
    # The last reference gone, the daemon ends on its own, cleanly.
    assert mount.process is not None
    assert mount.process.wait(timeout=30) == 0
    assert "unmounted" in mount.log_text()


def test_sigterm_while_busy_detaches(mounts: Mounts, pair: Pair) -> None:
    mount = mounts.foreground(pair.mapfile)
    held = os.open(mount.path("mem"), os.O_RDONLY)
    try:
        assert mount.process is not None
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(timeout=30) == 0
        assert not in_proc_mounts(mount.mountpoint)
        assert errno_of(lambda: os.pread(held, 16, 0)) == errno.ENOTCONN
        assert errno_of(lambda: os.close(held)) == errno.ENOTCONN
        held = -1
    finally:
        if held >= 0:
            with contextlib.suppress(OSError):
                os.close(held)
    assert "SIGTERM: unmounting" in mount.log_text()


# ==================================================================== save to a bad disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at the end."""
    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
    assert not os.path.ismount(path)


def vmemfs_save(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VMEMFS, "save", str(source), str(out)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vmemfs: error: "), stderr
    return lines[0]


def test_save_to_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(random.Random(3).randbytes(3 << 20))
    kept = small_disk / "kept.core"
    assert vmemfs_save(_tiny(tmp_path), kept).returncode == 0
    kept_bytes = kept.read_bytes()
    for out in (small_disk / "new.core", kept):
        result = vmemfs_save(source, out)
        assert result.returncode == 1
        assert one_error_line(result.stderr) == (
            f"vmemfs: error: {out}: No space left on device")
        assert sorted(os.listdir(small_disk)) == ["kept.core"]    # no temporary left
        assert kept.read_bytes() == kept_bytes
    m = MemoryMap.of_file(source, 0)
    try:
        with pytest.raises(OSError) as caught:
            m.save(small_disk / "api.core")
    finally:
        m.close()
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC,
                                                          str(small_disk / "api.core"))
    assert sorted(os.listdir(small_disk)) == ["kept.core"]
    assert MemoryMap.load(kept).get_bytes(0, 5) == b"tiny!"


def _tiny(directory: Path) -> Path:
    path = directory / "tiny.bin"
    path.write_bytes(b"tiny!")
    return path


def test_save_to_a_read_only_disk(small_disk: Path, tmp_path: Path) -> None:
    kept = small_disk / "kept.core"
    assert vmemfs_save(_tiny(tmp_path), kept).returncode == 0
    kept_bytes = kept.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True,
                   capture_output=True)
    source = tmp_path / "some.bin"
    source.write_bytes(b"x" * 10_000)
    for out in (small_disk / "new.core", kept):
        result = vmemfs_save(source, out)
        assert result.returncode == 1
        assert one_error_line(result.stderr) == f"vmemfs: error: {out}: Read-only file system"
    m = MemoryMap.of_file(source, 0)
    try:
        with pytest.raises(OSError) as caught:
            m.save(kept)
    finally:
        m.close()
    assert (caught.value.errno, caught.value.filename) == (errno.EROFS, str(kept))
    assert sorted(os.listdir(small_disk)) == ["kept.core"]
    assert kept.read_bytes() == kept_bytes
