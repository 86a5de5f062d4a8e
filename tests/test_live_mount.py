"""A live process and a symbol table through the mount: ``/proc/PID`` read with ``cat``
and ``dd``, private modes, ``allow_other`` refused, ``sym/`` links into ``at/``."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mounts
from mounting import HELPER

CHILD = """
import ctypes, sys
buffer = ctypes.create_string_buffer(b"vmemfs live bytes\\0" + bytes(4096))
print(hex(ctypes.addressof(buffer)), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def child() -> Iterator[tuple[int, int]]:
    """A process holding ``vmemfs live bytes`` at an address it prints: (pid, address)."""
    process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        address = int(process.stdout.readline(), 16)
        yield process.pid, address
    finally:
        process.kill()
        process.communicate()


@pytest.mark.mount
def test_live_process_through_the_mount(child: tuple[int, int], mounts: Mounts,
                                        tmp_path: Path) -> None:
    pid, address = child
    table = tmp_path / "System.map"
    table.write_text(f"{address:016x} D live_buffer\n{address + 5:016x} D live/skipped\n")
    mount = mounts.foreground(f"/proc/{pid}", f"symbols={table}")
    assert (mount.path("at", hex(address), "string")).read_bytes() == b"vmemfs live bytes\n"
    assert mount.path("sym", "live_buffer", "string").read_bytes() == b"vmemfs live bytes\n"
    assert os.listdir(mount.path("sym")) == ["live_buffer"]
    assert os.readlink(mount.path("sym", "live_buffer")) == f"../at/0x{address:016x}"
    extent = next(name for name in os.listdir(mount.path("extents"))
                  if int(name[:16], 16) <= address < int(name[17:], 16))
    with open(mount.path("extents", extent), "rb") as data:
        data.seek(address - int(extent[:16], 16))
        assert data.read(17) == b"vmemfs live bytes"
    assert stat.S_IMODE(os.stat(mount.path("mem")).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(mount.path("extents")).st_mode) == 0o500
    assert b"[heap]" in mount.path(".ctl", "maps").read_bytes() or \
        b"[stack]" in mount.path(".ctl", "maps").read_bytes()


@pytest.mark.mount
def test_live_process_refuses_allow_other(child: tuple[int, int], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mount tests run as root")
    pid, _ = child
    target = tmp_path / "mnt"
    target.mkdir()
    result = subprocess.run([str(HELPER), f"pid:{pid}", str(target), "-o", "allow_other"],
                            capture_output=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().count("\n") == 1
    assert b"allow_other is refused for a live process" in result.stderr
    assert not os.path.ismount(target)


@pytest.mark.mount
def test_a_process_that_exits_leaves_a_mount_that_answers_eio(
        child: tuple[int, int], mounts: Mounts) -> None:
    pid, address = child
    mount = mounts.foreground(f"pid:{pid}")
    target = mount.path("at", hex(address), "string")
    assert target.read_bytes() == b"vmemfs live bytes\n"
    os.kill(pid, 9)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    with pytest.raises(OSError) as caught:
        target.read_bytes()
    assert caught.value.errno == 5                                 # EIO
    assert os.listdir(mount.path("extents"))                        # the layout stays
    assert mount.alive()


def test_save_of_a_process_opens_in_gdb(child: tuple[int, int], tmp_path: Path) -> None:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed")
    pid, address = child
    core = tmp_path / "live.core"
    result = subprocess.run([sys.executable, "-m", "vmemfs.cli", "save", f"/proc/{pid}",
                             str(core)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shown = subprocess.run([gdb, "-batch", "-c", str(core), "-ex", f"x/s {address:#x}"],
                           capture_output=True, text=True, timeout=120)
    assert '"vmemfs live bytes"' in shown.stdout, shown.stdout + shown.stderr
