"""Mounting as a regular user, through Debian's set-uid ``fusermount3``: a dump the user
owns, and the user's own process (SPEC §5.2; docs/mounting.md, "Mounting as a user")."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import run_tool, traversable_dir
from uservenv import UserVenvUnavailable, user_venv

USER = "nobody"

pytestmark = [pytest.mark.mount, pytest.mark.slow]


@pytest.fixture
def fuse_for_users() -> Iterator[None]:
    """``/dev/fuse`` at Debian's mode 0666 for the test (restored afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("sets up another user's mount: runs as root")
    if not os.path.exists("/usr/bin/fusermount3"):
        pytest.skip("fusermount3 is not installed")
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


@pytest.fixture
def venv() -> Path:
    try:
        return user_venv()
    except UserVenvUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder owned by the user, which the user can reach."""
    entry = pwd.getpwnam(USER)
    with traversable_dir("vmemfs-user-") as folder:
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        yield folder


def as_user(*command: str | Path) -> subprocess.CompletedProcess[bytes]:
    return run_tool(*map(str, command), user=USER)


def mounted(mountpoint: Path) -> bool:
    """Whether a filesystem is mounted there (root cannot stat another user's FUSE mount
    without allow_other, so ``os.path.ismount`` cannot tell)."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(mountpoint) for line in mounts)


def unmount_as_user(mountpoint: Path) -> None:
    if mounted(mountpoint):
        as_user("fusermount3", "-u", mountpoint)
    if mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def test_a_user_mounts_a_dump_they_own(fuse_for_users: None, venv: Path, home: Path) -> None:
    entry = pwd.getpwnam(USER)
    dump = home / "dump.bin"
    dump.write_bytes(b"owned by the user" + bytes(4079))
    os.chown(dump, entry.pw_uid, entry.pw_gid)
    os.chmod(dump, 0o600)
    mountpoint = home / "mnt"
    mountpoint.mkdir()
    os.chown(mountpoint, entry.pw_uid, entry.pw_gid)
    result = as_user(venv / "bin" / "mount.vmemfs", dump, mountpoint, "-o", "address=0x1000")
    try:
        assert result.returncode == 0, result.stderr
        assert mounted(mountpoint)
        read = as_user("dd", f"if={mountpoint}/mem", "bs=17", "count=1", "skip=4096",
                       "iflag=skip_bytes", "status=none")
        assert read.stdout == b"owned by the user", read.stderr
        owner = as_user("stat", "-c", "%u", f"{mountpoint}/mem")
        assert owner.stdout.strip() == str(entry.pw_uid).encode()
    finally:
        unmount_as_user(mountpoint)
    assert not mounted(mountpoint)


def test_a_user_mounts_their_own_process(fuse_for_users: None, venv: Path,
                                         home: Path) -> None:
    entry = pwd.getpwnam(USER)
    child = subprocess.Popen(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
         str(venv / "bin" / "python"), "-c",
         "import ctypes, sys\nb = ctypes.create_string_buffer(b'the user process\\0')\n"
         "print(hex(ctypes.addressof(b)), flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    mountpoint = home / "mnt"
    mountpoint.mkdir()
    os.chown(mountpoint, entry.pw_uid, entry.pw_gid)
    try:
        assert child.stdout is not None
        address = int(child.stdout.readline(), 16)
        result = as_user(venv / "bin" / "mount.vmemfs", f"/proc/{child.pid}", mountpoint)
        assert result.returncode == 0, result.stderr
        assert mounted(mountpoint)   # mount.vmemfs returns once mounted
        text = as_user("cat", f"{mountpoint}/at/{address:#x}/string")
        assert text.stdout == b"the user process\n", text.stderr
        mode = as_user("stat", "-c", "%a", f"{mountpoint}/mem")
        assert mode.stdout.strip() == b"400"
        # Root is not the mounting user: without allow_other the kernel keeps it out.
        with pytest.raises(PermissionError):
            open(mountpoint / "mem", "rb").close()
    finally:
        unmount_as_user(mountpoint)
        child.kill()
        child.communicate()
