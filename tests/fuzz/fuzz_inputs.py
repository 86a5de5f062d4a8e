"""Coverage-guided fuzzing (atheris) of what vmemfs reads from users.

Targets, chosen by the first byte of each input:

* ``source``: the bytes as a file, opened by content (ELF, map file or raw) with
  :func:`vmemfs.formats.open_source`, and every extent's first and last byte read;
* ``options``: the bytes as a ``mount.vmemfs`` ``-o`` string, parsed;
* ``control``: the bytes as a write to a ``.ctl/`` file, parsed;
* ``kdump``: the bytes as a kdump-compressed file (standard or flattened), opened with
  :func:`vmemfs.formats.kdump.open_kdump`, and every region's first and last byte read
  (pages decompressed: a corrupt page must read short, never raise);
* ``lime``: the bytes as a LiME or AVML capture, opened with
  :func:`vmemfs.formats.lime.open_lime`, and read the same way.

Only the documented errors may come out (``ValueError``, which ``FormatError`` and
``ControlValueError`` are, or ``UsageError``), each on one line; anything else is a crash
that libFuzzer reports with the input that caused it.

Run (atheris is not a test dependency: ``pip install atheris``)::

    python tests/fuzz/fuzz_inputs.py -runs=50000 -max_len=4096 [CORPUS_DIR]

Seeds (small ELF files of both classes and byte orders, map files, option strings) are
added to the corpus directory given, or to a temporary one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

# The test helpers (artifacts.craft) live next to the tests, outside the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["vmemfs"]):
    from vmemfs import ctl
    from vmemfs import open as open_source
    from vmemfs.formats.dump import Dump
    from vmemfs.formats.kdump import open_kdump
    from vmemfs.formats.lime import open_lime
    from vmemfs.mount import UsageError, parse_command_line

import logging
import random

from artifacts.craft import PT_NOTE, Segment, build_elf, note
from dumpwriters import (
    random_map,
    vmcoreinfo_text,
    write_avml,
    write_kdump,
    write_lime,
)

TARGETS = ("source", "options", "control", "kdump", "lime")
# A page that fails to decompress is logged once: expected here, and noisy.
logging.getLogger("vmemfs.sources.blocks").disabled = True
_WORK = Path(tempfile.mkdtemp(prefix="vmemfs-fuzz-"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)
_SOURCE = _WORK / "input"
(_WORK / "data.bin").write_bytes(bytes(range(256)))
(_WORK / "small.elf").write_bytes(build_elf([Segment(0x1000, b"small")]))


def one_line(error: BaseException) -> None:
    text = str(error)
    if not text or "\n" in text:
        raise AssertionError(f"not a one-line error: {text!r}")


def fuzz_source(data: bytes) -> None:
    _SOURCE.write_bytes(data)
    try:
        memory_map = open_source(_SOURCE)
    except ValueError as error:
        one_line(error)
        return
    except IsADirectoryError:
        return
    try:
        for start, end in memory_map.extents():
            memory_map.get_byte(start)
            memory_map.get_byte(end - 1)
    finally:
        memory_map.close()


def fuzz_options(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    try:
        parse_command_line(["SOURCE", "MOUNTPOINT", "-o", text])
    except UsageError as error:
        one_line(error)


def fuzz_control(data: bytes) -> None:
    name = ctl.CONTROLS[data[0] % len(ctl.CONTROLS)] if data else ctl.BASE
    try:
        value = ctl.parse(name, data[1:])
    except ctl.ControlValueError as error:
        one_line(error)
        return
    ctl.format_value(name, value)


def fuzz_dump(data: bytes, opener: Callable[[Path], Dump]) -> None:
    _SOURCE.write_bytes(data)
    try:
        dump = opener(_SOURCE)
    except ValueError as error:
        one_line(error)
        return
    try:
        byte = memoryview(bytearray(1))
        for offset, length in zip(dump.offsets.tolist(), dump.lengths.tolist(), strict=True):
            if length:
                dump.source.read_into(offset, byte)
                dump.source.read_into(offset + length - 1, byte)
    finally:
        dump.close()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    body = data[1:]
    if target == "source":
        fuzz_source(body)
    elif target == "options":
        fuzz_options(body)
    elif target == "control":
        fuzz_control(body)
    elif target == "kdump":
        fuzz_dump(body, open_kdump)
    else:
        fuzz_dump(body, open_lime)


def seeds() -> dict[str, bytes]:
    """Valid inputs of every kind, prefixed with their target's byte."""
    found = {}
    settings_note = note(b"VMEMFS", 0x766D6673, b"wordsize=32\nendian=big\n")
    for elfclass in (32, 64):
        for endian in ("little", "big"):
            segments = [Segment(0, settings_note, type=PT_NOTE),
                        Segment(0x1000, b"load", memsz=0x20), Segment(0x1002, b"over")]
            found[f"elf{elfclass}{endian}"] = build_elf(segments, elfclass=elfclass,
                                                        endian=endian)
            found[f"xnum{elfclass}{endian}"] = build_elf(segments[1:], elfclass=elfclass,
                                                         endian=endian, xnum=True)
    found["map"] = (f'wordsize = 64\nendian = "le"\nbase = "0x1000"\n'
                    f'[[map]]\nfile = "{_WORK / "data.bin"}"\naddress = "0x1000"\n'
                    f'offset = 1\nlength = 16\n[[map]]\nelf = "{_WORK / "small.elf"}"\n'
                    '[[map]]\nhex = "de ad"\naddress = 0\n[[map]]\ntext = "hi"\n'
                    'address = 8\n').encode()
    found["raw"] = b"just some bytes\0\1\2"
    result = {name: bytes([0]) + content for name, content in found.items()}
    result["options"] = bytes([1]) + b"ro,holes=zero,base=0x1000,wordsize=64,endian=be,x-a=b"
    result["options2"] = bytes([1]) + b"address=4096,offset=0x10,length=16,fsname=a\\,b"
    for number, value in enumerate([b"64\n", b"little", b"0xffffffff81000000", b"zero"]):
        result[f"control{number}"] = bytes([2, number]) + value
    result.update(dump_seeds())
    return result


def dump_seeds() -> dict[str, bytes]:
    """Small kdump (512-byte pages, each codec, both layouts), LiME and AVML files."""
    memmap = random_map(random.Random(1), pages=3, block_size=512, top_pfn=40)
    found = {}
    for number, (codec, flattened, wordsize, endian) in enumerate([
            ("zlib", False, 64, "little"), ("lzo", True, 64, "little"),
            ("snappy", False, 32, "big"), ("zstd", True, 32, "little"),
            ("raw", False, 64, "big")]):
        path = _WORK / f"seed{number}.kdump"
        write_kdump(path, memmap, block_size=512, compression=codec, flattened=flattened,
                    wordsize=wordsize, endian=endian, record_size=300 if flattened else None,
                    vmcoreinfo=vmcoreinfo_text(page_size=512)[:80])
        found[f"kdump-{codec}"] = bytes([3]) + path.read_bytes()
    write_lime(_WORK / "seed.lime", memmap)
    found["lime"] = bytes([4]) + (_WORK / "seed.lime").read_bytes()
    write_avml(_WORK / "seed.avml", memmap, max_block=700, chunk_size=300,
               uncompressed=lambda n: n % 2 == 1)
    found["avml"] = bytes([4]) + (_WORK / "seed.avml").read_bytes()
    return found


def main() -> None:
    arguments = [argument for argument in sys.argv if not argument.startswith("-")][1:]
    corpus = Path(arguments[0]) if arguments else _WORK / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, content in seeds().items():
        (corpus / f"seed-{name}").write_bytes(content)
    argv = [sys.argv[0], *(a for a in sys.argv[1:] if a.startswith("-"))]
    os.chdir(_WORK)
    atheris.Setup([*argv, str(corpus)], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
