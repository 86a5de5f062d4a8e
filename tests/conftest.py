"""Fixtures for tests that mount vmemfs through the kernel (see ``mounting.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from guestdumps import Guest, GuestUnavailable, guest
from mounting import Mount, mount_unavailable, start_detached, start_foreground, unmount


class Mounts:
    """Mounts started by one test (or one module); all taken down by :meth:`close`.

    A foreground daemon's log must not hold a traceback or an ``ERROR`` line unless the
    test said so with ``allow_errors``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Mount] = []
        self.allow_errors = False
        self._count = 0

    def mountpoint(self) -> Path:
        self._count += 1
        path = self.directory / f"mnt{self._count}"
        path.mkdir()
        return path

    def foreground(self, source: Path | str, *options: str, mountpoint: Path | None = None,
                   args: tuple[str, ...] = ()) -> Mount:
        mountpoint = mountpoint or self.mountpoint()
        log = self.directory / f"{mountpoint.name}.log"
        mount = start_foreground(source, mountpoint, *options, log=log, args=args)
        self.started.append(mount)
        return mount

    def detached(self, source: Path | str, *options: str,
                 mountpoint: Path | None = None) -> Mount:
        mount = start_detached(source, mountpoint or self.mountpoint(), *options)
        self.started.append(mount)
        return mount

    def close(self) -> None:
        problems = []
        for mount in reversed(self.started):   # a later mount may hold an earlier one busy
            unmount(mount)
            log = mount.log_text()
            if not self.allow_errors and ("Traceback" in log or ": ERROR:" in log):
                problems.append(f"{mount.mountpoint}: {log}")
        assert not problems, "unexpected errors in the daemon's log:\n" + "\n".join(problems)


def _mounts(directory: Path) -> Iterator[Mounts]:
    reason = mount_unavailable()
    if reason:
        pytest.skip(reason)
    mounts = Mounts(directory)
    try:
        yield mounts
    finally:
        mounts.close()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    """Mounts for one test, unmounted when it ends."""
    yield from _mounts(tmp_path)


@pytest.fixture(scope="module")
def module_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounts]:
    """Mounts shared by the tests of one module, unmounted when the module ends."""
    yield from _mounts(tmp_path_factory.mktemp("mounts"))


@pytest.fixture(scope="session")
def dumps() -> Guest:
    """The dumps of the QEMU guest (``guestdumps``), built once per machine; the test
    skips where QEMU cannot be had."""
    try:
        return guest()
    except GuestUnavailable as error:
        pytest.skip(str(error))
