"""Test helpers shared by the ELF tests: ``readelf``'s view of a file, and the one-line
error a loader gives."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmemfs import FormatError


@dataclass(frozen=True)
class Load:
    """One ``LOAD`` line of ``readelf -lW``."""

    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def readelf_loads(path: Path) -> list[Load]:
    """The ``LOAD`` program headers as ``readelf -lW`` shows them; it must not complain.

    Skips the test when ``readelf`` is not installed.
    """
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf is not installed")
    result = subprocess.run([readelf, "-lW", str(path)], capture_output=True, text=True,
                            check=True)
    assert "Warning" not in result.stderr and "Error" not in result.stderr, result.stderr
    loads = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            loads.append(Load(*(int(field, 16) for field in fields[1:6])))
    return loads


def format_error(load: Callable[..., Any], path: Path, **options: Any) -> str:
    """What ``load(path, **options)`` says after ``PATH: ``; it must raise a one-line
    :class:`FormatError` that starts with the path."""
    with pytest.raises(FormatError) as info:
        load(path, **options)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]
