"""Run the whole benchmark suite and write ``docs/performance.md`` with its plots.

    .venv/bin/python -m bench.run_all                 # the full suite (about 15 minutes)
    .venv/bin/python -m bench.run_all --size small    # a quick check of every part

Installs the peers first (``bench/setup``: xmount, bindfs, fio, and the ``bench`` extra),
then runs each part in its own process (so one part's memory and caches do not colour
the next), collects the sections they write to ``docs/perf/`` and assembles the page.
A part that fails is reported as failed on the page; the others still run.  The
hand-written reading of the results, ``docs/perf/analysis.md``, is placed after the
targets table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, SIZES, VENV_BIN, Section, machine, markdown_table

PARTS = ("index_bench", "search_bench", "mount_bench", "startup_bench", "typed_bench",
         "views_bench", "dumps_bench")
DOCS = REPO / "docs"
PERF = DOCS / "perf"


def run_part(part: str, size: str, out: Path) -> Section:
    """Run one part in a child process; a failure becomes a section saying so."""
    stale = out / f"{part}.json"
    stale.unlink(missing_ok=True)
    command = [str(VENV_BIN / "python"), "-m", f"bench.{part}", "--size", size,
               "--out", str(out)]
    print(f"\n=== {part} ({size}) ===", flush=True)
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail = [*tail[-30:], line.rstrip()]
    status = process.wait()
    elapsed = time.perf_counter() - began
    if status == 0 and stale.exists():
        return Section.from_json(json.loads(stale.read_text()))
    section = Section(part, part, f".venv/bin/python -m bench.{part} --size {size}")
    section.markdown = ("**This part failed** (exit status " + str(status) + "); the end of "
                        "its output:\n\n```\n" + "\n".join(tail[-15:]) + "\n```\n")
    section.seconds = elapsed
    out.mkdir(parents=True, exist_ok=True)
    stale.write_text(json.dumps(section.to_json(), indent=1) + "\n")
    return section


def write_page(sections: list[Section], size: str, started: str, total: float,
               machine_table: str, analysis: str = "") -> str:
    """The Markdown of ``docs/performance.md``."""
    targets = [(section.title, target) for section in sections for target in section.targets]
    lines = [
        "# Performance",
        "",
        "Every figure on this page comes from the benchmark suite in `bench/`, run side by "
        "side with the tools a user would otherwise pick, on the machine below. The page is "
        "generated: edit `bench/`, not this file.",
        "",
        "```",
        f".venv/bin/python -m bench.run_all --size {size}",
        "```",
        "",
        f"Run started {started}; the suite took {total / 60:.1f} minutes. Each part also "
        "runs alone, e.g. `.venv/bin/python -m bench.index_bench --size small`. "
        "`bash bench/setup` installs the peers (`xmount`, `bindfs`, `fio` from Debian; "
        "`intervaltree`, `portion`, `matplotlib` from the `bench` extra).",
        "",
        "## Machine",
        "",
        machine_table,
        "",
        "The machine is shared: other work may run at the same time (see the load "
        "average). Ratios measured side by side within one run are the figures to trust; "
        "absolute times less so.",
        "",
        "## Targets",
        "",
        markdown_table(("part", "target", "measured", "goal", "verdict"),
                       [(title, *target.row()) for title, target in targets]),
        "",
    ]
    if analysis:
        lines += [analysis.rstrip(), ""]
    for section in sections:
        lines += [
            f"## {section.title}",
            "",
            f"`{section.command}` ({section.seconds:.0f} s)",
            "",
            section.markdown.rstrip(),
            "",
        ]
    return "\n".join(lines)


def assemble(page: Path, out: Path) -> None:
    """Write the page from ``out/run.json``, the parts' JSON and ``out/analysis.md``."""
    record = json.loads((out / "run.json").read_text())
    sections = []
    for part in record["parts"]:
        path = out / f"{part}.json"
        if path.exists():
            sections.append(Section.from_json(json.loads(path.read_text())))
    notes = out / "analysis.md"
    analysis = notes.read_text() if notes.exists() else ""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(write_page(sections, record["size"], record["started"], record["total"],
                               record["machine"], analysis))
    print(f"\nwrote {page}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--skip-setup", action="store_true",
                        help="do not run bench/setup (the peers are installed)")
    parser.add_argument("--page", type=Path, default=DOCS / "performance.md",
                        help="where to write the page (plots go to perf/ beside it)")
    parser.add_argument("--assemble", action="store_true",
                        help="run nothing: rebuild the page from the last run's JSON "
                             "(after editing docs/perf/analysis.md)")
    args = parser.parse_args()
    out = args.page.parent / "perf"
    if args.assemble:
        assemble(args.page, out)
        return
    if not args.skip_setup:
        subprocess.run(["bash", str(REPO / "bench" / "setup")], check=True)
    description = machine()
    print(description.line(), flush=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    began = time.perf_counter()
    sections = [run_part(part, args.size, out) for part in args.parts]
    total = time.perf_counter() - began
    run_record = {"size": args.size, "started": started, "total": total,
                  "machine": description.markdown(), "parts": list(args.parts)}
    (out / "run.json").write_text(json.dumps(run_record, indent=1) + "\n")
    assemble(args.page, out)
    print(f"({total / 60:.1f} minutes)")
    for section in sections:
        for target in section.targets:
            print(target.line())


if __name__ == "__main__":
    main()
