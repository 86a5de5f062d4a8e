"""Shared pieces of the benchmark suite: the machine, timing, targets and report sections.

Every part (``index_bench``, ``search_bench``, ``mount_bench``, ``startup_bench``) builds a
:class:`Section`: a Markdown fragment, the targets it checked and the plots it drew.  Run
alone, a part prints its section; ``run_all`` collects the sections of every part into
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
"""The repository root (the benchmarks run from a checkout)."""
VENV_BIN = REPO / ".venv" / "bin"
SIZES = ("small", "medium", "full")
"""``small`` checks that a part works (seconds); ``full`` is what the report shows."""


# --------------------------------------------------------------------- the machine

@dataclass(frozen=True)
class Machine:
    """What the numbers were measured on."""

    cpu: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    numpy: str
    distribution: str
    load: str
    """The load average when the description was taken (other work on the machine)."""

    def markdown(self) -> str:
        """A Markdown table of the machine, one row per property."""
        rows = [
            ("CPU", self.cpu),
            ("cores", str(self.cores)),
            ("memory", f"{self.memory_gib:.1f} GiB"),
            ("kernel", self.kernel),
            ("distribution", self.distribution),
            ("Python", self.python),
            ("numpy", self.numpy),
            ("load average at start", self.load),
        ]
        return markdown_table(("", "value"), rows)

    def line(self) -> str:
        """The machine on one line, for a terminal."""
        return (f"{self.cpu}, {self.cores} cores, {self.memory_gib:.1f} GiB, "
                f"Linux {self.kernel}, Python {self.python}, numpy {self.numpy}")


def machine() -> Machine:
    """Describe this machine from ``/proc`` and the running interpreter."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / (1 << 20)
                break
    except OSError:
        pass
    distribution = "unknown"
    try:
        release = platform.freedesktop_os_release()
        distribution = release.get("PRETTY_NAME", distribution)
    except OSError:
        pass
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 0,
        memory_gib=memory,
        kernel=platform.release(),
        python=platform.python_version(),
        numpy=np.__version__,
        distribution=distribution,
        load=" ".join(f"{value:.2f}" for value in os.getloadavg()),
    )


# --------------------------------------------------------------------- timing

def seconds(function: Callable[[], object]) -> float:
    """Wall-clock seconds one call of ``function`` takes."""
    begin = time.perf_counter()
    function()
    return time.perf_counter() - begin


def alternate(runners: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every runner once per round, rotating the order each round.

    Each runner returns its own measurement (a time or a rate).  Rotating the order spreads
    slow drifts of the machine (other load, thermal, cache state) over all systems instead
    of charging them to whichever one happens to run last.
    """
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(runners[name]())
    return samples


def median(values: Iterable[float]) -> float:
    """The median (``nan`` for no values)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Spread:
    """Summary of per-operation times, in microseconds."""

    mean: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of_ns(cls, samples_ns: Sequence[int] | np.ndarray) -> Spread:
        """Summarise per-operation times given in nanoseconds."""
        array = np.asarray(samples_ns, dtype=np.float64) / 1000.0
        if len(array) == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan)
        return cls(
            mean=float(array.mean()),
            p50=float(np.percentile(array, 50)),
            p99=float(np.percentile(array, 99)),
            max=float(array.max()),
        )


# --------------------------------------------------------------------- formatting

def fmt_us(value: float) -> str:
    """Microseconds with three significant digits (or ``n/a``)."""
    if value != value:  # nan
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.3g} s"
    if value >= 1e3:
        return f"{value / 1e3:.3g} ms"
    return f"{value:.3g} µs"


def fmt_rate(per_second: float, unit: str = "/s") -> str:
    """A rate with an SI prefix: ``1.23 M/s``."""
    if per_second != per_second:
        return "n/a"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= factor:
            return f"{per_second / factor:.3g} {prefix}{unit}"
    return f"{per_second:.3g} {unit}"


def fmt_bytes_rate(bytes_per_second: float) -> str:
    """Bytes per second in decimal units, as ``dd`` and ``fio`` print them."""
    return fmt_rate(bytes_per_second, "B/s")


def fmt_number(value: float) -> str:
    """Three significant digits, with thousands separators from 1,000 on."""
    if value != value:
        return "n/a"
    if value >= 1000:
        return f"{float(f'{value:.3g}'):,.0f}"
    return f"{value:.3g}"


def fmt_ratio(value: float) -> str:
    """A ratio: ``0.42×`` or ``1.2e+03×``."""
    if value != value:
        return "n/a"
    if value >= 1000:
        return f"{fmt_number(value)}×"
    return f"{value:.3g}×" if value >= 0.01 else f"{value:.2g}×"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------- targets

@dataclass
class Target:
    """A performance goal and what was measured against it.

    ``measured`` and ``goal`` are in the same unit; ``higher_is_better`` says which way
    is good.  ``note`` says how the number was obtained (e.g. "extrapolated").
    """

    name: str
    measured: float
    goal: float
    unit: str
    higher_is_better: bool = True
    note: str = ""

    @property
    def met(self) -> bool:
        """Whether the measurement reaches the goal (``False`` if nothing was measured)."""
        if self.measured != self.measured:
            return False
        if self.higher_is_better:
            return self.measured >= self.goal
        return self.measured <= self.goal

    @property
    def margin(self) -> float:
        """How far past the goal (>1) or short of it (<1), as a factor."""
        if self.measured != self.measured or self.measured == 0 or self.goal == 0:
            return float("nan")
        if self.higher_is_better:
            return self.measured / self.goal
        return self.goal / self.measured

    def verdict(self) -> str:
        """``met (1.5× the goal)`` or ``missed by 2.0×`` or ``not measured``."""
        if self.measured != self.measured:
            return "not measured"
        if self.met:
            return f"met ({fmt_ratio(self.margin)} the goal)"
        factor = 1 / self.margin
        if factor < 1.1:  # a near miss: enough digits that it does not read "by 1×"
            return f"missed by {factor:.3f}×"
        return f"missed by {fmt_ratio(factor)}"

    def line(self) -> str:
        """One line for the terminal."""
        sign = "≥" if self.higher_is_better else "≤"
        note = f" [{self.note}]" if self.note else ""
        return (f"target {self.name}: {self.measured:.4g} {self.unit} "
                f"(goal {sign} {self.goal:.4g}) — {self.verdict()}{note}")

    def row(self) -> tuple[str, str, str, str]:
        """A row of the targets table: name, measured, goal, verdict."""
        sign = "≥" if self.higher_is_better else "≤"
        measured = f"{fmt_number(self.measured)} {self.unit}"
        if self.note:
            measured += f" ({self.note})"
        return (self.name, measured, f"{sign} {fmt_number(self.goal)} {self.unit}",
                self.verdict())


def print_target(target: Target) -> None:
    """Print a target's line and flush (parts run for minutes)."""
    print(target.line(), flush=True)


# --------------------------------------------------------------------- sections

@dataclass
class Section:
    """What one part of the suite contributes to the report."""

    part: str
    title: str
    command: str
    markdown: str = ""
    targets: list[Target] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    data: dict = field(default_factory=dict)
    """Raw measurements (per-round samples), kept in the JSON for the record."""

    def add_target(self, target: Target) -> None:
        """Record a target and print its verdict now."""
        self.targets.append(target)
        print_target(target)

    def to_json(self) -> dict:
        """A JSON-ready dictionary (the inverse of :meth:`from_json`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Section:
        """Rebuild a section written by :meth:`to_json`."""
        targets = [Target(**t) for t in data.pop("targets", [])]
        return cls(targets=targets, **data)


def part_arguments(description: str) -> argparse.Namespace:
    """Parse the command line every part shares: ``--size`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=SIZES, default="small",
                        help="small: a quick check; full: the figures for the report")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the section's JSON and plots "
                             "(default: print only)")
    return parser.parse_args()


def finish_part(section: Section, out: Path | None) -> None:
    """Print the section; with ``out``, also write ``out/<part>.json``."""
    print()
    print(section.markdown)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{section.part}.json"
        path.write_text(json.dumps(section.to_json(), indent=1) + "\n")
        print(f"wrote {path}", file=sys.stderr)


def command_line(part: str, size: str) -> str:
    """The command that reproduces one part at one size."""
    return f".venv/bin/python -m bench.{part} --size {size}"


def run(command: Sequence[str | bytes], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output (text unless ``text=False``), raise on failure."""
    kwargs.setdefault("text", True)
    result = subprocess.run(list(command), capture_output=True, check=False,
                            **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        shown = " ".join(os.fsdecode(part) for part in command)
        raise RuntimeError(f"{shown} exited {result.returncode}: "
                           f"{os.fsdecode(result.stderr).strip()[-2000:]}")
    return result


def drop_caches() -> bool:
    """Drop the kernel's page cache (root only); ``False`` if that is not possible."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True
