"""Build the symbol-table artifacts from the sources next to this file, with installed tools.

Nothing built is committed: the tests call these functions into a temporary folder.
By hand::

    cd tests && python -m artifacts.build_symbols OUTDIR

* ``symbols.c`` with the native ``gcc``: a position-dependent executable, a PIE, and a
  stripped PIE whose only symbols are the ``.dynsym`` that ``-rdynamic`` exports;
* ``symbols-ppc.s`` with the PowerPC cross binutils: objects in ELF32 and ELF64, big- and
  little-endian, and ELF32 and ELF64 big-endian executables.
"""

from __future__ import annotations

import sys
from pathlib import Path

from artifacts.build import DATA_ADDRESS, HERE, TEXT_ADDRESS, ToolMissing, _need, _run

PPC_VARIANTS = {
    # name: (assembler flags, linker emulation, or None for an object only)
    "ppc32-be": (["-a32", "-mbig"], "elf32ppc"),
    "ppc32-le": (["-a32", "-mlittle"], None),
    "ppc64-be": (["-a64", "-mbig"], "elf64ppc"),
    "ppc64-le": (["-a64", "-mlittle"], None),
}
"""The PowerPC builds of ``symbols-ppc.s``: ELF class and byte order."""


def build_c_symbols(out_dir: Path, kind: str) -> Path:
    """Compile ``symbols.c`` with ``gcc``; return the executable.

    ``kind``: ``"static-address"`` (``-no-pie``), ``"pie"`` (``-pie``) or
    ``"stripped-pie"`` (``-pie -rdynamic``, then ``strip --strip-all``: only ``.dynsym``).

    :raises ToolMissing: if ``gcc`` (or ``strip``) is not installed.
    """
    compiler = _need("gcc")
    flags = {"static-address": ["-no-pie", "-fno-pie"], "pie": ["-pie", "-fPIE"],
             "stripped-pie": ["-pie", "-fPIE", "-rdynamic"]}[kind]
    program = out_dir / f"symbols-{kind}"
    _run([compiler, "-O0", *flags, "-o", str(program), str(HERE / "symbols.c")])
    if kind == "stripped-pie":
        _run([_need("strip"), "--strip-all", str(program)])
    return program


def build_ppc_symbols(out_dir: Path, variant: str) -> tuple[Path, Path | None]:
    """Assemble ``symbols-ppc.s`` as ``variant`` (a key of :data:`PPC_VARIANTS`); return
    the object and, for big-endian variants, an executable linked at
    ``TEXT_ADDRESS``/``DATA_ADDRESS`` (else ``None``).

    :raises ToolMissing: if the PowerPC cross assembler or linker is not installed.
    """
    as_flags, emulation = PPC_VARIANTS[variant]
    obj = out_dir / f"symbols-{variant}.o"
    _run([_need("powerpc-linux-gnu-as"), *as_flags, "-o", str(obj),
          str(HERE / "symbols-ppc.s")])
    if emulation is None:
        return obj, None
    program = out_dir / f"symbols-{variant}.elf"
    _run([_need("powerpc-linux-gnu-ld"), "-m", emulation, f"-Ttext={TEXT_ADDRESS:#x}",
          f"-Tdata={DATA_ADDRESS:#x}", "-e", "_start", "-o", str(program), str(obj)])
    return obj, program


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind in ("static-address", "pie", "stripped-pie"):
        try:
            print(build_c_symbols(out_dir, kind))
        except ToolMissing as missing:
            print(f"skipped: {missing}", file=sys.stderr)
    for variant in PPC_VARIANTS:
        try:
            print(*(path for path in build_ppc_symbols(out_dir, variant) if path))
        except ToolMissing as missing:
            print(f"skipped: {missing}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
