"""Saving a map as an ELF core (SPEC §3.4): round trips, layout, atomicity, failures."""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vmemfs import HoleError, MemoryMap
from vmemfs.formats import save as save_module
from vmemfs.formats.elf import read_layout
from vmemfs.formats.save import build_headers, save

SETTINGS = [(w, e) for w in (None, 32, 64) for e in (None, "little", "big")]


def snapshot(m: MemoryMap) -> list[tuple[int, int, bytes]]:
    """Every extent with its bytes: what a round trip must reproduce."""
    return [(s, e, m.get_bytes(s, e - s)) for s, e in m.extents()]


def random_map(tmp_path: Path, seed: int) -> MemoryMap:
    """A map of files and bytes with overlaps, adjacency and holes."""
    rng = random.Random(seed)
    backing = tmp_path / f"backing{seed}.bin"
    backing.write_bytes(rng.randbytes(1 << 16))
    m = MemoryMap()
    for _ in range(40):
        address = rng.choice([0, 0x1000, 0x7FFF_F000, 0xFFFF_FFFF_FFFF_0000]) + rng.randrange(
            0x8000)
        if rng.random() < 0.5:
            offset = rng.randrange(1 << 15)
            m.add_file(backing, address, offset=offset, length=rng.randrange(1, 1 << 12))
        else:
            m.add_bytes(rng.randbytes(rng.randrange(1, 300)), address)
    return m


def readelf(path: Path) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    result = subprocess.run(["readelf", "-hlW", str(path)], capture_output=True, text=True,
                            check=True)
    assert "Error" not in result.stderr and "Warning" not in result.stderr, result.stderr
    return result.stdout


@pytest.mark.parametrize(("wordsize", "endian"), SETTINGS)
def test_round_trip(tmp_path: Path, wordsize: int | None, endian: str | None) -> None:
    m = random_map(tmp_path, seed=SETTINGS.index((wordsize, endian)))
    m.wordsize, m.endian = wordsize, endian
    out = tmp_path / "saved.core"
    save(m, out)
    loaded = MemoryMap.load(out)
    assert snapshot(loaded) == snapshot(m)
    assert (loaded.wordsize, loaded.endian) == (wordsize, endian)
    assert len(loaded.mappings) == len(m.extents())
    header = readelf(out)
    assert "CORE (Core file)" in header
    assert ("big endian" if endian == "big" else "little endian") in header
    # The map reaches above 2**32, so the class is ELF64 whatever the word size.
    assert "ELF64" in header


def test_elf32_when_the_word_size_says_so_and_all_fits(tmp_path: Path) -> None:
    m = MemoryMap.of_bytes(b"low", 0x1000)
    m.add_bytes(b"top", 2**32 - 3)
    m.wordsize, m.endian = 32, "big"
    out = tmp_path / "small.core"
    save(m, out)
    header = readelf(out)
    assert "ELF32" in header
    assert "big endian" in header
    loaded = MemoryMap.load(out)
    assert snapshot(loaded) == snapshot(m)
    assert (loaded.wordsize, loaded.endian) == (32, "big")


@pytest.mark.parametrize(("extents", "wordsize", "elfclass"), [
    ([(0, 16)], 32, 1),
    ([(0, 16)], None, 2),
    ([(0, 16)], 64, 2),
    ([(2**32 - 16, 2**32)], 32, 1),
    ([(2**32 - 16, 2**32 + 1)], 32, 2),
    ([(0, 2**32)], 32, 2),                 # the length needs 33 bits
    ([(0, 2**31), (2**31 + 1, 2**32)], 32, 2),   # the second offset passes 2**32
])
def test_class_choice(extents: list[tuple[int, int]], wordsize: int | None,
                      elfclass: int) -> None:
    head, offsets = build_headers(extents, wordsize, None, None)
    assert head[4] == elfclass
    assert len(head) % 4096 == 0
    assert int(offsets[0]) == len(head)


def test_top_of_the_address_space(tmp_path: Path) -> None:
    m = MemoryMap.of_bytes(b"0123456789abcdef", 2**64 - 16)
    out = tmp_path / "top.core"
    save(m, out)
    loaded = MemoryMap.load(out)
    assert loaded.extents() == [(2**64 - 16, 2**64)]
    assert loaded.get_bytes(2**64 - 16, 16) == b"0123456789abcdef"


def test_many_extents_use_pn_xnum(tmp_path: Path) -> None:
    m = MemoryMap()
    source = tmp_path / "pages.bin"
    source.write_bytes(os.urandom(70_000 * 8))
    m.add_file_regions(source, ((0x10_0000 + 16 * i, 8 * i, 8) for i in range(70_000)))
    out = tmp_path / "many.core"
    save(m, out)
    assert "Number of program headers:         65535 (70001)" in readelf(out)
    layout = read_layout(out)
    assert len(layout.addresses) == 70_000
    loaded = MemoryMap.load(out)
    assert loaded.extents() == m.extents()
    assert loaded.get_bytes(0x10_0000 + 16 * 69_999, 8) == m.get_bytes(
        0x10_0000 + 16 * 69_999, 8)


def test_machine_kept_and_unknown(tmp_path: Path) -> None:
    m = MemoryMap.of_bytes(b"x", 0)
    m.machine = 20
    save(m, tmp_path / "ppc.core")
    assert MemoryMap.load(tmp_path / "ppc.core").machine == 20
    m.machine = None
    save(m, tmp_path / "none.core")
    assert "Machine:                           None" in readelf(tmp_path / "none.core")
    assert MemoryMap.load(tmp_path / "none.core").machine is None


def test_empty_map(tmp_path: Path) -> None:
    m = MemoryMap()
    m.endian = "big"
    out = tmp_path / "empty.core"
    save(m, out)
    loaded = MemoryMap.load(out)
    assert loaded.extents() == []
    assert (loaded.wordsize, loaded.endian) == (None, "big")
    readelf(out)


def test_progress(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(20 << 20))
    m = MemoryMap.of_file(data, 0)
    m.add_bytes(b"x" * 1000, 1 << 40)
    calls: list[tuple[int, int]] = []
    save(m, tmp_path / "out.core", progress=lambda done, total: calls.append((done, total)))
    total = (20 << 20) + 1000
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert len(calls) >= 3
    dones = [done for done, _ in calls]
    assert dones == sorted(dones)


def test_buffered_copy_when_copy_file_range_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    m = random_map(tmp_path, seed=7)
    save(m, tmp_path / "out.core")
    assert snapshot(MemoryMap.load(tmp_path / "out.core")) == snapshot(m)


@pytest.mark.parametrize("copy_range", [True, False])
def test_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      copy_range: bool) -> None:
    """Chunk boundaries inside pieces: many copy calls per piece, and per buffer."""
    monkeypatch.setattr(save_module, "COPY_RANGE_CHUNK", 1000)
    monkeypatch.setattr(save_module, "CHUNK_SIZE", 777)
    if not copy_range:
        monkeypatch.delattr(os, "copy_file_range")
    m = random_map(tmp_path, seed=11)
    m.add_bytes(os.urandom(5000), 0x5_0000)
    calls: list[int] = []
    save(m, tmp_path / "out.core", progress=lambda done, total: calls.append(done))
    assert snapshot(MemoryMap.load(tmp_path / "out.core")) == snapshot(m)
    assert len(calls) >= m.mapped_bytes() // 1000


def test_save_over_a_backing_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"original bytes")
    m = MemoryMap.of_file(path, 0x100)
    save(m, path)                       # the map keeps reading the old file
    assert MemoryMap.load(path).get_bytes(0x100, 14) == b"original bytes"
    assert m.get_bytes(0x100, 14) == b"original bytes"


def test_mode_kept_and_symlink_followed(tmp_path: Path) -> None:
    m = MemoryMap.of_bytes(b"x", 0)
    target = tmp_path / "target.core"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "link.core"
    link.symlink_to(target.name)
    save(m, link)
    assert link.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert MemoryMap.load(target).get_bytes(0, 1) == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.core", "target.core"]


def test_write_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = random_map(tmp_path, seed=3)
    out = tmp_path / "out.core"
    out.write_bytes(b"previous")
    before = sorted(p.name for p in tmp_path.iterdir())
    calls = 0
    real_pwrite = os.pwrite

    def full_disk(fd: int, data: object, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    monkeypatch.setattr(os, "copy_file_range", lambda *args: full_disk(0, b"", 0))
    with pytest.raises(OSError) as info:
        save(m, out)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert out.read_bytes() == b"previous"


def test_missing_folder_and_directory_target(tmp_path: Path) -> None:
    m = MemoryMap.of_bytes(b"x", 0)
    with pytest.raises(FileNotFoundError) as info:
        save(m, tmp_path / "no" / "such.core")
    assert info.value.filename == str(tmp_path / "no" / "such.core")
    with pytest.raises(IsADirectoryError):
        save(m, tmp_path)


def test_lost_bytes_leave_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shrinks.bin"
    path.write_bytes(b"a" * 10000)
    m = MemoryMap.of_file(path, 0x1000)
    os.truncate(path, 4000)
    with pytest.raises(HoleError) as info:
        save(m, tmp_path / "out.core")
    assert info.value.address == 0x1000 + 4000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shrinks.bin"]


@pytest.mark.mount
def test_real_full_filesystem(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                   check=True)
    try:
        data = tmp_path / "data.bin"
        data.write_bytes(os.urandom(1 << 20))
        m = MemoryMap.of_file(data, 0)
        with pytest.raises(OSError) as info:
            save(m, small / "out.core")
        assert info.value.errno == errno.ENOSPC
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)
        if os.path.ismount(small):
            subprocess.run(["umount", "-l", str(small)], check=False)
    assert not os.path.ismount(small)

