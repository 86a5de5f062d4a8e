"""A virtual environment a user other than root can run, for tests of unprivileged mounts.

The project's own ``.venv`` may be built on an interpreter under ``/root`` (pyenv), which
other users cannot reach; this one is built on Debian's ``/usr/bin/python3``, cached per
machine in ``${VMEMFS_TEST_CACHE:-/var/cache/vmemfs-tests}/user-venv-<key>`` (the key
follows the runtime dependencies), with the checkout's package installed afresh once per
test session.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

SYSTEM_PYTHON = Path("/usr/bin/python3")
CHECKOUT = Path(__file__).resolve().parent.parent


class UserVenvUnavailable(Exception):
    """Debian's Python, its venv module or the package index cannot be had here."""


def _cache() -> Path:
    return Path(os.environ.get("VMEMFS_TEST_CACHE", "/var/cache/vmemfs-tests"))


def _dependencies() -> list[str]:
    with open(CHECKOUT / "pyproject.toml", "rb") as project:
        return list(tomllib.load(project)["project"]["dependencies"])


def _run(*command: str | Path) -> None:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-3000:]}")


@functools.cache
def user_venv() -> Path:
    """The folder of a venv any user can run, with this checkout's vmemfs installed.

    :raises UserVenvUnavailable: without ``/usr/bin/python3`` and its venv module.
    """
    if not SYSTEM_PYTHON.exists():
        raise UserVenvUnavailable(f"{SYSTEM_PYTHON} is missing (apt-get install python3-venv)")
    dependencies = _dependencies()
    key = hashlib.sha256("\n".join(sorted(dependencies)).encode()).hexdigest()[:12]
    cache = _cache()
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o755)
    folder = cache / f"user-venv-{key}"
    with open(cache / ".user-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                _run(SYSTEM_PYTHON, "-m", "venv", folder)
            except RuntimeError as error:
                raise UserVenvUnavailable(str(error).splitlines()[0]) from None
            _run(folder / "bin" / "python", "-m", "pip", "install", "-q", *dependencies)
            (folder / ".complete").touch()
        # This checkout's package, not an editable link (the checkout may be private).
        with tempfile.TemporaryDirectory() as build:
            copy = Path(build) / "vmemfs"
            shutil.copytree(CHECKOUT, copy, ignore=shutil.ignore_patterns(
                ".venv*", ".git", "tests", "bench", "*.egg-info", "__pycache__"))
            _run(folder / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps",
                 "--force-reinstall", copy)
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if not path.is_symlink():
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
    return folder
