"""Build the test artifacts from the sources next to this file, with installed toolchains.

Nothing built is committed: the tests call these functions into a temporary folder.
By hand::

    python tests/artifacts/build.py OUTDIR     # builds words-powerpc.elf, words-i686.elf, marker
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TEXT_ADDRESS = 0x01000000
DATA_ADDRESS = 0x02000000
"""Where ``words.s`` is linked: its ``table`` is at :data:`DATA_ADDRESS`."""

CROSS = {
    # arch: (assembler, linker, assembler flags, linker flags)
    "powerpc": ("powerpc-linux-gnu-as", "powerpc-linux-gnu-ld", ["-a32", "-mbig"], []),
    "i686": ("i686-linux-gnu-as", "i686-linux-gnu-ld", ["--32"], ["-m", "elf_i386"]),
}


class ToolMissing(Exception):
    """A tool needed to build an artifact is not installed (the message names it)."""


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(f"{tool} is not installed")
    return path


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def build_words(arch: str, out_dir: Path) -> Path:
    """Assemble and link ``words.s`` for ``arch`` ("powerpc" or "i686"); return the ELF.

    :raises ToolMissing: if the cross assembler or linker is not installed.
    """
    assembler, linker, as_flags, ld_flags = CROSS[arch]
    as_path, ld_path = _need(assembler), _need(linker)
    obj = out_dir / f"words-{arch}.o"
    elf = out_dir / f"words-{arch}.elf"
    _run([as_path, *as_flags, "-o", str(obj), str(HERE / "words.s")])
    _run([ld_path, *ld_flags, f"-Ttext={TEXT_ADDRESS:#x}", f"-Tdata={DATA_ADDRESS:#x}",
          "-e", "_start", "-o", str(elf), str(obj)])
    return elf


def build_marker(out_dir: Path) -> Path:
    """Compile ``marker.c`` with the native C compiler; return the executable.

    :raises ToolMissing: if ``gcc`` is not installed.
    """
    compiler = _need("gcc")
    program = out_dir / "marker"
    _run([compiler, "-O0", "-o", str(program), str(HERE / "marker.c")])
    return program


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for build in (lambda: build_words("powerpc", out_dir), lambda: build_words("i686", out_dir),
                  lambda: build_marker(out_dir)):
        try:
            print(build())
        except ToolMissing as missing:
            print(f"skipped: {missing}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
