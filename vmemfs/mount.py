"""``mount.vmemfs``: the source, the mount point, daemonizing, signals (SPEC §5).

``mount.vmemfs SOURCE MOUNTPOINT [-o OPTIONS] [-f] [-v] [-n] [-s]`` follows mount(8)'s
helper convention, so ``mount -t vmemfs`` (and ``mount -t fuse.vmemfs`` through the name
``mount.fuse.vmemfs``) and ``/etc/fstab`` lines work.  The command line is parsed by
:mod:`vmemfs.options`.

Lifecycle: everything that can be checked is checked in the calling process (the
options, the source and every file it names, the mount point).  Without ``-f`` the
process then forks; the child starts a new session, mounts, and reports "mounted" or
the error to the parent through a pipe before it detaches from the terminal and
serves.  The parent exits 0 only once the filesystem is mounted; otherwise it prints
the child's error, reaps it and exits 32.  ``SIGTERM``, ``SIGINT``, ``SIGHUP``, ``umount DIR`` and
``fusermount3 -u DIR`` end the daemon with a clean unmount and exit status 0.

User errors are one line, ``mount.vmemfs: error: ...``, with exit status 1 (usage,
options, the source) or 32 (the mount itself), as mount(8) documents for helpers.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import logging.handlers
import os
import re
import signal
import stat
import sys
from collections.abc import Iterator, Sequence

import pyfuse3
import trio

import vmemfs
from vmemfs import ctl, tree
from vmemfs.errors import one_line, os_error_message
from vmemfs.formats import process, symbols
from vmemfs.fs import Operations
from vmemfs.memmap import MemoryMap
from vmemfs.options import (
    EXIT_MOUNT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PROGRAM,
    SUBTYPE,
    USAGE,
    Invocation,
    MountError,
    UsageError,
    parse_command_line,
)
from vmemfs.tree import MountState

__all__ = ["MountError", "UsageError", "check_mountpoint", "fuse_options", "main",
           "parse_command_line"]

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

log = logging.getLogger(__name__)


# -------------------------------------------------------------------- the source


def _loose_file_problem(path: str) -> str | None:
    """Why root should not trust ``path`` (writable by group/others, owned by another
    non-root user), or ``None``."""
    try:
        info = os.stat(path)
    except OSError:
        return None  # reported by whoever opens it
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISCHR(info.st_mode) \
            and not stat.S_ISBLK(info.st_mode):
        return f"{path} is writable by group or others (chmod go-w {path})"
    if info.st_uid not in (0, os.getuid()):
        return f"{path} is owned by uid {info.st_uid}, not by root"
    return None


def check_trusted(paths: Sequence[str]) -> None:
    """As root, refuse files another user could change (SPEC §5.3).

    A file writable by group or others, or owned by a user other than root, would let
    that user show any file root can read to the mount's readers.  Device files are
    judged by owner only (``/dev/sda`` is group-writable by design).

    :raises UsageError: naming the first such file.
    """
    if os.geteuid() != 0:
        return
    for path in paths:
        problem = _loose_file_problem(path)
        if problem:
            raise UsageError(f"refusing to mount as root: {problem}")


def open_map(invocation: Invocation) -> MemoryMap:
    """Open the source through :func:`vmemfs.open`, with the options applied.

    :raises UsageError: for a missing, unreadable or malformed source, an option that
        does not apply to it, or (as root) a source that is not trusted.
    """
    source = invocation.source
    live = process.parse_process_spec(source) is not None
    if live and invocation.options.allow_other:
        raise UsageError(f"{source}: allow_other is refused for a live process (it would "
                         "show the process's memory to every user)")
    if not live:
        check_trusted([source])
    if invocation.options.symbols:
        check_trusted([symbols.parse_symbols_option(invocation.options.symbols)[0]])
    try:
        memory_map = vmemfs.open(source, **invocation.options.source_options())
    except OSError as error:  # the source, or a file a map file names
        raise UsageError(os_error_message(error, source)) from None
    except ValueError as error:  # FormatError included
        raise UsageError(one_line(error)) from None
    named = sorted(set(memory_map.file_names()) - {os.path.abspath(source)})
    try:
        check_trusted(named)
    except UsageError:
        memory_map.close()
        raise
    return memory_map


def choose_base(invocation: Invocation, memory_map: MemoryMap,
                default: int) -> tuple[int, str]:
    """The base to mount with, and why: the option, the map file's ``base``, or the rule
    of SPEC §4.1."""
    if invocation.options.base is not None:
        return invocation.options.base, "the base= option"
    if memory_map.preferred_base is not None:
        return memory_map.preferred_base, "the map file"
    return default, "the lowest extent rounded down to a multiple of 2**32"


# -------------------------------------------------------------------- the mount point


def _mount_entries() -> Iterator[tuple[str, str, str]]:
    """``(mount point, filesystem type, "major:minor")`` of every mount this process sees."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            if " - " not in line or len(fields) < 5:
                continue
            after = line.split(" - ", 1)[1].split()
            yield _unescape(fields[4]), after[0] if after else "", fields[2]


def _unescape(path: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, ``\\134`` for a backslash)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), path)


def check_mountpoint(mountpoint: str) -> str:
    """The absolute mount point, once it is known to be an existing directory on which
    no FUSE filesystem is mounted.

    :raises MountError: otherwise, in one line.
    """
    try:
        info = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist") from None
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            raise _dead_fuse(mountpoint, error) from None
        raise MountError(f"mount point {mountpoint}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise MountError(f"mount point {mountpoint} is not a directory")
    absolute = os.path.realpath(mountpoint)
    for target, filesystem_type, _ in _mount_entries():
        if target == absolute and filesystem_type.startswith("fuse"):
            try:
                os.statvfs(absolute)
            except OSError as error:
                if error.errno == errno.ENOTCONN:
                    raise _dead_fuse(mountpoint, error) from None
            raise MountError(f"{mountpoint} is already mounted ({filesystem_type})")
    return absolute


def _dead_fuse(mountpoint: str, error: OSError) -> MountError:
    return MountError(f"mount point {mountpoint}: {error.strerror} (a FUSE daemon died "
                      f"there: fusermount3 -u {mountpoint})")


# -------------------------------------------------------------------- libfuse


def _escape_option_value(value: str) -> str:
    """Escape what libfuse splits options on, and write each byte outside ASCII as
    ``\\xNN``: pyfuse3 hands options to libfuse as ASCII only (a source path such as
    ``mémoire.core`` would otherwise fail the mount with ``UnicodeEncodeError``)."""
    value = os.fsencode(value).decode("ascii", "backslashreplace")
    return value.replace("\\", "\\\\").replace(",", "\\,")


def fuse_options(invocation: Invocation) -> set[str]:
    """The options handed to libfuse: never one of vmemfs's own (SPEC §5.2)."""
    options = invocation.options
    source = invocation.source
    live = process.parse_process_spec(source) is not None
    fsname = options.fsname or (source if live else os.path.abspath(source))
    result = {f"fsname={_escape_option_value(fsname)}", f"subtype={SUBTYPE}",
              "default_permissions"}
    if options.allow_other:
        result.add("allow_other")
    if options.auto_unmount:
        result.add("auto_unmount")
    result.update(options.kernel_flags)
    return result


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what is written to file descriptor 2 (libfuse's, fusermount3's messages)
    in the block; the list holds the text's lines afterwards."""
    lines: list[str] = []
    sys.stderr.flush()
    capture = os.memfd_create("vmemfs-stderr", os.MFD_CLOEXEC)
    saved = os.dup(2)
    try:
        os.dup2(capture, 2, inheritable=True)
        try:
            yield lines
        finally:
            os.dup2(saved, 2, inheritable=True)
            text = os.pread(capture, 65536, 0).decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)
        os.close(capture)


def mount(operations: Operations, mountpoint: str, options: set[str]) -> None:
    """Mount (``pyfuse3.init``).

    :raises MountError: with libfuse's or fusermount3's own message where it gave one.
    """
    with _stderr_captured() as messages:
        try:
            pyfuse3.init(operations, mountpoint, options)
        except RuntimeError as error:
            failure: str | None = str(error)
        else:
            failure = None
    if failure is not None:
        detail = messages[-1] if messages else failure
        for prefix in ("fuse: ", "fusermount3: "):
            detail = detail.removeprefix(prefix)
        raise MountError(f"cannot mount on {mountpoint}: {detail}")
    for message in messages:
        log.warning("%s", message)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

MAX_TASKS = 8
"""FUSE worker tasks: while one request waits (a ``find/`` read waiting for its scan),
others are answered.  Requests that do not wait are served one after another whatever
this number."""


READAHEAD_KB = 1024
"""Readahead for the page-cached files (``extents/*``): one 1 MiB request instead of eight
of the kernel's default 128 KiB."""


def _readahead_setting(mountpoint: str) -> str | None:
    """The sysfs file holding the readahead of the vmemfs mount on ``mountpoint``; ``None``
    unless running as root with that mount found."""
    devices = [device for target, kind, device in _mount_entries()
               if target == mountpoint and kind == f"fuse.{SUBTYPE}"]
    if os.geteuid() != 0 or not devices:
        return None
    return f"/sys/class/bdi/{devices[-1]}/read_ahead_kb"


def _readahead_kb(path: str) -> int | None:
    """The readahead in ``path``, in KiB; ``None`` if it cannot be read (logged)."""
    try:
        with open(path) as setting:
            return int(setting.read())
    except (OSError, ValueError) as error:
        log.debug("cannot read the readahead: %s", error)
        return None


def _raise_readahead_now(path: str) -> bool:
    """Raise the readahead in ``path`` to :data:`READAHEAD_KB` unless it is that or more;
    ``False`` if the setting cannot be read or written (logged)."""
    current = _readahead_kb(path)
    if current is None:
        return False
    return current >= READAHEAD_KB or _write_readahead(path)


def _write_readahead(path: str) -> bool:
    """Write :data:`READAHEAD_KB` to ``path``; ``False`` if it cannot be written (logged)."""
    try:
        with open(path, "w") as setting:
            setting.write(str(READAHEAD_KB))
    except OSError as error:
        log.debug("cannot raise the readahead: %s", error)
        return False
    return True


async def _raise_readahead(path: str | None) -> None:
    """As root, raise the mount's readahead to :data:`READAHEAD_KB` (best effort).

    The kernel lowers the readahead to what the FUSE INIT reply carries, and that reply
    goes out when the loop starts.  The first ``open`` raises it before it is answered
    (:attr:`Operations.before_first_open`: a file takes its readahead when opened);
    this task raises it too, after a pause, for a mount nobody opens a file in yet, and
    again if it was lowered meanwhile.  A larger value set by the administrator is kept.
    """
    if path is None:
        return
    settled = 0
    while settled < 3:
        await trio.sleep(0.05)
        current = _readahead_kb(path)
        if current is None:
            return
        if current >= READAHEAD_KB:
            settled += 1
        elif not _write_readahead(path):
            return
        else:
            settled = 0


async def _serve(mountpoint: str, readahead: str | None) -> None:
    """Run the FUSE loop until unmounted, or until ``SIGTERM``/``SIGINT`` ends it."""
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

        async def stop_on_signal() -> None:
            async for number in signals:
                log.info("%s: unmounting", signal.Signals(number).name)
                pyfuse3.terminate()
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal)
            nursery.start_soon(_raise_readahead, readahead)
            await pyfuse3.main(min_tasks=1, max_tasks=MAX_TASKS)
            nursery.cancel_scope.cancel()


def serve(operations: Operations, mountpoint: str) -> int:
    """Serve ``operations``, mounted on ``mountpoint``, until the mount ends, then unmount;
    the exit status."""
    status = EXIT_OK
    try:
        readahead = _readahead_setting(mountpoint)
        if readahead is not None:
            operations.before_first_open = functools.partial(_raise_readahead_now, readahead)
        trio.run(_serve, mountpoint, readahead)
    except BaseException:
        log.exception("the FUSE loop failed")
        status = EXIT_MOUNT_FAILED
    finally:
        pyfuse3.close(unmount=True)
    log.info("unmounted")
    return status


def _configure_logging(*, foreground: bool, debug: bool) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROGRAM}: %(levelname)s: %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(
            f"{PROGRAM}[%(process)d]: %(levelname)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for number in (0, 1, 2):
        os.dup2(null, number)
    if null > 2:
        os.close(null)


# -------------------------------------------------------------------- the lifecycle


def _prepare(invocation: Invocation) -> tuple[Operations, str, set[str]]:
    """Load and check everything before mounting; messages for the user on stderr."""
    memory_map = open_map(invocation)
    mountpoint = check_mountpoint(invocation.mountpoint)
    state = MountState(memory_map, holes=invocation.options.holes,
                       cache=invocation.options.cache)
    base, reason = choose_base(invocation, memory_map, state.default_base)
    try:
        state.set_base(base)
    except ctl.ControlValueError as error:
        raise UsageError(f"{invocation.source}: {error}") from None
    if not state.extents:
        _say(f"{invocation.source} maps nothing: the mount is empty")
    elif base and invocation.options.base is None:
        _say(f"base {base:#018x} ({reason}): mem offset 0 is address {base:#x}")
    # A live process's memory is for the mounting user alone (modes 0400/0500).
    operations = Operations(tree.build(state), uid=os.getuid(), gid=os.getgid(),
                            private=memory_map.volatile)
    return operations, mountpoint, fuse_options(invocation)


def _say(message: str) -> None:
    print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)


def _run_foreground(invocation: Invocation, operations: Operations, mountpoint: str,
                    fuse_opts: set[str]) -> int:
    _configure_logging(foreground=True, debug=invocation.options.debug)
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    mount(operations, mountpoint, fuse_opts)
    if invocation.verbose:
        _say(f"mounted {invocation.source} on {mountpoint} (pid {os.getpid()})")
    return serve(operations, mountpoint)


def _run_detached(invocation: Invocation, operations: Operations, mountpoint: str,
                  fuse_opts: set[str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # never returns: the parent's code must not run on in the child
        status = EXIT_MOUNT_FAILED
        try:
            os.close(reader)
            status = _child(invocation, operations, mountpoint, fuse_opts, writer)
        except BaseException:
            log.exception("the daemon failed")
        finally:
            os._exit(status)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 4096):
        chunks.append(chunk)
    os.close(reader)
    report = b"".join(chunks).decode("utf-8", "replace")
    if report == "ok":
        if invocation.verbose:
            _say(f"mounted {invocation.source} on {mountpoint} (pid {child})")
        return EXIT_OK
    os.waitpid(child, 0)
    raise MountError(report or "the mount process ended before mounting")


def _child(invocation: Invocation, operations: Operations, mountpoint: str,
           fuse_opts: set[str], report: int) -> int:
    """The daemon: mount, report to the parent, detach, serve.  Returns the exit status."""
    try:
        os.setsid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        mount(operations, mountpoint, fuse_opts)
    except MountError as error:
        os.write(report, str(error).encode("utf-8", "replace"))
        return EXIT_MOUNT_FAILED
    except BaseException as error:
        os.write(report, f"{type(error).__name__}: {one_line(error)}".encode())
        return EXIT_MOUNT_FAILED
    os.chdir("/")
    _detach_stdio()
    _configure_logging(foreground=False, debug=invocation.options.debug)
    os.write(report, b"ok")
    os.close(report)
    return serve(operations, mountpoint)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mount.vmemfs`` (and ``mount.fuse.vmemfs``) command; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE, end="")
        return EXIT_OK
    try:
        invocation = parse_command_line(arguments)
        for warning in invocation.warnings:
            _say(f"warning: {warning}")
        operations, mountpoint, fuse_opts = _prepare(invocation)
        if invocation.options.foreground:
            return _run_foreground(invocation, operations, mountpoint, fuse_opts)
        return _run_detached(invocation, operations, mountpoint, fuse_opts)
    except UsageError as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except MountError as error:
        _say(f"error: {error}")
        return EXIT_MOUNT_FAILED
