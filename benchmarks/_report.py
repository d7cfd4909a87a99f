"""Shared helpers: statistics, the machine note, and writing one section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Measured by `make bench` (`python -m benchmarks.run_all`), or one at a time with
`.venv/bin/python -m benchmarks.<name>` (`--quick` for a short run). Each section is rewritten
by its own benchmark; ratios compare against a baseline measured in the same run. These are
measurements, not tests: nothing here fails a build.
"""


def machine_note() -> str:
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(pct / 100.0 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_section(name: str, title: str, body: str, command: str) -> None:
    """Replace (or append) the section of ``name`` in BENCHMARKS.md."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    section = (
        f"{start}\n## {title}\n\nCommand: `{command}`  \nMachine: {machine_note()}\n\n{body.strip()}\n{end}"
    )
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    REPORT.write_text(text, encoding="utf-8")
    print(f"\nwrote section {name!r} of {REPORT}")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (smaller sizes, fewer repeats)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    return p


def command(module: str, quick: bool) -> str:
    return f".venv/bin/python -m benchmarks.{module}" + (" --quick" if quick else "")


def python() -> str:
    return sys.executable
