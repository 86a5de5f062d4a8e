"""One value grammar: the same text is accepted or refused the same way by every entry
point (a .ctl/ write, a mount option, a vmemfs command argument, a map-file value,
vmemfs.open), and no module of vmemfs imports one that imports it back."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

import vmemfs
from vmemfs import FormatError, ctl, values
from vmemfs.cli import parse_number
from vmemfs.formats.mapfile import parse_address as mapfile_address
from vmemfs.options import UsageError, parse_command_line

ADDRESSES = [
    ("4096", 4096), ("0x1000", 4096), ("0X1000", 4096), ("4K", 4096), ("0x1k", 1024),
    ("0o10000", 4096), ("0b1000000000000", 4096), ("4_096", 4096), (" 4096 ", 4096),
    ("0xffff_ffff_8100_0000", 0xFFFFFFFF81000000), ("16777215T", 16777215 << 40),
    ("ten", None), ("-1", None), ("0x", None), ("1__0", None), ("_1", None), ("1.5K", None),
    ("4 K", None), ("0x10000000000000000", None), ("16777216T", None), ("1e3", None),
]


def through_ctl(text: str) -> int | None:
    try:
        return int(ctl.parse("base", text.encode()))
    except ctl.ControlValueError:
        return None


def through_mount_option(text: str) -> int | None:
    try:
        return parse_command_line(["src", "dir", "-o", f"base={text}"]).options.base
    except UsageError:
        return None


def through_command(text: str) -> int | None:
    try:
        return parse_number(text)
    except argparse.ArgumentTypeError:
        return None


def through_map_file(text: str) -> int | None:
    try:
        return mapfile_address(text)
    except ValueError:
        return None


def through_open(text: str, tmp_path: Path) -> int | None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"x")
    try:
        memmap = vmemfs.open(raw, address=text)
    except FormatError:
        return None
    try:
        return memmap.extents()[0][0]
    finally:
        memmap.close()


@pytest.mark.parametrize(("text", "expected"), ADDRESSES)
def test_every_entry_point_reads_numbers_alike(text: str, expected: int | None,
                                               tmp_path: Path) -> None:
    if expected is not None and expected >= 2**64 - 1:
        pytest.skip("a one-byte raw file cannot sit there")
    got = {
        ".ctl/base": through_ctl(text),
        "-o base=": through_mount_option(text),
        "vmemfs command": through_command(text),
        "map file": through_map_file(text),
        "vmemfs.open": through_open(text, tmp_path),
    }
    assert got == dict.fromkeys(got, expected), text


@pytest.mark.parametrize(("text", "wordsize", "endian"), [
    ("64", 64, None), ("unset", None, None), ("UNSET", None, None), ("Big", None, "big"),
    ("LE", None, "little"), ("48", "bad", "bad"), ("middle", "bad", "bad"),
])
def test_keywords_ignore_case_everywhere(text: str, wordsize: object, endian: object) -> None:
    def outcome(parse: object, name: str) -> object:
        results = []
        for attempt in (lambda: ctl.parse(name, text.encode()),
                        lambda: parse_command_line(
                            ["s", "d", "-o", f"{name}={text}"]).options.controls[name],
                        lambda: parse(text)):  # type: ignore[operator]
            try:
                results.append(attempt())
            except (ValueError, UsageError):
                results.append("bad")
        assert len(set(map(repr, results))) == 1, results
        return results[0]

    if text in ("64", "48"):
        assert outcome(values.parse_wordsize, "wordsize") == wordsize
    if text not in ("64",):
        if endian is not None or text in ("48", "middle", "unset", "UNSET"):
            assert outcome(values.parse_endian, "endian") == endian


def _imports(path: Path, package: str) -> set[str]:
    """Every vmemfs module ``path`` imports, at any depth (functions and
    ``TYPE_CHECKING`` blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vmemfs"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("vmemfs"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_import_circle() -> None:
    root = Path(vmemfs.__file__).parent
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {other for other in _imports(path, "vmemfs") if other in modules
                    and other != name and not name.startswith(other + ".")
                    and other != "vmemfs"}
             for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for following in graph[start]:
            if following == goal:
                return True
            if following not in seen:
                seen.add(following)
                if reaches(following, goal, seen):
                    return True
        return False

    circles = [(name, other) for name in graph for other in graph[name]
               if reaches(other, name, set())]
    assert circles == []
