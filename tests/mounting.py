"""Start the real ``mount.vmemfs`` on a temporary directory, and always take it down.

A mount is started as a subprocess (``-f``: the test owns the process; or detached, with
``-v`` telling the daemon's process id), polled with ``os.path.ismount`` while the
process is checked to be alive, and unmounted in ``finally`` by :func:`unmount`:
``fusermount3 -u``, then ``fusermount3 -u -z``, then a kill of its own process id.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HELPER = Path(sys.executable).parent / "mount.vmemfs"
"""The console script of the installed package, next to the interpreter running the tests."""

MOUNT_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0
_POLL = 0.01

_PID = re.compile(r"\(pid (\d+)\)")


def mount_unavailable() -> str | None:
    """Why FUSE mounts cannot be tested here, or ``None``."""
    if os.geteuid() != 0:
        return "mount tests run as root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    if not HELPER.exists():
        return f"{HELPER} is not installed (pip install -e .)"
    return None


@dataclass
class Mount:
    """One mount.vmemfs started by a test."""

    mountpoint: Path
    pid: int
    process: subprocess.Popen[bytes] | None
    """The foreground process (``None`` for a detached daemon)."""
    log: Path | None
    """Where a foreground daemon's stderr goes."""
    startup_stderr: str = ""
    """What the helper said on stderr while mounting (detached mounts)."""
    exit_status: int | None = field(default=None)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return pid_alive(self.pid)

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            state = stat_file.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll ``condition()`` until true; ``AssertionError`` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(_POLL)


def start_foreground(source: Path | str, mountpoint: Path, *options: str,
                     log: Path, args: tuple[str, ...] = ()) -> Mount:
    """Run ``mount.vmemfs SOURCE MOUNTPOINT -f [-o OPTIONS]`` and wait until mounted.

    :raises AssertionError: with the daemon's log if it exits or does not mount in time.
    """
    command = [str(HELPER), str(source), str(mountpoint), "-f", *args]
    if options:
        command += ["-o", ",".join(options)]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=log_file)
    mount = Mount(mountpoint, process.pid, process, log)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    try:
        while not os.path.ismount(mountpoint):
            if process.poll() is not None:
                raise AssertionError(f"mount.vmemfs exited with {process.returncode}: "
                                     f"{mount.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not mounted after {MOUNT_TIMEOUT}s: {mount.log_text()}")
            time.sleep(_POLL)
    except BaseException:
        unmount(mount)
        raise
    return mount


def start_detached(source: Path | str, mountpoint: Path, *options: str) -> Mount:
    """Run ``mount.vmemfs SOURCE MOUNTPOINT -v [-o OPTIONS]``, which returns once mounted.

    :raises AssertionError: if the helper fails or the mount is not there when it returns.
    """
    command = [str(HELPER), str(source), str(mountpoint), "-v"]
    if options:
        command += ["-o", ",".join(options)]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=MOUNT_TIMEOUT)
    match = _PID.search(result.stderr)
    if match is None:
        assert not os.path.ismount(mountpoint), result.stderr
        raise AssertionError(f"mount.vmemfs exited with {result.returncode}: {result.stderr}")
    mount = Mount(mountpoint, int(match[1]), None, None, result.stderr)
    if result.returncode != 0 or not os.path.ismount(mountpoint):
        unmount(mount)
        raise AssertionError(f"exit {result.returncode}, mounted "
                             f"{os.path.ismount(mountpoint)}: {result.stderr}")
    return mount


def unmount(mount: Mount) -> None:
    """Take the mount down whatever state it is in, and end its process.

    ``fusermount3 -u``, then ``-u -z`` if still mounted, then ``SIGKILL`` to the mount's
    own process if it does not exit.  Sets ``mount.exit_status`` for a foreground process.
    """
    mountpoint = str(mount.mountpoint)
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, timeout=30)
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True,
                       timeout=30)
    try:
        wait_for(lambda: not mount.alive(), EXIT_TIMEOUT, f"pid {mount.pid} to exit")
    except AssertionError:
        os.kill(mount.pid, signal.SIGKILL)
        wait_for(lambda: not mount.alive(), EXIT_TIMEOUT, f"pid {mount.pid} to die")
    if mount.process is not None:
        mount.exit_status = mount.process.wait(timeout=EXIT_TIMEOUT)


def processes_mentioning(text: str) -> list[int]:
    """Process ids whose command line contains ``text`` (a unique temporary path)."""
    found = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if needle in cmdline.read() and pid_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def run_tool(*command: str, user: str | None = None,
             input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command (through ``setpriv`` as ``user`` if given), capturing its output."""
    argv = list(command)
    if user is not None:
        entry = pwd.getpwnam(user)
        argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                "--clear-groups", *argv]
    return subprocess.run(argv, input=input_bytes, capture_output=True, timeout=60)


def sh(script: str, *, user: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a ``bash -c`` script, as :func:`run_tool` does (bash, because dash reports
    every failed ``echo`` as "I/O error" instead of the errno's text)."""
    return run_tool("bash", "-c", script, user=user)


@contextmanager
def traversable_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory other users can traverse (pytest's temporary folders are 0700).

    On the way out, whatever is still mounted inside is lazily unmounted first.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for entry in path.iterdir():
            if os.path.ismount(entry):
                subprocess.run(["fusermount3", "-u", "-z", str(entry)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
