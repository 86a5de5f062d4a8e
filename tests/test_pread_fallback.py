"""A file that cannot be mapped with ``mmap`` is read with ``pread``: the ``mem`` of
another vmemfs mount (served with ``direct_io``, so ``mmap`` fails with ENODEV), mapped
by the library and mounted again through the kernel."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest
from conftest import Mounts

import vmemfs


@pytest.mark.mount
def test_a_direct_io_file_is_read_with_pread(tmp_path: Path, mounts: Mounts) -> None:
    payload = os.urandom(3 * 4096 + 123)
    raw = tmp_path / "payload.bin"
    raw.write_bytes(payload)
    # At 0x1001, so no extent boundary is page-aligned: mem stays direct_io.
    inner = tmp_path / "inner.toml"
    inner.write_text('[[map]]\nfile = "payload.bin"\naddress = 0x1001\n'
                     '[[map]]\ntext = "after the hole"\naddress = 0x9000\n')
    first = mounts.foreground(inner)
    mem = first.path("mem")
    with open(mem, "rb") as stream:
        with pytest.raises(OSError):
            mmap.mmap(stream.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ)

    m = vmemfs.open(mem)
    try:
        assert bytes(m.view(0x1001, len(payload))) == payload        # view falls back
        assert m.read(0x1001 + 100, 50) == payload[100:150]
        # A hole in the inner mount (EIO there) is a short read here, never an exception.
        assert m.read(0x1001 + len(payload) - 10, 100) == payload[-10:]
        assert m.read(0x9000, 14) == b"after the hole"
        assert m.read(0x8ff0, 4) == b""
    finally:
        m.close()

    # And through the kernel again: a mount of the first mount's mem.
    second = mounts.foreground(mem, "cache=never")   # byte-exact reads at its holes
    fd = os.open(second.path("mem"), os.O_RDONLY)
    try:
        assert os.pread(fd, len(payload), 0x1001) == payload
        assert os.pread(fd, 100, 0x1001 + len(payload) - 10) == payload[-10:]
        assert os.pread(fd, 14, 0x9000) == b"after the hole"
        with pytest.raises(OSError) as caught:
            os.pread(fd, 16, 0x1000)
        assert caught.value.errno == errno.EIO
    finally:
        os.close(fd)
