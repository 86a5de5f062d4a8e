"""``at/`` typed reads: the model (vmemfs.typed) against ``struct``, and the mount read
with ``cat``, ``readlink`` and ``stat`` through the kernel; lookup counts and ``forget``."""

from __future__ import annotations

import errno
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest
from chain import chain_bytes
from conftest import Mounts
from mounting import Mount, sh, wait_for

from vmemfs import HoleError, MemoryMap, NoEndianError, NoWordsizeError, typed

FORMATS = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i",
           "uint32": "I", "int64": "q", "uint64": "Q"}


def reference(data: bytes, field: str, wordsize: int, endian: str) -> bytes:
    """What ``at/ADDRESS/FIELD`` must hold for ``data`` at the address, by ``struct``."""
    order = "<" if endian == "little" else ">"
    if field in FORMATS:
        code = FORMATS[field]
        return b"%d\n" % struct.unpack_from(order + code, data)[0]
    if field == "int":
        return b"%d\n" % struct.unpack_from(order + "i", data)[0]
    if field == "long":
        return b"%d\n" % struct.unpack_from(order + ("q" if wordsize == 64 else "i"), data)[0]
    if field == "pointer":
        value = struct.unpack_from(order + ("Q" if wordsize == 64 else "I"), data)[0]
        return b"0x%0*x\n" % (wordsize // 4, value)
    return data.split(b"\0", 1)[0] + b"\n"


def test_values_against_struct_for_every_setting() -> None:
    rng = random.Random(7)
    blob = bytes(rng.randrange(256) for _ in range(4096)) + b"\0"
    m = MemoryMap.of_bytes(blob[:2048], 0x10000000)
    m.add_bytes(blob[2048:], 0x10000800)             # values straddle two mappings
    for wordsize in (32, 64):
        for endian in ("little", "big"):
            m.wordsize, m.endian = wordsize, endian
            for offset in [0, 1, 2045, 2046, 2047, *rng.sample(range(4000), 40)]:
                data = blob[offset:]
                for field in typed.VALUES:
                    if field == "string":
                        if b"\0" not in data[: typed.STRING_LIMIT]:
                            continue
                    got = typed.value(m, 0x10000000 + offset, field)
                    assert got == reference(data, field, wordsize, endian), (field, offset)


def test_links_wrap_and_holes() -> None:
    m = MemoryMap.of_bytes(b"\x10\x20\x30\x40\x00\x00\x00\x00", 0)
    m.add_bytes(b"\xff" * 8, 2**64 - 8)
    with pytest.raises(NoWordsizeError):
        typed.link(m, 0, "next")
    m.wordsize = 64
    with pytest.raises(NoEndianError):
        typed.link(m, 0, "deref")
    m.endian = "little"
    assert typed.link(m, 0, "deref") == 0x40302010
    assert typed.link(m, 2**64 - 8, "next") == 0                  # modulo 2**64
    assert typed.link(m, 0, "prev") == 2**64 - 8
    assert typed.link(m, 2**64 - 8, "deref") == 2**64 - 1
    with pytest.raises(HoleError):
        typed.value(m, 4, "uint64")                                # touches a hole
    assert typed.value(m, 4, "uint64", zero_holes=True) == b"0\n"
    with pytest.raises(HoleError):
        typed.value(m, 2**64 - 4, "uint64")                        # passes 2**64


def test_a_string_without_nul_is_too_long() -> None:
    m = MemoryMap.of_bytes(b"x" * (typed.STRING_LIMIT + 10), 0)
    with pytest.raises(typed.StringTooLong):
        typed.value(m, 0, "string")
    assert typed.value(m, 11, "uint8") == b"120\n"


def test_address_names() -> None:
    assert typed.parse_address_name("0x10") == 16
    assert typed.parse_address_name("4096") == 4096
    assert typed.parse_address_name("0xffffffffffffffff") == 2**64 - 1
    for bad in ("0x10000000000000000", "18446744073709551616", "-1", "0x", "1K", " 1", "x"):
        assert typed.parse_address_name(bad) is None, bad
    assert typed.address_name(16) == "0x0000000000000010"


# -------------------------------------------------------------------- through the kernel


def chain_source(tmp_path: Path) -> Path:
    """A map file: a linked list of three nodes ``{next, name}`` (64-bit little endian)
    at 0x10000000, and a 32-bit word at 0x10000100."""
    (tmp_path / "chain.bin").write_bytes(chain_bytes())
    path = tmp_path / "chain.toml"
    path.write_text('[[map]]\nfile = "chain.bin"\naddress = 0x10000000\n')
    return path


@pytest.mark.mount
def test_pointer_walk_with_cat_and_settings_through_ctl(tmp_path: Path, mounts: Mounts) -> None:
    mounts.allow_errors = False
    mount = mounts.foreground(chain_source(tmp_path))
    at = mount.path("at")
    assert os.listdir(at) == []
    word = at / "0x10000100"
    assert sorted(os.listdir(word)) == sorted(typed.FIELDS)
    # Unset word size and endian: ENODATA, named in one logged line.
    result = sh(f"cat {word}/uint32")
    assert result.returncode == 1 and b"No data available" in result.stderr
    (mount.path(".ctl", "endian")).write_text("little\n")
    assert (word / "uint32").read_bytes() == b"3735928559\n"
    assert (word / "int32").read_bytes() == b"-559038737\n"
    (mount.path(".ctl", "endian")).write_text("big\n")           # read both ways
    assert (word / "uint32").read_bytes() == b"%d\n" % 0xefbeadde
    (mount.path(".ctl", "endian")).write_text("little\n")
    with pytest.raises(OSError) as caught:
        os.readlink(at / "0x10000000" / "deref")
    assert caught.value.errno == errno.ENODATA
    mount.path(".ctl", "wordsize").write_text("64\n")
    assert os.readlink(at / "0x10000000" / "deref") == "../0x0000000010000040"
    assert os.readlink(at / "0x10000000" / "next") == "../0x0000000010000008"
    walk = at / "0x10000000" / "deref" / "deref" / "next" / "deref" / "string"
    assert walk.read_bytes() == b"third\n"
    names = sh(f"for n in 0x10000000 0x10000040 0x10000080; do cat {at}/$n/next/deref/string;"
               " done")
    assert names.stdout == b"first\nsecond\nthird\n"
    assert (at / "268435456" / "pointer").read_bytes() == b"0x0000000010000040\n"
    # A hole is EIO; a bad name ENOENT; nothing can be written.
    for path, code in [(at / "0x20000000" / "uint8", errno.EIO),
                       (at / "0x10000000" / "nothing", errno.ENOENT),
                       (at / "0x1K", errno.ENOENT),
                       (at / "0x10000000000000000", errno.ENOENT)]:
        with pytest.raises(OSError) as caught:
            path.read_bytes()
        assert caught.value.errno == code, path
    for target in (at / "0x10000000" / "uint8", at / "new", at / "0x10000000" / "new"):
        with pytest.raises(OSError) as caught:
            with open(target, "w"):
                pass
        assert caught.value.errno == errno.EACCES, target
    mount.path(".ctl", "holes").write_text("zero\n")
    assert (at / "0x20000000" / "uint64").read_bytes() == b"0\n"


def daemon_rss(pid: int) -> int:
    """The daemon's resident memory in bytes (``VmRSS`` of ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def visit_and_forget(mount: Mount, first: int, count: int, before: int) -> None:
    """Look up ``count`` distinct ``at/`` addresses from number ``first`` on (with a C
    tool, stat, in one process per batch of 25,000), then make the kernel forget them."""
    script = (f"cd {mount.path('at')} && for i in $(seq {{0}} {{1}}); do "
              "printf '0x%x\\n' $((0x10000000 + i * 8)); done | xargs stat -c %i")
    inodes: set[int] = set()
    for batch in range(first, first + count, 25_000):
        result = subprocess.run(["bash", "-c", script.format(batch, batch + 24_999)],
                                capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr
        inodes.update(int(number) for number in result.stdout.split())
    assert len(inodes) == count and min(inodes) >= 1 << 48     # a new node for each
    with open("/proc/sys/vm/drop_caches", "w") as caches:
        caches.write("2\n")
    wait_for(lambda: os.statvfs(mount.mountpoint).f_files < before + 1000, 60,
             "the kernel to forget the at/ nodes")


@pytest.mark.mount
@pytest.mark.slow
def test_forgotten_addresses_leave_the_node_table_and_memory_flat(
        tmp_path: Path, mounts: Mounts) -> None:
    mount = mounts.foreground(chain_source(tmp_path))
    before = os.statvfs(mount.mountpoint).f_files
    resident = []
    for round_number in range(3):            # 300,000 distinct addresses in all
        visit_and_forget(mount, round_number * 100_000, 100_000, before)
        resident.append(daemon_rss(mount.pid))
    # The allocator keeps some of the first round's peak and moves by a few MB between
    # rounds; a node kept per address would add some 30 MB per round.
    assert max(resident[1:]) - resident[0] < 24 << 20, resident
