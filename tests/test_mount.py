"""mount.vmemfs: the command line, and real mounts read by real tools (marker ``mount``).

Every kernel-level test mounts under a temporary directory through the fixtures of
``conftest.py``, which unmount in ``finally`` (``fusermount3 -u``, ``-u -z``, then a kill of
the mount's own process id).  Many checks share one mount to keep the runtime down.
"""

from __future__ import annotations

import errno
import os
import pwd
import random
import re
import signal
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Mounts
from mounting import (
    HELPER,
    Mount,
    mount_unavailable,
    processes_mentioning,
    run_tool,
    sh,
    traversable_dir,
    unmount,
    wait_for,
)

from vmemfs import ctl
from vmemfs.mount import (
    MountError,
    UsageError,
    check_mountpoint,
    fuse_options,
    parse_command_line,
)

HIGH = 0xffffffff81000000
OTHER_USER = "nobody"
"""A user other than the one who mounts (Debian always has it)."""


def other_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.skip(f"there is no user {OTHER_USER!r}")


# ==================================================================== the command line


class TestCommandLine:
    def test_mount8_convention(self) -> None:
        invocation = parse_command_line(
            ["src", "dir", "-o", "rw,holes=zero", "-n", "-v", "-o", "base=0x10,ro"])
        assert (invocation.source, invocation.mountpoint) == ("src", "dir")
        assert invocation.verbose and not invocation.options.foreground
        assert invocation.options.holes == "zero"
        assert invocation.options.base == 0x10
        assert invocation.options.kernel_flags == ["ro"]

    def test_every_own_option(self) -> None:
        options = parse_command_line([
            "-oaddress=0x1000,offset=16,length=0x20,physical,wordsize=64,endian=be,"
            "allow_other,fsname=dump,debug,foreground,auto_unmount", "-fs", "s", "d",
        ]).options
        assert (options.address, options.offset, options.length) == (0x1000, 16, 0x20)
        assert options.physical and options.allow_other and options.debug
        assert options.foreground and options.auto_unmount
        assert options.controls == {"wordsize": 64, "endian": "big"}
        assert options.fsname == "dump"

    def test_generic_flags_are_dropped_or_passed(self) -> None:
        invocation = parse_command_line([
            "s", "d", "-o", "defaults,auto,noauto,user,users,nofail,_netdev,x-systemd.foo,"
            "rw,nodev,nosuid,noexec,dev,suid,exec,noatime"])
        assert invocation.options.kernel_flags == [
            "nodev", "nosuid", "noexec", "dev", "suid", "exec", "noatime"]
        libfuse = fuse_options(invocation)
        assert {"subtype=vmemfs", "default_permissions", "nodev"} <= libfuse
        assert f"fsname={os.path.abspath('s')}" in libfuse
        assert not any(option.startswith(("holes", "base", "x-", "rw", "defaults"))
                       for option in libfuse)

    def test_libfuse_options(self) -> None:
        invocation = parse_command_line(
            ["s", "d", "-o", "allow_other,auto_unmount,holes=zero,debug,fsname=a\\b"])
        assert invocation.options.fsname == "a\\b"
        assert fuse_options(invocation) == {
            "fsname=a\\\\b", "subtype=vmemfs", "default_permissions", "allow_other",
            "auto_unmount"}

    def test_fsname_comma_is_escaped_for_libfuse(self) -> None:
        invocation = parse_command_line(["/dumps/a,b", "d"])
        assert "fsname=/dumps/a\\,b" in fuse_options(invocation)

    def test_type_from_mount8(self) -> None:
        assert parse_command_line(["s", "d", "-t", "fuse.vmemfs"]).source == "s"
        with pytest.raises(UsageError, match="type vmemfs only"):
            parse_command_line(["s", "d", "-t", "ext4"])

    @pytest.mark.parametrize(("argv", "message"), [
        (["s"], "expected SOURCE and MOUNTPOINT, got 1"),
        (["s", "d", "e"], "got 3"),
        (["s", "d", "-o", "foo"], "unknown option 'foo'"),
        (["s", "d", "-o", "holes=maybe"], "option holes: 'maybe' is not eio or zero"),
        (["s", "d", "-o", "base=-1"], "option base: '-1'"),
        (["s", "d", "-o", "wordsize=16"], "option wordsize: '16'"),
        (["s", "d", "-o", "endian=pdp"], "option endian"),
        (["s", "d", "-o", "address=x"], "option address: 'x'"),
        (["s", "d", "-o", "base"], "option 'base' needs a value"),
        (["s", "d", "-o", "fsname="], "option 'fsname' needs a value"),
        (["s", "d", "-o", "physical=1"], "option 'physical' takes no value"),
        (["s", "d", "-o", "subtype=x"], "unknown option 'subtype=x'"),
        (["s", "d", "-o", "default_permissions"], "unknown option"),
        (["s", "d", "-x"], "unknown flag '-x'"),
        (["s", "d", "-o"], "option -o needs an argument"),
    ])
    def test_usage_errors(self, argv: list[str], message: str) -> None:
        with pytest.raises(UsageError) as caught:
            parse_command_line(argv)
        assert message in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_sloppy_warns_instead(self) -> None:
        invocation = parse_command_line(["-s", "s", "d", "-o", "foo,holes=zero"])
        assert invocation.warnings == ["ignoring unknown option 'foo'"]
        assert invocation.options.holes == "zero"
        with pytest.raises(UsageError):   # a bad value is still an error
            parse_command_line(["-s", "s", "d", "-o", "holes=maybe"])

    def test_mountpoint_checks(self, tmp_path: Path) -> None:
        assert check_mountpoint(str(tmp_path)) == str(tmp_path.resolve())
        with pytest.raises(MountError, match="does not exist"):
            check_mountpoint(str(tmp_path / "missing"))
        (tmp_path / "file").write_bytes(b"")
        with pytest.raises(MountError, match="is not a directory"):
            check_mountpoint(str(tmp_path / "file"))

    def test_help(self) -> None:
        result = subprocess.run([HELPER, "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0
        assert result.stdout.startswith("usage: mount.vmemfs SOURCE MOUNTPOINT")
        assert "holes=eio|zero" in result.stdout


# ==================================================================== helpers


def one_error_line(stderr: str) -> str:
    """The single ``mount.vmemfs: error: ...`` line the helper must print."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mount.vmemfs: error: "), stderr
    return lines[0]


def run_helper(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELPER, *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def extent_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in ``mask`` as ``(start, end)``."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(start), int(end)) for start, end in zip(edges[::2], edges[1::2], strict=True)]


def write_mapfile(path: Path, tables: list[str], header: str = "") -> Path:
    path.write_text(header + "".join(f"[[map]]\n{table}\n" for table in tables))
    return path


@pytest.fixture(scope="module")
def world_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's own temporary folders are 0700)."""
    with traversable_dir("vmemfs-test-") as path:
        yield path


# ==================================================================== a random map


SPACE = 3 << 20
"""Random maps live in [0, SPACE)."""


class RandomMap:
    """A seeded map file of raw files and inline bytes, and a byte-array reference."""

    def __init__(self, directory: Path, seed: int) -> None:
        rng = random.Random(seed)
        self.data = np.zeros(SPACE, dtype=np.uint8)
        self.mask = np.zeros(SPACE, dtype=bool)
        tables = []
        for number in range(12):
            address = rng.randrange(0, SPACE - 1)
            if number % 3 == 2:
                length = rng.randrange(1, 40)
                content = rng.randbytes(length)
                tables.append(f'hex = "{content.hex()}"\naddress = {address}')
            else:
                size = rng.randrange(1, 300_000)
                offset = rng.randrange(0, size)
                length = min(rng.randrange(1, size - offset + 1), SPACE - address)
                file_bytes = rng.randbytes(size)
                file_path = directory / f"part{number}.bin"
                file_path.write_bytes(file_bytes)
                content = file_bytes[offset:offset + length]
                tables.append(f'file = "{file_path.name}"\naddress = "{address:#x}"\n'
                              f"offset = {offset}\nlength = {length}")
            self.data[address:address + len(content)] = np.frombuffer(content, np.uint8)
            self.mask[address:address + len(content)] = True
        self.path = write_mapfile(directory / "random.toml", tables)
        self.extents = extent_runs(self.mask)
        self.top = self.extents[-1][1]

    def expected(self, start: int, end: int) -> bytes:
        return self.data[start:end].tobytes()


@pytest.fixture(scope="module")
def random_case(module_mounts: Mounts,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[RandomMap, Mount]:
    model = RandomMap(tmp_path_factory.mktemp("random"), seed=5)
    return model, module_mounts.foreground(model.path)


@pytest.mark.mount
class TestRandomMap:
    @pytest.fixture
    def case(self, random_case: tuple[RandomMap, Mount]) -> tuple[RandomMap, Mount]:
        return random_case

    def test_tree(self, case: tuple[RandomMap, Mount]) -> None:
        model, mount = case
        assert sorted(os.listdir(mount.mountpoint)) == [
            ".ctl", "at", "extents", "find", "mem", "views"]
        names = os.listdir(mount.path("extents"))
        assert sorted(names) == [f"{start:016x}-{end:016x}" for start, end in model.extents]
        info = os.stat(mount.path("mem"))
        assert info.st_size == model.top
        assert info.st_blocks == -(-int(model.mask.sum()) // 512)
        assert stat.S_IMODE(info.st_mode) == 0o444
        for start, end in model.extents:
            assert os.stat(mount.path("extents", f"{start:016x}-{end:016x}")).st_size == \
                end - start
        maps = mount.path(".ctl", "maps").read_text().splitlines()
        assert len(maps) == 12
        assert all(re.match(r"0x[0-9a-f]{16}-0x[0-9a-f]{16} ", line) for line in maps)

    def test_extents_cmp_and_sha256sum(self, case: tuple[RandomMap, Mount],
                                       tmp_path: Path) -> None:
        model, mount = case
        for start, end in model.extents:
            name = f"{start:016x}-{end:016x}"
            expected = tmp_path / name
            expected.write_bytes(model.expected(start, end))
            assert run_tool("cmp", str(expected), str(mount.path("extents", name))).returncode \
                == 0
            digests = run_tool("sha256sum", str(expected), str(mount.path("extents", name)))
            first, second = (line.split()[0] for line in digests.stdout.splitlines())
            assert first == second

    def test_mem_with_dd_and_xxd(self, case: tuple[RandomMap, Mount], tmp_path: Path) -> None:
        model, mount = case
        mem = str(mount.path("mem"))
        for start, end in model.extents:
            result = run_tool("dd", f"if={mem}", "bs=65536", "iflag=skip_bytes,count_bytes",
                              f"skip={start}", f"count={end - start}", "status=none")
            assert result.returncode == 0, result.stderr
            assert result.stdout == model.expected(start, end)
            length = min(end - start, 4096)
            expected = tmp_path / "expected"
            expected.write_bytes(model.expected(start, start + length))
            shown = run_tool("xxd", "-s", str(start), "-l", str(length), mem)
            wanted = run_tool("xxd", "-o", str(start), "-l", str(length), str(expected))
            assert shown.returncode == 0 and shown.stdout == wanted.stdout

    def test_reads_stop_at_holes(self, case: tuple[RandomMap, Mount]) -> None:
        model, mount = case
        mem = str(mount.path("mem"))
        for start, end in model.extents[:-1]:
            result = run_tool("dd", f"if={mem}", "bs=1M", "iflag=skip_bytes",
                              f"skip={start}", "status=none")
            assert result.returncode != 0
            assert b"Input/output error" in result.stderr
            assert result.stdout == model.expected(start, end)
        if model.extents[0][0] > 0:
            with open(mem, "rb", buffering=0) as stream, pytest.raises(OSError) as caught:
                stream.read(16)
            assert caught.value.errno == errno.EIO
        assert os.stat(mem).st_size == model.top

    def test_random_preads(self, case: tuple[RandomMap, Mount]) -> None:
        model, mount = case
        rng = random.Random(7)
        fd = os.open(mount.path("mem"), os.O_RDONLY)
        try:
            for _ in range(300):
                offset, size = rng.randrange(0, model.top + 100), rng.randrange(1, 70_000)
                end = min(offset + size, model.top)
                if offset >= model.top:
                    assert os.pread(fd, size, offset) == b""
                elif not model.mask[offset]:
                    with pytest.raises(OSError) as caught:
                        os.pread(fd, size, offset)
                    assert caught.value.errno == errno.EIO
                else:
                    holes = np.flatnonzero(~model.mask[offset:end])
                    stop = offset + int(holes[0]) if len(holes) else end
                    assert os.pread(fd, size, offset) == model.expected(offset, stop)
        finally:
            os.close(fd)

    def test_zero_filled_mem(self, case: tuple[RandomMap, Mount]) -> None:
        model, mount = case
        holes = mount.path(".ctl", "holes")
        holes.write_text("zero\n")
        try:
            result = run_tool("cat", str(mount.path("mem")))
            assert result.returncode == 0
            assert result.stdout == model.expected(0, model.top)
        finally:
            holes.write_text("eio\n")
        assert holes.read_text() == "eio\n"


# ==================================================================== holes, base


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A 16 KiB raw file of seeded random bytes."""
    path = tmp_path_factory.mktemp("dump") / "dump.bin"
    content = random.Random(3).randbytes(0x4000)
    path.write_bytes(content)
    return path, content


@pytest.fixture(scope="module")
def holes_case(module_mounts: Mounts, dump: tuple[Path, bytes]) -> tuple[bytes, Mount]:
    """``[0, 0x2000)`` data, ``[0x2000, 0x3000)`` hole, ``[0x3000, 0x4000)`` data."""
    path, content = dump
    mapfile = write_mapfile(path.parent / "holes.toml", [
        f'file = "{path.name}"\naddress = 0\nlength = 0x2000',
        f'file = "{path.name}"\naddress = 0x3000\noffset = 0x3000',
    ])
    return content, module_mounts.foreground(mapfile)


@pytest.mark.mount
class TestHoles:
    @pytest.fixture
    def case(self, holes_case: tuple[bytes, Mount]) -> tuple[bytes, Mount]:
        return holes_case

    def test_cat_dd_xxd_stop_at_the_hole(self, case: tuple[bytes, Mount],
                                         tmp_path: Path) -> None:
        content, mount = case
        mem = str(mount.path("mem"))
        before = content[:0x2000]
        cat = run_tool("cat", mem)
        assert (cat.stdout, cat.returncode) == (before, 1)
        assert cat.stderr.decode().strip() == f"cat: {mem}: Input/output error"
        dd = run_tool("dd", f"if={mem}", "bs=4096")
        assert dd.stdout == before
        assert b"error reading" in dd.stderr and b"Input/output error" in dd.stderr
        assert b"2+0 records in" in dd.stderr
        xxd = run_tool("xxd", mem)
        expected = tmp_path / "before"
        expected.write_bytes(before)
        assert xxd.returncode != 0
        assert xxd.stdout == run_tool("xxd", str(expected)).stdout
        assert b"Input/output error" in xxd.stderr
        assert os.stat(mem).st_size == 0x4000              # no truncation by the kernel
        after = run_tool("dd", f"if={mem}", "bs=4096", "skip=3", "status=none")
        assert (after.returncode, after.stdout) == (0, content[0x3000:])

    def test_holes_zero(self, case: tuple[bytes, Mount]) -> None:
        content, mount = case
        holes = mount.path(".ctl", "holes")
        assert sh(f"echo zero > {holes}").returncode == 0
        try:
            cat = run_tool("cat", str(mount.path("mem")))
            assert cat.returncode == 0
            assert cat.stdout == content[:0x2000] + bytes(0x1000) + content[0x3000:]
        finally:
            assert sh(f"echo eio > {holes}").returncode == 0
        assert run_tool("cat", str(mount.path("mem"))).returncode == 1


@pytest.mark.mount
class TestBase:
    def test_default_base_for_a_kernel_address(self, mounts: Mounts,
                                               dump: tuple[Path, bytes]) -> None:
        path, content = dump
        mount = mounts.detached(path, f"address={HIGH:#x}")
        assert "base 0xffffffff00000000" in mount.startup_stderr
        assert mount.path(".ctl", "base").read_text() == "0xffffffff00000000\n"
        mem = mount.path("mem")
        assert os.stat(mem).st_size == 0x81000000 + len(content)
        with open(mem, "rb") as stream:
            stream.seek(0x81000000)
            assert stream.read() == content
        assert os.listdir(mount.path("extents")) == [
            f"{HIGH:016x}-{HIGH + len(content):016x}"]

    def test_base_option(self, mounts: Mounts, dump: tuple[Path, bytes]) -> None:
        path, content = dump
        mount = mounts.detached(path, f"address={HIGH:#x}", f"base={HIGH + 0x1000:#x}",
                                "wordsize=32", "endian=be")
        assert [line.split()[1] for line in mount.startup_stderr.splitlines()] == ["mounted"]
        assert mount.path("mem").read_bytes() == content[0x1000:]
        assert mount.path(".ctl", "wordsize").read_text() == "32\n"
        assert mount.path(".ctl", "endian").read_text() == "big\n"

    def test_base_above_2_63_at_run_time(self, mounts: Mounts, dump: tuple[Path, bytes]) -> None:
        path, content = dump
        mapfile = write_mapfile(path.parent / "both.toml", [
            'text = "low"\naddress = 0x1000',
            f'file = "{path.name}"\naddress = "{HIGH:#x}"',
        ])
        mount = mounts.foreground(mapfile)
        mem, base = mount.path("mem"), mount.path(".ctl", "base")
        assert base.read_text() == "0x0000000000000000\n"
        assert os.stat(mem).st_size == 2**63 - 1
        assert sh(f"echo {HIGH:#x} > {base}").returncode == 0
        assert os.stat(mem).st_size == len(content)          # visible at once
        assert mem.read_bytes() == content
        assert sh(f"echo {2**64 - 1} > {base}").returncode == 0
        assert os.stat(mem).st_size == 0
        assert mem.read_bytes() == b""
        assert sh(f"echo 4096 > {base}").returncode == 0
        with open(mem, "rb") as stream:
            assert stream.read(3) == b"low"

    def test_map_file_base(self, mounts: Mounts, dump: tuple[Path, bytes]) -> None:
        path, content = dump
        mapfile = write_mapfile(path.parent / "based.toml",
                                [f'file = "{path.name}"\naddress = "{HIGH:#x}"'],
                                header=f'base = "{HIGH - 0x10:#x}"\n')
        mount = mounts.foreground(mapfile)
        assert f"base {HIGH - 0x10:#018x} (the map file)" in mount.log_text()
        mem = mount.path("mem")
        assert os.stat(mem).st_size == 0x10 + len(content)
        fd = os.open(mem, os.O_RDONLY)
        try:
            assert os.pread(fd, len(content), 0x10) == content
            with pytest.raises(OSError) as caught:
                os.pread(fd, 16, 0)
            assert caught.value.errno == errno.EIO
        finally:
            os.close(fd)


# ==================================================================== .ctl


@pytest.fixture(scope="module")
def control_mount(module_mounts: Mounts, dump: tuple[Path, bytes], world_dir: Path) -> Mount:
    """A raw file at 0, mounted with allow_other where other users can reach it."""
    mountpoint = world_dir / "ctl"
    mountpoint.mkdir()
    return module_mounts.foreground(dump[0], "allow_other", mountpoint=mountpoint)


@pytest.mark.mount
class TestControl:
    @pytest.fixture
    def mount(self, control_mount: Mount) -> Mount:
        return control_mount

    def test_round_trips_through_the_shell(self, mount: Mount) -> None:
        directory = mount.path(".ctl")
        for name, written, shown in [("wordsize", "64", "64"), ("wordsize", "unset", "unset"),
                                     ("endian", "le", "little"), ("endian", "big", "big"),
                                     ("base", "0x2000", "0x0000000000002000"),
                                     ("base", "0", "0x0000000000000000"),
                                     ("holes", "zero", "zero"), ("holes", "eio", "eio")]:
            result = sh(f"echo {written} > {directory / name} && cat {directory / name}")
            assert (result.returncode, result.stdout.decode()) == (0, shown + "\n"), name
        assert sh(f"printf 32 > {directory / 'wordsize'}").returncode == 0
        assert (directory / "wordsize").read_text() == "32\n"

    def test_bad_values_fail_with_einval_and_a_warning(self, mount: Mount) -> None:
        directory = mount.path(".ctl")
        before = {name: (directory / name).read_text() for name in ctl.CONTROLS}
        warnings_before = mount.log_text().count("WARNING")
        refused = [
            f"echo 48 > {directory / 'wordsize'}",
            f"echo pdp > {directory / 'endian'}",
            f"echo -1 > {directory / 'base'}",
            f"echo 0x10000000000000000 > {directory / 'base'}",
            f"echo maybe > {directory / 'holes'}",
            f"printf 4 | dd of={directory / 'wordsize'} bs=1 seek=1 conv=notrunc status=none",
        ]
        for script in refused:
            result = sh(script)
            assert result.returncode != 0, script
            assert b"Invalid argument" in result.stderr, script
        assert {name: (directory / name).read_text() for name in ctl.CONTROLS} == before
        wait_for(lambda: mount.log_text().count("WARNING") >= warnings_before + len(refused),
                 10, "the warnings")
        assert mount.log_text().count("WARNING") == warnings_before + len(refused)

    def test_other_users_read_but_cannot_write(self, mount: Mount) -> None:
        other_user()
        directory = mount.path(".ctl")
        before = (directory / "wordsize").read_text()
        for value in ("64", "32", "unset"):
            result = sh(f"echo {value} > {directory / 'wordsize'}", user=OTHER_USER)
            assert result.returncode != 0
            assert b"Permission denied" in result.stderr
        assert (directory / "wordsize").read_text() == before
        read = sh(f"cat {directory / 'holes'} && head -c 4 {mount.path('mem')} | wc -c",
                  user=OTHER_USER)
        assert read.returncode == 0
        assert read.stdout.decode().split() == ["eio", "4"]

    def test_data_files_refuse_writers_even_root(self, mount: Mount) -> None:
        extent = mount.path("extents", os.listdir(mount.path("extents"))[0])
        for path in (mount.path("mem"), extent, mount.path(".ctl", "maps")):
            for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
                with pytest.raises(PermissionError):
                    os.open(path, flags)
        assert os.stat(mount.path("mem")).st_size == 0x4000

    def test_nothing_can_be_created_or_removed(self, mount: Mount) -> None:
        root = mount.mountpoint
        attempts = [
            lambda: os.open(root / "new", os.O_WRONLY | os.O_CREAT, 0o644),
            lambda: os.mkdir(root / "dir"),
            lambda: os.mkdir(root / "extents" / "dir"),
            lambda: os.unlink(root / "mem"),
            lambda: os.rmdir(root / "extents"),
            lambda: os.rename(root / "mem", root / "mem2"),
            lambda: os.symlink("mem", root / "link"),
            lambda: os.link(root / "mem", root / ".ctl" / "mem"),
            lambda: os.truncate(root / "mem", 0),
            lambda: os.chmod(root / "mem", 0o666),
        ]
        for attempt in attempts:
            with pytest.raises(PermissionError):
                attempt()
        assert sorted(os.listdir(root)) == [".ctl", "at", "extents", "find", "mem", "views"]


# ==================================================================== mount errors


@pytest.mark.mount
class TestMountErrors:
    def assert_nothing_left(self, mountpoint: Path) -> None:
        assert not os.path.ismount(mountpoint)
        assert processes_mentioning(str(mountpoint)) == []

    @pytest.fixture(autouse=True)
    def _need_mounts(self) -> None:
        reason = mount_unavailable()
        if reason:
            pytest.skip(reason)

    def test_usage_errors_exit_1(self, tmp_path: Path, dump: tuple[Path, bytes]) -> None:
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        bad_elf = tmp_path / "bad.elf"
        bad_elf.write_bytes(b"\x7fELF\x02\x01")
        cases = [
            ((tmp_path / "missing", mountpoint), "No such file or directory"),
            ((dump[0], mountpoint, "-o", "holes=maybe"), "'maybe' is not eio or zero"),
            ((dump[0], mountpoint, "-o", "foo"), "unknown option 'foo'"),
            ((dump[0], mountpoint, "-o", "length=0x100000"), "passes the end of the file"),
            ((bad_elf, mountpoint), "bad.elf"),
            ((tmp_path, mountpoint), "Is a directory"),
        ]
        for args, message in cases:
            result = run_helper(*args)
            assert result.returncode == 1, (args, result.stderr)
            assert message in one_error_line(result.stderr)
            self.assert_nothing_left(mountpoint)

    def test_mount_errors_exit_32(self, mounts: Mounts, tmp_path: Path,
                                  dump: tuple[Path, bytes]) -> None:
        file_mountpoint = tmp_path / "file"
        file_mountpoint.write_bytes(b"")
        for mountpoint, message in [(tmp_path / "missing", "does not exist"),
                                    (file_mountpoint, "is not a directory")]:
            result = run_helper(dump[0], mountpoint)
            assert result.returncode == 32, result.stderr
            assert message in one_error_line(result.stderr)
            self.assert_nothing_left(mountpoint)
        odd = tmp_path / "mount point \\ with\tescapes"
        odd.mkdir()
        mount = mounts.foreground(dump[0], mountpoint=odd)
        for extra in ([], ["-f"]):
            again = run_helper(dump[0], mount.mountpoint, *extra)
            assert again.returncode == 32
            assert "already mounted (fuse.vmemfs)" in one_error_line(again.stderr)
        assert mount.alive() and os.path.ismount(mount.mountpoint)
        assert len(processes_mentioning(str(mount.mountpoint))) == 1

    def test_a_dead_daemons_mount_point_is_named(self, mounts: Mounts,
                                                 dump: tuple[Path, bytes]) -> None:
        mount = mounts.foreground(dump[0])
        assert mount.process is not None
        mount.process.kill()
        mount.process.wait(timeout=30)
        assert os.path.ismount(mount.mountpoint)               # left "not connected"
        result = run_helper(dump[0], mount.mountpoint)
        assert result.returncode == 32
        line = one_error_line(result.stderr)
        assert "Transport endpoint is not connected" in line
        assert f"fusermount3 -u {mount.mountpoint}" in line
        unmount(mount)
        self.assert_nothing_left(mount.mountpoint)

    def test_a_failing_mount_in_the_daemon_is_reported(self, world_dir: Path,
                                                       dump: tuple[Path, bytes]) -> None:
        """Without ``user_allow_other`` (or access to /dev/fuse) libfuse refuses a user."""
        if "\nuser_allow_other" in "\n" + Path("/etc/fuse.conf").read_text() \
                if Path("/etc/fuse.conf").exists() else False:
            pytest.skip("user_allow_other is set in /etc/fuse.conf")
        source = world_dir / "user-source"
        source.write_bytes(dump[1])
        source.chmod(0o644)
        mountpoint = world_dir / "user-mnt"
        mountpoint.mkdir()
        other = other_user()
        if run_tool("test", "-x", str(HELPER), user=OTHER_USER).returncode != 0:
            pytest.skip(f"{OTHER_USER} cannot run {HELPER} (a folder above it is private)")
        os.chown(mountpoint, other.pw_uid, other.pw_gid)
        result = run_tool(str(HELPER), str(source), str(mountpoint), "-o", "allow_other",
                          user=OTHER_USER)
        stderr = result.stderr.decode()
        assert result.returncode == 32, stderr
        assert f"cannot mount on {mountpoint}: " in one_error_line(stderr)
        self.assert_nothing_left(mountpoint)

    def test_root_refuses_loose_files(self, tmp_path: Path, dump: tuple[Path, bytes]) -> None:
        if os.geteuid() != 0:
            pytest.skip("the check applies to root")
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        loose = tmp_path / "loose.bin"
        loose.write_bytes(dump[1])
        loose.chmod(0o664)
        result = run_helper(loose, mountpoint)
        assert result.returncode == 1
        assert "writable by group or others" in one_error_line(result.stderr)
        loose.chmod(0o644)
        other = other_user()
        os.chown(loose, other.pw_uid, other.pw_gid)
        result = run_helper(loose, mountpoint)
        assert f"owned by uid {other.pw_uid}" in one_error_line(result.stderr)
        mapfile = write_mapfile(tmp_path / "names-loose.toml",
                                [f'file = "{loose.name}"\naddress = 0'])
        result = run_helper(mapfile, mountpoint)
        assert result.returncode == 1
        assert str(loose) in one_error_line(result.stderr)
        self.assert_nothing_left(mountpoint)


# ==================================================================== ending the mount


@pytest.mark.mount
class TestLifecycle:
    @pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP", "umount", "fusermount3"])
    def test_foreground_ends_cleanly(self, mounts: Mounts, dump: tuple[Path, bytes],
                                     how: str) -> None:
        mount = mounts.foreground(dump[0])
        assert mount.process is not None
        if how.startswith("SIG"):
            mount.process.send_signal(getattr(signal, how))
        else:
            command = ["umount"] if how == "umount" else ["fusermount3", "-u"]
            assert run_tool(*command, str(mount.mountpoint)).returncode == 0
        assert mount.process.wait(timeout=30) == 0
        assert not os.path.ismount(mount.mountpoint)
        if how.startswith("SIG"):
            assert f"{how}: unmounting" in mount.log_text()
        assert "unmounted" in mount.log_text()

    @pytest.mark.parametrize("how", ["SIGTERM", "umount"])
    def test_detached_daemon_ends_cleanly(self, mounts: Mounts, dump: tuple[Path, bytes],
                                          how: str) -> None:
        mount = mounts.detached(dump[0])
        assert mount.alive()
        assert os.getsid(mount.pid) == mount.pid            # its own session
        assert mount.path("mem").read_bytes() == dump[1]
        if how == "SIGTERM":
            os.kill(mount.pid, signal.SIGTERM)
        else:
            assert run_tool("umount", str(mount.mountpoint)).returncode == 0
        wait_for(lambda: not mount.alive(), 30, "the daemon to exit")
        assert not os.path.ismount(mount.mountpoint)

    def test_an_elf_without_loads_mounts_empty(self, mounts: Mounts, tmp_path: Path) -> None:
        header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
            "<HHIQQQIHHHHHH", 4, 62, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
        source = tmp_path / "empty.core"
        source.write_bytes(header)
        mount = mounts.detached(source)
        assert f"{source} maps nothing: the mount is empty" in mount.startup_stderr
        assert os.listdir(mount.path("extents")) == []
        assert os.stat(mount.path("mem")).st_size == 0
        assert mount.path("mem").read_bytes() == b""
        assert mount.path(".ctl", "wordsize").read_text() == "64\n"     # from the header

    def test_proc_mounts(self, mounts: Mounts, dump: tuple[Path, bytes]) -> None:
        mount = mounts.detached(dump[0], "ro", "nodev")
        [line] = [line for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1] == str(mount.mountpoint)]
        source, _, kind, flags = line.split()[:4]
        assert (source, kind) == (str(dump[0]), "fuse.vmemfs")
        assert "ro" in flags.split(",") and "nodev" in flags.split(",")
        assert "default_permissions" in flags.split(",")
        [device] = [line.split()[2] for line in Path("/proc/self/mountinfo").read_text()
                    .splitlines() if line.split()[4] == str(mount.mountpoint)]
        readahead = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
        wait_for(lambda: int(readahead.read_text()) == 1024, 10, "a 1 MiB readahead")

    def test_a_file_opened_at_once_gets_the_raised_readahead(
            self, mounts: Mounts, dump: tuple[Path, bytes]) -> None:
        """The kernel gives a file its mount's readahead when it is opened: the first
        open raises it before it is answered, however soon after mounting it comes."""
        mount = mounts.foreground(dump[0])
        with open(mount.path("mem"), "rb"):
            [device] = [line.split()[2] for line in Path("/proc/self/mountinfo")
                        .read_text().splitlines()
                        if line.split()[4] == str(mount.mountpoint)]
            readahead = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
            assert int(readahead.read_text()) == 1024


def mount8_helper(name: str) -> None:
    target = Path("/usr/sbin") / name
    ours = HELPER.parent / name
    if not target.exists() or target.resolve() != ours.resolve():
        pytest.skip(f"{target} does not lead to {ours}: run bash mountscripts/install")


@pytest.mark.mount
class TestMount8:
    def adopt(self, mounts: Mounts, mountpoint: Path) -> Mount:
        """Find the daemon mount(8) started (by its unique mount point) for cleanup."""
        [pid] = processes_mentioning(str(mountpoint))
        mount = Mount(mountpoint, pid, None, None)
        mounts.started.append(mount)
        return mount

    @pytest.mark.parametrize("kind", ["vmemfs", "fuse.vmemfs"])
    def test_mount_t(self, mounts: Mounts, dump: tuple[Path, bytes], kind: str) -> None:
        mount8_helper(f"mount.{kind}")
        mountpoint = mounts.mountpoint()
        result = run_tool("mount", "-t", kind, "-o", "holes=zero", str(dump[0]),
                          str(mountpoint))
        assert result.returncode == 0, result.stderr
        mount = self.adopt(mounts, mountpoint)
        assert mount.path(".ctl", "holes").read_text() == "zero\n"
        assert mount.path("mem").read_bytes() == dump[1]
        assert run_tool("umount", str(mountpoint)).returncode == 0
        wait_for(lambda: not mount.alive(), 30, "the daemon to exit")

    def test_fstab_line(self, mounts: Mounts, dump: tuple[Path, bytes],
                        tmp_path: Path) -> None:
        mount8_helper("mount.vmemfs")
        mountpoint = mounts.mountpoint()
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{dump[0]} {mountpoint} vmemfs noauto,ro,base=0x3000,"
                         "x-comment=yes 0 0\n")
        result = run_tool("mount", "-T", str(fstab), str(mountpoint))
        assert result.returncode == 0, result.stderr
        mount = self.adopt(mounts, mountpoint)
        assert mount.path(".ctl", "base").read_text() == "0x0000000000003000\n"
        assert mount.path("mem").read_bytes() == dump[1][0x3000:]
        unmount(mount)
        assert not os.path.ismount(mountpoint)
