"""Security: who may read and change a mount, which files root refuses to mount, and that
no name looked up in the mount reaches the host filesystem (docs/reliability.md).

Other users are played by an unprivileged account (``nobody``, created with ``useradd``
where missing) through ``setpriv``; their probes run :data:`PROBE`, which prints what each
attempt gave as JSON.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
from artifacts.craft import Segment, build_elf
from conftest import Mounts
from hypothesis import given, settings
from hypothesis import strategies as st
from mounting import (
    HELPER,
    Mount,
    mount_unavailable,
    processes_mentioning,
    run_tool,
    traversable_dir,
    unmount,
)
from treemodel import tree_of

from vmemfs import MemoryMap
from vmemfs.fs import Operations
from vmemfs.tree import files as tree

CONTROLS = ("wordsize", "endian", "base", "holes")
OTHER_USER = "nobody"

PROBE = r"""
import errno, json, os, sys
root = sys.argv[1]
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as error:
        return errno.errorcode[error.errno]
def read(path):
    with open(path, "rb") as stream:
        stream.read(64)
def write(path, flags=os.O_WRONLY):
    os.close(os.open(path, flags))
results = {"listdir /": attempt(lambda: os.listdir(root)),
           "stat /": attempt(lambda: os.stat(root)),
           "statvfs /": attempt(lambda: os.statvfs(root))}
for name in sys.argv[2:]:
    path = os.path.join(root, name)
    results["read " + name] = attempt(lambda: read(path))
    results["write " + name] = attempt(lambda: write(path))
    results["truncate " + name] = attempt(lambda: os.truncate(path, 0))
    results["chmod " + name] = attempt(lambda: os.chmod(path, 0o666))
results["create"] = attempt(lambda: write(os.path.join(root, "new"), os.O_WRONLY | os.O_CREAT))
print(json.dumps(results))
"""


def other_user() -> str:
    """An unprivileged account to act as another user (made with ``useradd`` if need be)."""
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", OTHER_USER], check=True, capture_output=True)
    return OTHER_USER


def probe(mount: Mount, names: list[str]) -> dict[str, str]:
    """What another user gets for each attempt on the mount."""
    result = run_tool(sys.executable, "-c", PROBE, str(mount.mountpoint), *names,
                      user=other_user())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's temporary folders are 0700)."""
    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)
    with traversable_dir("vmemfs-security-") as path:
        yield path


def shared_source(directory: Path) -> tuple[Path, bytes]:
    """Two extents: 8 KiB at 0 and 4 KiB at 0x10000 (a map file and two raw files)."""
    first, second = os.urandom(8192), os.urandom(4096)
    (directory / "first.bin").write_bytes(first)
    (directory / "second.bin").write_bytes(second)
    mapfile = directory / "shared.toml"
    mapfile.write_text('[[map]]\nfile = "first.bin"\naddress = 0\n'
                       '[[map]]\nfile = "second.bin"\naddress = 0x10000\n')
    for path in directory.iterdir():
        path.chmod(0o644)
    return mapfile, first


def all_files(mount: Mount) -> list[str]:
    extents = [f"extents/{name}" for name in sorted(os.listdir(mount.path("extents")))]
    return ["mem", *extents, *(f".ctl/{name}" for name in (*CONTROLS, "maps"))]


# ==================================================================== who may do what


@pytest.mark.mount
def test_modes_and_owner(mounts: Mounts, shared_dir: Path) -> None:
    mapfile, _ = shared_source(shared_dir)
    (shared_dir / "mnt-modes").mkdir(mode=0o755)
    mount = mounts.foreground(mapfile, mountpoint=shared_dir / "mnt-modes")
    expected = {"": 0o555, "extents": 0o555, ".ctl": 0o555, "mem": 0o444,
                ".ctl/maps": 0o444, **{f".ctl/{name}": 0o644 for name in CONTROLS}}
    for name in sorted(os.listdir(mount.path("extents"))):
        expected[f"extents/{name}"] = 0o444
    for name, mode in expected.items():
        info = os.stat(mount.path(name) if name else mount.mountpoint)
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, 0, 0), name


@pytest.mark.mount
def test_allow_other_is_off_by_default(mounts: Mounts, shared_dir: Path) -> None:
    mapfile, first = shared_source(shared_dir)
    mountpoint = shared_dir / "private"
    mountpoint.mkdir(mode=0o755)
    mount = mounts.foreground(mapfile, mountpoint=mountpoint)
    [line] = [line for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1] == str(mountpoint)]
    assert "allow_other" not in line.split()[3].split(",")
    seen = probe(mount, all_files(mount))
    # The kernel answers statfs for others itself, with nothing in it.
    assert seen.pop("statvfs /") == "ok"
    assert set(seen.values()) == {"EACCES"}, seen
    # The mounting user is not affected.
    with open(mount.path("mem"), "rb") as mem:
        assert mem.read(8192) == first
    mount.path(".ctl", "holes").write_text("zero\n")
    assert mount.path(".ctl", "holes").read_text() == "zero\n"


@pytest.mark.mount
def test_allow_other_reads_everything_and_writes_nothing(mounts: Mounts,
                                                         shared_dir: Path) -> None:
    mapfile, first = shared_source(shared_dir)
    mountpoint = shared_dir / "shared"
    mountpoint.mkdir(mode=0o755)
    mount = mounts.foreground(mapfile, "allow_other", mountpoint=mountpoint)
    before = {name: mount.path(".ctl", name).read_text() for name in CONTROLS}
    names = all_files(mount)
    seen = probe(mount, names)
    assert seen.pop("listdir /") == seen.pop("stat /") == seen.pop("statvfs /") == "ok"
    assert seen.pop("create") == "EACCES"
    for name in names:
        assert seen[f"read {name}"] == "ok", name
        for action in ("write", "truncate", "chmod"):
            assert seen[f"{action} {name}"] in ("EACCES", "EPERM"), (action, name, seen)
    # ... not even with the shell, and nothing changed.
    for name in CONTROLS:
        value = {"wordsize": "64", "endian": "big", "base": "0x1000", "holes": "zero"}[name]
        result = run_tool("sh", "-c", f"echo {value} > {mount.path('.ctl', name)}",
                          user=other_user())
        assert result.returncode != 0 and b"Permission denied" in result.stderr
    assert {name: mount.path(".ctl", name).read_text() for name in CONTROLS} == before
    read = run_tool("head", "-c", "8192", str(mount.path("mem")), user=other_user())
    assert read.stdout == first


# ==================================================================== files root refuses


def mount_as_root(source: Path, mountpoint: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELPER, str(source), str(mountpoint)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.mount
def test_root_refuses_files_others_could_change(mounts: Mounts, tmp_path: Path) -> None:
    """Each case is refused with one line naming the file; put right (root's, 0644),
    the very same files mount."""
    user = pwd.getpwnam(other_user())
    data = tmp_path / "data.bin"
    data.write_bytes(b"evidence" * 512)
    core = tmp_path / "core.elf"
    core.write_bytes(build_elf([Segment(0x1000, b"elf bytes")]))
    mapfile = tmp_path / "outer.toml"
    mapfile.write_text('[[map]]\nfile = "data.bin"\naddress = 0\n'
                       '[[map]]\nelf = "core.elf"\n')
    link = tmp_path / "link.bin"
    link.symlink_to(data.name)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()

    def make_safe() -> None:
        for path in (data, core, mapfile):
            os.chown(path, 0, 0)
            path.chmod(0o644)

    cases: list[tuple[Path, Path, Any, str]] = [
        (data, data, lambda: data.chmod(0o664), "writable by group or others"),
        (data, data, lambda: data.chmod(0o646), "writable by group or others"),
        (data, data, lambda: os.chown(data, user.pw_uid, user.pw_gid),
         f"owned by uid {user.pw_uid}"),
        (link, link, lambda: data.chmod(0o666), "writable by group or others"),
        (mapfile, mapfile, lambda: mapfile.chmod(0o620), "writable by group or others"),
        (mapfile, mapfile, lambda: os.chown(mapfile, user.pw_uid, 0),
         f"owned by uid {user.pw_uid}"),
        (mapfile, data, lambda: data.chmod(0o606), "writable by group or others"),
        (mapfile, core, lambda: core.chmod(0o660), "writable by group or others"),
        (mapfile, core, lambda: os.chown(core, user.pw_uid, user.pw_gid),
         f"owned by uid {user.pw_uid}"),
    ]
    for source, culprit, loosen, message in cases:
        make_safe()
        loosen()
        result = mount_as_root(source, mountpoint)
        assert result.returncode == 1, (source, result.stderr)
        assert result.stderr.splitlines() == [
            f"mount.vmemfs: error: refusing to mount as root: {culprit} is {message}"
            + (f" (chmod go-w {culprit})" if "writable" in message else ", not by root")
        ], result.stderr
        assert not os.path.ismount(mountpoint)
        assert processes_mentioning(str(mountpoint)) == []
    make_safe()
    for source in (data, link, mapfile):
        mount = mounts.foreground(source, mountpoint=mountpoint)
        assert mount.path("mem").read_bytes()[:8] == b"evidence"
        mounts.started.remove(mount)
        unmount(mount)
        assert mount.exit_status == 0


# ==================================================================== names


@pytest.fixture
def ops() -> Operations:
    memory_map = MemoryMap.of_bytes(b"A" * 0x2000, 0x1000)
    memory_map.add_bytes(b"B" * 16, 0x5000)
    return Operations(tree_of(memory_map), uid=0, gid=0, time_ns=0)


HOSTILE_NAMES = [
    b"..", b"../..", b"../../etc/passwd", b"extents/../../etc/passwd", b"/etc/passwd",
    b"etc", b"passwd", b"mem/..", b"mem\0", b"mem\0/../../etc/passwd", b"\0", b"",
    b"./mem", b"mem/", b"MEM", b" mem", b"x" * 256, b"x" * 4096, b"mem" + b"\xff",
    b".ctl/base", b"...", b"~", b"$HOME", b"%2e%2e", b"..\\..\\etc",
    b"0000000000001000-0000000000003000/..", b"0000000000001000-0000000000003000\0",
    b"0000000000001000-0000000000003000 ", b"0000000000001000-0000000000003000.bin",
    b"0000000000001000-00000000000003000", b"0000000000001000-0000000000003001",
    b"0000000000001000-0000000000003000"[:-1], b"000000000000100-0000000000003000",
    b"0000000000001000+0000000000003000", b"0000000000001000-0000000000003000"[::-1],
    b"0X00000000001000-0000000000003000", b"0000000000001000-10000000000000000",
]
DIRECTORIES = (tree.ROOT, tree.EXTENTS, tree.CTL)
REAL_NAMES = {
    tree.ROOT: {b"mem": tree.MEM, b"extents": tree.EXTENTS, b".ctl": tree.CTL,
                b"at": tree.AT, b"find": tree.FIND, b"views": tree.VIEWS},
    tree.EXTENTS: {b"0000000000001000-0000000000003000": tree.FIRST_EXTENT,
                   b"0000000000005000-0000000000005010": tree.FIRST_EXTENT + 1},
    tree.CTL: {b"wordsize": tree.CTL_WORDSIZE, b"endian": tree.CTL_ENDIAN,
               b"base": tree.CTL_BASE, b"holes": tree.CTL_HOLES, b"maps": tree.CTL_MAPS,
               b"cache": tree.CTL_CACHE},
}


def lookup(ops: Operations, parent: int, name: bytes) -> int:
    """The inode the adapter answers, or the negative errno."""

    async def run() -> int:
        try:
            entry = await ops.lookup(parent, name, None)
        except pyfuse3.FUSEError as error:
            return -error.errno
        return entry.st_ino

    return trio.run(run)


@pytest.fixture
def host_access(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every attempt to touch the host filesystem by path, recorded."""
    touched: list[str] = []
    for module, name in [(os, "open"), (os, "stat"), (os, "lstat"), (os, "listdir"),
                         (os, "scandir"), (os, "access"), (os, "readlink"),
                         (builtins, "open")]:
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            touched.append(f"{_name}{args!r}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return touched


def test_hostile_names_are_not_found(ops: Operations, host_access: list[str]) -> None:
    for parent in DIRECTORIES:
        for name in HOSTILE_NAMES:
            if name in REAL_NAMES[parent] or name == b"..":
                continue
            assert lookup(ops, parent, name) == -errno.ENOENT, (parent, name)
        assert lookup(ops, parent, b".") == parent
        assert lookup(ops, parent, b"..") == tree.ROOT
        for name, inode in REAL_NAMES[parent].items():
            assert lookup(ops, parent, name) == inode
    # Lookups in a file find nothing (not a directory), nor in a node that does not exist.
    for parent in (tree.MEM, tree.CTL_BASE, tree.FIRST_EXTENT):
        assert lookup(ops, parent, b"mem") == -errno.ENOTDIR
    for parent in (999, 0):
        assert lookup(ops, parent, b"mem") == -errno.ENOENT
    assert host_access == []


@settings(derandomize=True, database=None, max_examples=800, deadline=None)
@given(parent=st.sampled_from(DIRECTORIES),
       name=st.one_of(st.binary(max_size=300),
                      st.sampled_from(HOSTILE_NAMES).flatmap(
                          lambda name: st.binary(max_size=4).map(lambda junk: name + junk))))
def test_random_names(parent: int, name: bytes) -> None:
    ops = Operations(tree_of(MemoryMap.of_bytes(b"A" * 0x2000, 0x1000)), uid=0, gid=0)
    expected = REAL_NAMES[parent].get(name)
    if name == b".":
        expected = parent
    elif name == b"..":
        expected = tree.ROOT
    assert lookup(ops, parent, name) == (expected if expected else -errno.ENOENT)


@pytest.mark.mount
def test_names_through_the_kernel(mounts: Mounts, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"S" * 4096)
    mount = mounts.foreground(source)
    root = mount.mountpoint
    assert os.stat(root / "extents" / "..").st_ino == os.stat(root).st_ino == tree.ROOT
    assert os.stat(root / ".ctl" / ".." / "mem").st_ino == tree.MEM
    failures = {
        "x" * 4096: errno.ENAMETOOLONG, "x" * 255: errno.ENOENT, "etc": errno.ENOENT,
        "etc/passwd": errno.ENOENT, "mem/..": errno.ENOTDIR, "mem/x": errno.ENOTDIR,
        "extents/etc": errno.ENOENT, ".ctl/../etc/passwd": errno.ENOENT,
        os.fsdecode(b"mem\xff"): errno.ENOENT,
    }
    for name, code in failures.items():
        with pytest.raises(OSError) as caught:
            os.stat(root / name)
        assert caught.value.errno == code, name
    for length in (256, 1025, 4000):        # the kernel's limit (1024 before 6.x) or ours
        with pytest.raises(OSError) as caught:
            os.stat(root / ("x" * length))
        assert caught.value.errno in (errno.ENOENT, errno.ENAMETOOLONG)
    with pytest.raises(ValueError):
        os.stat(str(root / "mem") + "\0/etc/passwd")      # NUL never reaches the kernel
    # A path can leave the mount only the way it leaves any directory: through the
    # mount point's parent, never by a name the daemon answers.
    assert os.stat(root / "extents" / ".." / "..").st_ino == os.stat(root.parent).st_ino
    walked = sorted(os.path.relpath(os.path.join(folder, name), root)
                    for folder, dirs, files in os.walk(root) for name in dirs + files)
    assert walked == sorted([".ctl", "at", "extents", "mem", *(f".ctl/{n}" for n in
                                                          (*CONTROLS, "maps", "cache")),
                             "find", "find/text", "find/hex", "find/pointer",
                             "extents/0000000000000000-0000000000001000",
                             "views", "views/core.elf", "views/lime"])
    with pytest.raises(OSError) as caught:
        os.readlink(root / "mem")
    assert caught.value.errno == errno.EINVAL
