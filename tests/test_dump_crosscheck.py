"""An independent reader agrees: volatility3's LiME and AVML layers read the same pages
as vmemfs from the LiME file of the QEMU guest and an AVML file written from its ELF dump
by the published layout (drgn's agreement on kdump files is in test_kdump.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from dumpwriters import write_avml
from guestdumps import Guest

import vmemfs
from vmemfs import MemoryMap

VOLATILITY_READ = """
import json, sys
from pathlib import Path
from volatility3.framework import contexts
from volatility3.framework.layers import avml, lime, physical
kind, path, requests = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
context = contexts.Context()
context.config["base.location"] = Path(path).resolve().as_uri()
context.add_layer(physical.FileLayer(context, "base", "base"))
context.config["top.base_layer"] = "base"
layer = (lime.LimeLayer if kind == "lime" else avml.AVMLLayer)(context, "top", "top")
print(json.dumps([layer.read(address, size, pad=True).hex() for address, size in requests]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lime", "avml"])
def test_volatility_reads_the_pages_vmemfs_reads(dumps: Guest, tmp_path: Path,
                                                 kind: str) -> None:
    pytest.importorskip("volatility3")
    elf = MemoryMap.load(dumps.elf, physical=True)
    try:
        if kind == "avml":
            path = tmp_path / "guest.avml"
            write_avml(path, elf)
        else:
            path = dumps.lime
        ours = vmemfs.open(path)
        try:
            rng = random.Random(11)
            requests = []
            for start, end in ours.extents():
                for _ in range(40):
                    address = rng.randrange(start, end - 1)
                    requests.append((address, min(end - address, rng.randrange(1, 9000))))
            result = subprocess.run([sys.executable, "-c", VOLATILITY_READ, kind, str(path),
                                     json.dumps(requests)], capture_output=True, text=True,
                                    timeout=900)
            assert result.returncode == 0, result.stderr[-2000:]
            theirs = [bytes.fromhex(text) for text in json.loads(result.stdout)]
            for (address, size), read in zip(requests, theirs, strict=True):
                mine = ours.read_zero_filled(address, size)   # AVML omits zero blocks
                assert read == bytes(mine) == elf.read_zero_filled(address, size), \
                    hex(address)
        finally:
            ours.close()
    finally:
        elf.close()
