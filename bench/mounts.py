"""Mount a FUSE filesystem for a benchmark and always take it down again.

:class:`Mount` starts the filesystem's command, polls until the mount point is mounted
(never a fixed sleep) and, on exit, unmounts with ``fusermount3 -u``, then ``-u -z``, and
only then ends the daemon it started, by that daemon's own process id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point listed in ``/proc/mounts``."""
    target = str(path)
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def daemon_pid(mountpoint: Path) -> int | None:
    """The process whose command line names ``mountpoint`` (for daemons that fork).

    The mount point is a fresh temporary directory, so only the daemon started for it
    can name it.
    """
    needle = os.fsencode(mountpoint)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            arguments = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in arguments:
            return int(entry)
    return None


class Mount:
    """``with Mount(command, mountpoint) as mount:`` — mounted inside, unmounted after.

    ``command`` is run with its output in ``log``.  Foreground daemons are ended by the
    process id of ``command``; daemons that fork (``forks=True``) by the process found
    with :func:`daemon_pid` once the mount is up.

    :raises RuntimeError: if the mount does not appear within ``MOUNT_TIMEOUT`` seconds or
        the command exits first (the message ends with its log).
    """

    def __init__(self, command: list[str], mountpoint: Path, log: Path, *,
                 forks: bool = False, poll: float = 0.02) -> None:
        self.command = command
        self.poll = poll
        self.mountpoint = mountpoint
        self.log = log
        self.forks = forks
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        try:
            while not is_mounted(self.mountpoint):
                status = self.process.poll()
                if status is not None and (not self.forks or status != 0):
                    raise RuntimeError(f"{self.command[0]} exited {status} before mounting: "
                                       + self.log.read_text(errors="replace")[-1500:])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.command[0]} did not mount "
                                       f"{self.mountpoint} in {MOUNT_TIMEOUT:g} s")
                time.sleep(self.poll)
            if self.forks:
                # The command returns once its daemon child is serving.
                self.process.wait(MOUNT_TIMEOUT)
                self.pid = daemon_pid(self.mountpoint)
            else:
                self.pid = self.process.pid
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for arguments in (["-u"], ["-u", "-z"]):
            if not is_mounted(self.mountpoint):
                break
            subprocess.run(["fusermount3", *arguments, str(self.mountpoint)],
                           capture_output=True, check=False)
        self._end_daemon()

    def _end_daemon(self) -> None:
        process = self.process
        if process is not None and not self.forks:
            try:
                process.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return
        if process is not None:
            process.wait()
        pid = self.pid
        if pid is None:
            return
        deadline = time.monotonic() + EXIT_TIMEOUT
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
