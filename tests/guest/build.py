"""Build real memory dumps of a QEMU guest running Debian's own kernel, once per machine.

The guest: Debian's ``linux-image-<abi>-amd64`` (fetched with ``apt-get download`` and
unpacked into the cache, never installed), an initramfs of busybox-static and the kernel's
``qemu_fw_cfg`` module (see ``init.sh``), booted under TCG with ``-device vmcoreinfo``.
When it is ready it is paused once (QMP ``stop``) and every dump is taken from that one
state; makedumpfile then rewrites them. The folder::

    ${VMEMFS_TEST_CACHE:-/var/cache/vmemfs-tests}/guest-r<RECIPE>-<abi>-<memory>/
        guest.elf              dump-guest-memory, ELF, physical addresses (paging=false)
        guest-paging.elf       dump-guest-memory paging=true: loads at virtual addresses
        guest.kdump-zlib.flat  dump-guest-memory format kdump-zlib (flattened layout)
        guest.kdump-zlib       makedumpfile -R of the flattened file (standard layout)
        guest.kdump-lzo        makedumpfile -l -d 0 of guest.elf (re-laid out, see below)
        guest.kdump-d31        makedumpfile -c -d 31 of the same: excluded pages
        guest.lime             LiME, version 1: the guest's "System RAM" ranges of guest.elf
        kallsyms               the guest's /proc/kallsyms (root, nokaslr: System.map's)
        vmcoreinfo             the VMCOREINFO note of guest.elf
        console.log            the serial console; initramfs.cpio; manifest.json

Debian's makedumpfile 1.7.2 cannot read QEMU 7.2's ELF as written (section headers sit
between the ELF header and the program headers, and ``e_ehsize`` is 8), so it is fed a
copy with the same loads and notes whose program headers follow the ELF header.

It is built in ``<folder>.tmp-<pid>`` and renamed into place, under an ``flock`` on
``<cache>/.lock`` so concurrent test runs build it once. From the repository root::

    python -m tests.guest.build --memory 128M     # builds if missing, prints the folder
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import lzma
import mmap
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import cpio, elf64

RECIPE = 1
"""Bump when anything below changes what is built: the folder name changes with it."""

CACHE_ENV = "VMEMFS_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/vmemfs-tests")
HERE = Path(__file__).resolve().parent

KERNEL_METAPACKAGE = "linux-image-amd64"
MODULES = ("qemu_fw_cfg",)
APPEND = "console=ttyS0 panic=0 nokaslr"
TOOLS = (("qemu-system-x86_64", "qemu-system-x86"), ("makedumpfile", "makedumpfile"),
         ("readelf", "binutils"), ("dpkg-deb", "dpkg"))
BUSYBOX = Path("/bin/busybox")

READY = b"vmemfs-guest: ready\n"
PREFIX = "vmemfs-guest: "
KALLSYMS_END = b"vmemfs-guest: kallsyms end\n"

FILES = {
    "elf": "guest.elf",
    "paging_elf": "guest-paging.elf",
    "kdump_flat": "guest.kdump-zlib.flat",
    "kdump_zlib": "guest.kdump-zlib",
    "kdump_lzo": "guest.kdump-lzo",
    "kdump_d31": "guest.kdump-d31",
    "lime": "guest.lime",
    "kallsyms": "kallsyms",
    "vmcoreinfo": "vmcoreinfo",
    "console": "console.log",
    "initramfs": "initramfs.cpio",
}
"""Field name (of ``guestdumps.Guest``) to file name in the guest folder."""

LIME_MAGIC = 0x4C694D45
START_KERNEL_MAP = 0xFFFFFFFF80000000
"""x86-64 ``__START_KERNEL_map``: kernel image virtual = physical + this - phys_base."""

_GIB = 1 << 30


class GuestUnavailable(Exception):
    """QEMU, its tools or Debian's kernel package cannot be installed or run on this
    machine (the message says why). Every other failure of a build is an error."""


@dataclass
class Timings:
    """Seconds spent in each step of a build, in the order they ran."""

    steps: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - start, 3)


# --- names and places -------------------------------------------------------------------

def parse_memory(text: str) -> tuple[str, int]:
    """Return the canonical QEMU ``-m`` value ("128M", "4G") and its size in bytes.

    :raises ValueError: unless ``text`` is a whole number of MiB or GiB ("128M", "4G",
        "4096M"), at least 64 MiB.
    """
    match = re.fullmatch(r"(\d+)([MG])", text.strip().upper())
    if match is None:
        raise ValueError(f"memory size {text!r}: expected a number of MiB or GiB like 128M, 4G")
    mib = int(match.group(1)) * (1024 if match.group(2) == "G" else 1)
    if mib < 64:
        raise ValueError(f"memory size {text!r}: the guest needs at least 64M")
    canonical = f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"
    return canonical, mib << 20


def cache_root() -> Path:
    """The cache folder: ``$VMEMFS_TEST_CACHE``, else ``/var/cache/vmemfs-tests``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def guest_folder(root: Path, kernel_abi: str, memory: str) -> Path:
    """Where the guest of this recipe, kernel ABI ("6.1.0-57-amd64") and memory lives."""
    return root / f"guest-r{RECIPE}-{kernel_abi}-{memory}"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished build (its manifest is written last)."""
    return (folder / "manifest.json").is_file()


# --- commands ---------------------------------------------------------------------------

def _run(argv: list[str], *, timeout: float, cwd: Path | None = None,
         stdin: Any = subprocess.DEVNULL) -> str:
    """Run ``argv``; return its stdout.

    :raises RuntimeError: naming the command and its last stderr lines if it fails or
        runs past ``timeout`` seconds.
    """
    try:
        result = subprocess.run(argv, cwd=cwd, stdin=stdin, capture_output=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{' '.join(argv)}: still running after {timeout:.0f} s") from error
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: "
                           + " / ".join(tail))
    return result.stdout.decode(errors="replace")


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_install(packages: list[str]) -> None:
    """Install Debian ``packages`` (no recommends), updating the lists once if needed.

    :raises GuestUnavailable: if not root or apt cannot install them.
    """
    if not _is_root():
        raise GuestUnavailable(f"not installed: {' '.join(packages)} (install them as root)")
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "-q",
               "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        result = subprocess.run(install, capture_output=True, env=env,
                                stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            return
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True,
                           stdin=subprocess.DEVNULL)
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    raise GuestUnavailable(f"apt-get install {' '.join(packages)} failed: "
                           + (lines[-1] if lines else f"exit status {result.returncode}"))


def ensure_tools() -> None:
    """Install what the build runs (qemu-system-x86, makedumpfile, busybox-static,
    binutils) if missing, and check that QEMU starts.

    :raises GuestUnavailable: if they cannot be installed or QEMU does not run.
    """
    if shutil.which("apt-get") is None and shutil.which("qemu-system-x86_64") is None:
        raise GuestUnavailable("no apt-get and no qemu-system-x86_64: not a Debian machine")
    missing = [package for tool, package in TOOLS if shutil.which(tool) is None]
    if not elf64.is_static_executable(BUSYBOX):
        missing.append("busybox-static")
    if missing:
        _apt_install(missing)
    try:
        _run(["qemu-system-x86_64", "-version"], timeout=60)
    except (OSError, RuntimeError) as error:
        raise GuestUnavailable(f"qemu-system-x86_64 does not run: {error}") from error


def resolve_kernel_package(root: Path) -> str:
    """Return the kernel package that Debian's ``linux-image-amd64`` depends on now
    ("linux-image-6.1.0-57-amd64").

    The answer is kept in ``<root>/kernel-package.json`` until apt's lists change, so a
    cached build is found without running apt-cache (which takes about a second).

    :raises GuestUnavailable: if apt knows no such package.
    """
    lists = Path("/var/lib/apt/lists")
    memo = root / "kernel-package.json"

    def lists_stamp() -> int:
        return lists.stat().st_mtime_ns if lists.exists() else 0

    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(memo.read_text())
        if saved["lists_mtime_ns"] == lists_stamp():
            return str(saved["package"])
    if shutil.which("apt-cache") is None:
        raise GuestUnavailable("apt-cache is not installed: the guest runs Debian's kernel")
    package = None
    for attempt in range(2):
        depends = subprocess.run(["apt-cache", "depends", KERNEL_METAPACKAGE],
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL)
        found = re.search(r"Depends: (linux-image-\S+-amd64)\b", depends.stdout)
        if found:
            package = found.group(1)
            break
        if attempt == 0 and _is_root():
            subprocess.run(["apt-get", "update", "-q"], capture_output=True,
                           stdin=subprocess.DEVNULL)
    if package is None:
        raise GuestUnavailable(f"apt knows no {KERNEL_METAPACKAGE} (run apt-get update?)")
    with contextlib.suppress(OSError):
        temporary = memo.with_suffix(f".tmp-{os.getpid()}")
        temporary.write_text(json.dumps({"package": package,
                                         "lists_mtime_ns": lists_stamp()}))
        temporary.replace(memo)
    return package


@dataclass(frozen=True)
class Kernel:
    """Debian's kernel package unpacked in the cache."""

    package: str
    abi: str
    package_version: str
    tree: Path

    @property
    def vmlinuz(self) -> Path:
        return self.tree / "boot" / f"vmlinuz-{self.abi}"

    @property
    def modules(self) -> Path:
        return self.tree / "lib" / "modules" / self.abi


def ensure_kernel(root: Path, package: str) -> Kernel:
    """Download ``package`` with ``apt-get download`` and unpack it with ``dpkg-deb -x``
    into ``<root>/kernel-<abi>/`` (once; nothing is installed). Call under the lock.

    :raises GuestUnavailable: if the package cannot be downloaded.
    """
    abi = package.removeprefix("linux-image-")
    final = root / f"kernel-{abi}"
    if not (final / "package-version").is_file():
        work = Path(tempfile.mkdtemp(prefix=f"kernel-{abi}.tmp-", dir=root))
        try:
            try:
                _run(["apt-get", "download", "-q", package], cwd=work, timeout=900)
            except (OSError, RuntimeError) as error:
                raise GuestUnavailable(f"cannot download {package} (apt-get update may "
                                       f"help): {error}") from error
            deb = next(work.glob("*.deb"))
            tree = work / "tree"
            _run(["dpkg-deb", "-x", str(deb), str(tree)], timeout=600)
            version = _run(["dpkg-deb", "-f", str(deb), "Version"], timeout=60).strip()
            (tree / "package-version").write_text(version + "\n")
            tree.chmod(0o755)
            tree.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    kernel = Kernel(package, abi, (final / "package-version").read_text().strip(), final)
    if not kernel.vmlinuz.is_file():
        raise RuntimeError(f"{package}: no {kernel.vmlinuz.name} in the package")
    return kernel


# --- the initramfs ----------------------------------------------------------------------

def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def module_image(path: Path) -> bytes:
    """The ELF object of a kernel module file (``.ko``, or ``.ko.xz`` decompressed).

    :raises RuntimeError: for a compression this build cannot undo.
    """
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    raise RuntimeError(f"{path}: compressed module format not supported")


def module_depends(image: bytes) -> list[str]:
    """The names in a module's ``depends=`` modinfo field (what ``modinfo -F depends``
    says), normalized to underscores."""
    info = elf64.section(image, ".modinfo") or b""
    for entry in info.split(b"\0"):
        if entry.startswith(b"depends="):
            return [name.replace("-", "_") for name in entry[8:].decode().split(",") if name]
    return []


def modules_in_load_order(modules: Path, names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Return (file name, ELF object) of each module in ``names`` and of its dependencies,
    dependencies first, each once.

    :raises RuntimeError: if a module is not in the tree under ``modules``.
    """
    index = {}
    for folder, _, files in os.walk(modules):
        for name in files:
            if ".ko" in name:
                index[_module_name(Path(name))] = Path(folder) / name
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            raise RuntimeError(f"module {name} is not in {modules}")
        image = module_image(index[name])
        for dependency in module_depends(image):
            visit(dependency)
        ordered.append((f"{name}.ko", image))

    for name in names:
        visit(name)
    return ordered


def initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """The guest's initramfs (newc cpio): busybox, ``init.sh`` as ``/init``, the modules
    in ``/lib/modules`` with their load order, and ``/dev/console``."""
    entries = [cpio.directory(name) for name in ("bin", "dev", "proc", "sys", "lib",
                                                  "lib/modules")]
    entries += [
        cpio.char_device("dev/console", 5, 1),
        cpio.file("bin/busybox", busybox, 0o755),
        cpio.file("init", (HERE / "init.sh").read_bytes(), 0o755),
    ]
    entries += [cpio.file(f"lib/modules/{name}", image) for name, image in modules]
    order = "".join(f"{name}\n" for name, _ in modules).encode()
    entries.append(cpio.file("lib/modules/load-order", order))
    return cpio.newc_archive(entries)


# --- running the guest ------------------------------------------------------------------

class Qmp:
    """A QMP connection (JSON lines); events are skipped."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        connection.settimeout(60)
        self._stream = connection.makefile("rwb")
        self.greeting = self._receive()["QMP"]
        self.command("qmp_capabilities")

    def _receive(self) -> dict[str, Any]:
        while True:
            line = self._stream.readline()
            if not line:
                raise RuntimeError("QMP: QEMU closed the connection")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message

    def command(self, name: str, timeout: float = 60, **arguments: Any) -> Any:
        """Run one command and return its ``return`` value.

        :raises RuntimeError: with QEMU's error text, or after ``timeout`` seconds.
        """
        self._connection.settimeout(timeout)
        self._stream.write(json.dumps({"execute": name, "arguments": arguments}).encode()
                           + b"\n")
        self._stream.flush()
        try:
            reply = self._receive()
        except TimeoutError as error:
            raise RuntimeError(f"QMP {name}: no reply after {timeout:.0f} s") from error
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        self._stream.close()
        self._connection.close()


@dataclass
class GuestRun:
    """What one boot produced besides the dump files."""

    console: str
    kallsyms: bytes
    qemu_version: str
    qemu_package: str
    argv: list[str]
    dump_formats: list[str]


def _dump_timeout(memory_bytes: int) -> float:
    return 300 + 120 * memory_bytes / _GIB


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_until_eof(fd: int, seconds: float) -> bytes:
    """What ``fd`` gives until its end, or until ``seconds`` have passed."""
    data = bytearray()
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def run_guest(kernel: Kernel, initrd: Path, memory: str, memory_bytes: int, out: Path,
              timings: Timings, boot_timeout: float = 600) -> GuestRun:
    """Boot the guest under TCG, wait for its ready line, pause it, and write the four
    ``dump-guest-memory`` files into ``out`` from that one paused state.

    :raises RuntimeError: if QEMU exits, the guest is not ready within ``boot_timeout``
        seconds, or a dump fails (the console's last lines are in the message).
    """
    sockets = Path(tempfile.mkdtemp(prefix="vmemfs-qmp-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ttys1 = out / "ttyS1.raw"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-smp", "1",
            "-m", memory, "-nodefaults", "-display", "none", "-no-reboot",
            "-device", "vmcoreinfo",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", APPEND,
            "-serial", "stdio", "-serial", f"file:{ttys1}",
            "-chardev", f"socket,id=qmp,path={sockets / 'qmp.sock'}",
            "-mon", "chardev=qmp,mode=control"]
    console = bytearray()
    qmp: Qmp | None = None
    process: subprocess.Popen[bytes] | None = None
    stderr = out / "qemu.stderr"
    try:
        listener.bind(str(sockets / "qmp.sock"))
        listener.listen(1)
        with timings.step("boot"), open(stderr, "wb") as errors:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=errors)
            assert process.stdout is not None
            output = process.stdout.fileno()
            deadline = time.monotonic() + boot_timeout
            while qmp is None or READY not in console:
                waiting = [output] if qmp is not None else [output, listener.fileno()]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"the guest was not ready after {boot_timeout:.0f} s; "
                                       f"console:\n{_tail(console.decode(errors='replace'))}")
                readable, _, _ = select.select(waiting, [], [], remaining)
                if listener.fileno() in readable:
                    connection, _ = listener.accept()
                    qmp = Qmp(connection)
                if output in readable:
                    chunk = os.read(output, 1 << 16)
                    if not chunk:
                        raise RuntimeError(
                            f"QEMU exited with {process.wait()} before the guest was ready: "
                            f"{_tail(stderr.read_text(errors='replace'), 5)}; console:\n"
                            f"{_tail(console.decode(errors='replace'))}")
                    console += chunk.replace(b"\r", b"")
        version = qmp.greeting["version"]
        formats = qmp.command("query-dump-guest-memory-capability")["formats"]
        timeout = _dump_timeout(memory_bytes)
        with timings.step("stop"):
            qmp.command("stop")
        for name, paging, dump_format in (("elf", False, "elf"), ("paging_elf", True, "elf"),
                                          ("kdump_flat", False, "kdump-zlib")):
            with timings.step(f"dump {FILES[name]}"):
                qmp.command("dump-guest-memory", timeout=timeout, paging=paging,
                            protocol=f"file:{out / FILES[name]}", format=dump_format)
        qmp.command("quit")
        console += _read_until_eof(output, 60).replace(b"\r", b"")
        process.wait(timeout=60)
    finally:
        if qmp is not None:
            qmp.close()
        listener.close()
        shutil.rmtree(sockets, ignore_errors=True)
        if process is not None:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    kallsyms = ttys1.read_bytes()
    ttys1.unlink()
    stderr.unlink()
    qemu = version["qemu"]
    return GuestRun(console.decode(errors="replace"), kallsyms,
                    f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}", version["package"],
                    argv, list(formats))


# --- what the console and the dumps say -------------------------------------------------

def console_lines(console: str, tag: str) -> list[str]:
    """The init script's lines ``vmemfs-guest: <tag>: ...`` on the console, text after it."""
    start = f"{PREFIX}{tag}: "
    return [line[len(start):] for line in console.splitlines() if line.startswith(start)]


def system_ram(console: str) -> list[tuple[int, int]]:
    """The top-level ``System RAM`` ranges of the guest's /proc/iomem as [start, end)."""
    ranges = []
    for line in console_lines(console, "iomem"):
        found = re.fullmatch(r"([0-9a-f]+)-([0-9a-f]+) : System RAM", line)
        if found:
            ranges.append((int(found.group(1), 16), int(found.group(2), 16) + 1))
    return ranges


def vmcoreinfo_fields(text: str) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a VMCOREINFO text."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def kallsyms_address(kallsyms: bytes, name: str) -> int | None:
    """The address of the first kallsyms line naming the kernel symbol ``name``."""
    found = re.search(rb"^([0-9a-f]+) \S " + re.escape(name.encode()) + rb"$", kallsyms,
                      re.MULTILINE)
    return int(found.group(1), 16) if found else None


def write_lime(elf: Path, ranges: list[tuple[int, int]], destination: Path) -> None:
    """Write a LiME (version 1) file of the physical ``ranges`` [start, end), each copied
    from the ``PT_LOAD`` of the physical ELF ``elf`` that covers it.

    :raises RuntimeError: if a range is not inside one load.
    """
    _, phdrs = elf64.read_program_headers(elf)
    with open(elf, "rb") as source, open(destination, "wb") as lime:
        for start, end in ranges:
            covering = [phdr for phdr in phdrs if phdr.type == elf64.PT_LOAD
                        and phdr.paddr <= start and end <= phdr.paddr + phdr.filesz]
            if not covering:
                raise RuntimeError(f"{elf}: no load covers RAM {start:#x}-{end:#x}")
            lime.write(struct.pack("<IIQQ8x", LIME_MAGIC, 1, start, end - 1))
            lime.flush()
            elf64.copy_range(source.fileno(), lime.fileno(),
                              covering[0].offset + start - covering[0].paddr, end - start)
            lime.seek(0, os.SEEK_END)


def makedumpfile_version() -> str:
    """makedumpfile's version ("1.7.2")."""
    result = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True)
    found = re.search(r"version ([\w.]+)", result.stdout + result.stderr)
    return found.group(1) if found else "unknown"


def run_makedumpfile(folder: Path, memory_bytes: int, timings: Timings) -> None:
    """Write guest.kdump-zlib (``-R`` of the flattened file), guest.kdump-lzo (``-l -d 0``)
    and guest.kdump-d31 (``-c -d 31``) from the dumps in ``folder``.

    :raises RuntimeError: if makedumpfile fails or runs too long.
    """
    timeout = 120 + 120 * memory_bytes / _GIB
    with (timings.step(f"makedumpfile -R {FILES['kdump_zlib']}"),
          open(folder / FILES["kdump_flat"], "rb") as flat):
        # -R waits forever for more input on an empty stream: the timeout guards it.
        _run(["makedumpfile", "-R", str(folder / FILES["kdump_zlib"])], stdin=flat,
             timeout=timeout)
    relaid = folder / "relaid.elf"
    try:
        with timings.step("re-lay out guest.elf"):
            elf64.relayout_core(folder / FILES["elf"], relaid)
        with timings.step(f"makedumpfile -l {FILES['kdump_lzo']}"):
            _run(["makedumpfile", "-l", "-d", "0", str(relaid),
                  str(folder / FILES["kdump_lzo"])], timeout=timeout)
        with timings.step(f"makedumpfile -d 31 {FILES['kdump_d31']}"):
            _run(["makedumpfile", "-c", "-d", "31", str(relaid),
                  str(folder / FILES["kdump_d31"])], timeout=timeout)
    finally:
        relaid.unlink(missing_ok=True)


# --- checks -----------------------------------------------------------------------------

def _contains(path: Path, needle: bytes) -> bool:
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(needle) >= 0


def verify(folder: Path, manifest: dict[str, Any]) -> None:
    """Check that every file of a build looks like what it claims to be.

    :raises RuntimeError: listing every problem found.
    """
    problems = []
    path = {name: folder / file_name for name, file_name in FILES.items()}
    layout = _run(["readelf", "-lW", str(path["elf"])], timeout=120)
    if "Elf file type is CORE" not in layout or " LOAD " not in layout:
        problems.append(f"readelf -lW {FILES['elf']}: no CORE file with loads")
    header = _run(["readelf", "-hW", str(path["paging_elf"])], timeout=120)
    counted = re.search(r"Number of program headers:\s+(\d+)(?: \((\d+)\))?", header)
    if counted is None:
        problems.append(f"readelf -hW {FILES['paging_elf']}: no program header count")
    signatures = {"kdump_zlib": b"KDUMP   ", "kdump_lzo": b"KDUMP   ",
                  "kdump_d31": b"KDUMP   ", "kdump_flat": b"makedumpfile\0",
                  "lime": struct.pack("<II", LIME_MAGIC, 1)}
    for name, signature in signatures.items():
        with open(path[name], "rb") as file:
            if file.read(len(signature)) != signature:
                problems.append(f"{FILES[name]}: does not start with {signature!r}")
    if path["kdump_d31"].stat().st_size >= path["kdump_zlib"].stat().st_size:
        problems.append(f"{FILES['kdump_d31']} is not smaller than {FILES['kdump_zlib']}")
    banner = manifest["banner"].encode()
    if not banner.startswith(b"Linux version "):
        problems.append(f"console banner {manifest['banner']!r} is not a Linux banner")
    for name in ("elf", "lime"):
        if not _contains(path[name], banner + b"\n"):
            problems.append(f"{FILES[name]}: the console's banner is not in its bytes")
    kallsyms = path["kallsyms"].read_bytes()
    info = vmcoreinfo_fields(path["vmcoreinfo"].read_text())
    if kallsyms_address(kallsyms, "linux_banner") is None:
        problems.append("kallsyms: no linux_banner")
    if info.get("OSRELEASE") != manifest["kernel"]["abi"]:
        problems.append(f"vmcoreinfo: OSRELEASE {info.get('OSRELEASE')!r} is not the kernel's")
    top = kallsyms_address(kallsyms, "init_top_pgt")
    if top is None or f"{top:x}" != info.get("SYMBOL(init_top_pgt)"):
        problems.append("kallsyms: init_top_pgt differs from VMCOREINFO's (KASLR?)")
    if problems:
        raise RuntimeError(f"{folder}: " + "; ".join(problems))


# --- the build --------------------------------------------------------------------------

@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<root>/.lock`` (waits for another build)."""
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _make_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GuestUnavailable(f"cannot create the cache folder {root}: {error}") from error
    if not os.access(root, os.W_OK):
        raise GuestUnavailable(f"the cache folder {root} is not writable "
                               f"(set {CACHE_ENV} to another folder)")


def build_into(folder: Path, kernel: Kernel, memory: str, memory_bytes: int,
               timings: Timings) -> dict[str, Any]:
    """Build every file into the empty ``folder``; return the manifest (not yet written)."""
    with timings.step("initramfs"):
        modules = modules_in_load_order(kernel.modules, MODULES)
        (folder / FILES["initramfs"]).write_bytes(initramfs(BUSYBOX.read_bytes(), modules))
    run = run_guest(kernel, folder / FILES["initramfs"], memory, memory_bytes, folder, timings)
    (folder / FILES["console"]).write_text(run.console)
    if not run.kallsyms.endswith(KALLSYMS_END):
        raise RuntimeError(f"the guest's kallsyms did not end with {KALLSYMS_END!r}")
    (folder / FILES["kallsyms"]).write_bytes(run.kallsyms[:-len(KALLSYMS_END)])
    banners = console_lines(run.console, "banner")
    if len(banners) != 1:
        raise RuntimeError(f"{len(banners)} banner lines on the console:\n{_tail(run.console)}")
    vmcoreinfo = [desc for name, _, desc in elf64.notes(folder / FILES["elf"])
                  if name == "VMCOREINFO"]
    if not vmcoreinfo:
        raise RuntimeError(f"{FILES['elf']} has no VMCOREINFO note: "
                           f"{console_lines(run.console, 'vmcoreinfo device')}")
    (folder / FILES["vmcoreinfo"]).write_bytes(vmcoreinfo[0].rstrip(b"\0"))
    info = vmcoreinfo_fields(vmcoreinfo[0].decode(errors="replace"))
    ram = system_ram(run.console)
    with timings.step(f"write {FILES['lime']}"):
        write_lime(folder / FILES["elf"], ram, folder / FILES["lime"])
    run_makedumpfile(folder, memory_bytes, timings)
    _, loads = elf64.read_program_headers(folder / FILES["elf"])
    paging_header, paging = elf64.read_program_headers(folder / FILES["paging_elf"])
    printed = [line for line in run.console.splitlines() if "] Linux version " in line]
    return {
        "recipe": RECIPE,
        "memory": memory,
        "memory_bytes": memory_bytes,
        "kernel": {"package": kernel.package, "abi": kernel.abi,
                   "package_version": kernel.package_version,
                   "vmlinuz": str(kernel.vmlinuz), "append": APPEND,
                   "modules": [name for name, _ in modules]},
        "banner": banners[0],
        "kernel_log_banner": printed[0].split("] ", 1)[1] if printed else None,
        "qemu": {"version": run.qemu_version, "package": run.qemu_package, "argv": run.argv,
                 "dump_formats": run.dump_formats},
        "makedumpfile": makedumpfile_version(),
        "vmcoreinfo_device": console_lines(run.console, "vmcoreinfo device"),
        "ram": [[start, end] for start, end in ram],
        "elf_loads": [[phdr.paddr, phdr.filesz] for phdr in loads
                      if phdr.type == elf64.PT_LOAD],
        "paging_elf_program_headers": len(paging),
        "paging_elf_pn_xnum": struct.unpack_from("<H", paging_header, 56)[0] == elf64.PN_XNUM,
        "init_top_pgt_physical": (int(info["SYMBOL(init_top_pgt)"], 16) - START_KERNEL_MAP
                                  + int(info.get("NUMBER(phys_base)", "0"))),
    }


def build(memory: str = "128M") -> Path:
    """Return the folder of the guest dumps for ``memory``, building it if missing.

    A cached folder is found without running anything but a stat (unless apt's lists
    changed since). A build takes about a minute at 128M on two cores.

    :raises GuestUnavailable: if QEMU, its tools or the kernel cannot be had here.
    :raises RuntimeError: if the build fails (QEMU, the guest, a dump, a check).
    :raises ValueError: for a bad ``memory``.
    """
    memory, memory_bytes = parse_memory(memory)
    root = cache_root()
    package = resolve_kernel_package(root)
    final = guest_folder(root, package.removeprefix("linux-image-"), memory)
    if is_complete(final):
        return final
    _make_root(root)
    with locked(root):
        if is_complete(final):
            return final
        for stale in [*root.glob("guest-*.tmp-*"), *root.glob("kernel-*.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        timings = Timings()
        started = time.monotonic()
        with timings.step("install tools"):
            ensure_tools()
        with timings.step("kernel package"):
            kernel = ensure_kernel(root, package)
        work = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        work.mkdir(mode=0o755)
        try:
            manifest = build_into(work, kernel, memory, memory_bytes, timings)
            for file_name in FILES.values():
                (work / file_name).chmod(0o644)
            manifest["files"] = {name: {"name": file_name,
                                        "size": (work / file_name).stat().st_size}
                                 for name, file_name in FILES.items()}
            with timings.step("verify"):
                verify(work, manifest)
            manifest["timings"] = timings.steps
            manifest["build_seconds"] = round(time.monotonic() - started, 1)
            manifest["built"] = datetime.now(UTC).isoformat(timespec="seconds")
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            work.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", default="128M", help="guest memory (128M, 4G...)")
    args = parser.parse_args(argv)
    try:
        folder = build(args.memory)
    except GuestUnavailable as error:
        print(f"guest unavailable: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as error:
        print(f"guest build failed: {error}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
