"""`make test-compat`: the older Airflow minors and the other Pythons, each in its own venv, measured.

For each older Airflow minor (``--airflows``), in ``.venv-afXY`` from ``locks/airflow-X.Y.lock``:
the unit, hardening and integration tests, then on the real stack the system scenarios that
matter most for abort clean-up (:data:`SYSTEM_SCENARIOS`) and the HA reassignment scenario.
For each other Python (``--pythons``), in ``.venv-pyXY`` from ``requirements-dev.lock`` (the
newest Airflow): the install and the unit tests. Writes ``.tmp/compat-summary.md`` (the table in
the README's "Compatibility" section, the newest Airflow's row taken from the last ``make test``)
and ``.tmp/compat-summary.json``; exits non-zero when any step failed.

Runs one step at a time: the system tests start four Airflow processes and share the machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TMP = ROOT / ".tmp"
OUT = TMP / "compat"
# tests/system/test_abort_cleanup.py: 1 worker wait, 2/3 deferred run/task marked failed,
# 5 sensor reschedule + listener (and 5a, the listener's registration), 8 triggerer restart,
# 11 mapped.
SYSTEM_SCENARIOS = "s01 or s02 or s03 or s05 or s08 or s11"
# -k for the HA file: its tests are named test_ha_* (scenario 12).
HA_K = "ha"
HA_TESTS = "tests/system/test_ha_triggerers.py"
NOT_SYSTEM_PATHS = ["tests/unit", "tests/hardening", "tests/integration"]
STEP_TIMEOUT = 25 * 60


def log(msg: str) -> None:
    """Print a progress line at once (CI shows it live)."""
    print(f"[test-compat {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], log_file: Path, timeout: float = STEP_TIMEOUT) -> tuple[int, float]:
    """Run ``cmd`` in the repo, its output to ``log_file`` (and its tail on failure); return (rc, seconds)."""
    started = time.monotonic()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n*** test-compat: timed out after {timeout:.0f} s\n")
            rc = 124
    seconds = time.monotonic() - started
    if rc != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        log(f"  FAILED (rc={rc}) after {seconds:.0f} s: {' '.join(cmd)}; log {log_file}")
        for line in tail:
            print(f"    | {line}", flush=True)
    return rc, seconds


def junit_counts(path: Path) -> dict[str, Any]:
    """Counts and skip reasons from a pytest junit XML file."""
    counts: dict[str, Any] = {"tests": 0, "passed": 0, "failed": 0, "skipped": 0, "skips": [], "failures": []}
    if not path.exists():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        counts["tests"] += 1
        skipped = case.find("skipped")
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            counts["failed"] += 1
            # The test's id and the first line of its message go into the summary: CI may show
            # only the end of the output, and a failure nobody can name cannot be fixed.
            message = (failure.get("message") or "").strip().splitlines()
            counts["failures"].append(
                f"{case.get('classname')}::{case.get('name')}: {message[0][:300] if message else '?'}"
            )
        elif skipped is not None:
            counts["skipped"] += 1
            counts["skips"].append(f"{case.get('name')}: {skipped.get('message', '')}")
        else:
            counts["passed"] += 1
    return counts


def pytest_step(py: str, name: str, args: list[str]) -> dict[str, Any]:
    """One pytest run with its junit file; returns its counts, rc and seconds."""
    junit = OUT / f"{name}.xml"
    junit.unlink(missing_ok=True)
    cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
    log(f"  {name}: {' '.join(cmd[1:])}")
    rc, seconds = run(cmd, OUT / f"{name}.log")
    counts = junit_counts(junit)
    # pytest exits 5 when nothing was collected: a missing test file is a failure here too.
    ok = rc == 0
    log(
        f"  {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped"
    )
    return {**counts, "rc": rc, "ok": ok, "seconds": round(seconds, 1)}


def install(venv: str, *, airflow: str | None = None, python: str | None = None) -> dict[str, Any]:
    """``make install`` into ``venv`` (rebuilt when its Python or lock changed)."""
    cmd = ["make", "--no-print-directory", "install", f"VENV={venv}"]
    if airflow:
        cmd.append(f"AIRFLOW={airflow}")
    if python:
        cmd.append(f"PYTHON={python}")
    log(f"  install: {' '.join(cmd)}")
    rc, seconds = run(cmd, OUT / f"install-{venv.lstrip('.')}.log")
    return {"ok": rc == 0, "rc": rc, "seconds": round(seconds, 1)}


def version_of(py: str, expr: str) -> str:
    """Evaluate a version expression in another interpreter (``"?"`` when it fails)."""
    done = subprocess.run([py, "-c", f"print({expr})"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else "?"


def find_python(version: str) -> str | None:
    """A Python ``version`` interpreter: pyenv's (``~/.pyenv/versions/X.Y.*``) first, then PATH."""
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    if found:
        return found[-1]
    return shutil.which(f"python{version}")


def airflow_row(minor: str) -> dict[str, Any]:
    """Install, tests and system subset for one older Airflow minor."""
    venv = f".venv-af{minor.replace('.', '')}"
    py = f"{venv}/bin/python"
    tag = f"af{minor.replace('.', '')}"
    row: dict[str, Any] = {"airflow_minor": minor, "venv": venv}
    log(f"Airflow {minor}: {venv}")
    row["install"] = install(venv, airflow=minor)
    if not row["install"]["ok"]:
        return row
    row["airflow"] = version_of(py, "__import__('airflow').__version__")
    row["python"] = version_of(py, "'%d.%d.%d' % __import__('sys').version_info[:3]")
    row["tests"] = pytest_step(py, f"{tag}-unit-integration", [*NOT_SYSTEM_PATHS, "-m", "not system"])
    system_args = ["tests/system/test_abort_cleanup.py", "-m", "system", "-k", SYSTEM_SCENARIOS]
    if (ROOT / HA_TESTS).exists():
        system_args.insert(1, HA_TESTS)
        system_args[-1] += f" or {HA_K}"
    else:
        row["ha_missing"] = True
        log(f"  {HA_TESTS} does not exist on this branch: the HA scenario is NOT run")
    summary = TMP / "system-summary.json"
    summary.unlink(missing_ok=True)
    row["system"] = pytest_step(py, f"{tag}-system", system_args)
    if summary.exists():
        shutil.copy(summary, OUT / f"{tag}-system-summary.json")
        row["system_summary"] = json.loads(summary.read_text())
    return row


def python_row(version: str) -> dict[str, Any]:
    """Install (newest Airflow) and unit tests on one other Python."""
    row: dict[str, Any] = {"python_minor": version}
    interpreter = find_python(version)
    row["interpreter"] = interpreter
    if interpreter is None:
        log(
            f"Python {version}: NOT FOUND (neither ~/.pyenv/versions/{version}.* nor python{version} on PATH)"
        )
        return row
    venv = f".venv-py{version.replace('.', '')}"
    py = f"{venv}/bin/python"
    log(f"Python {version}: found {interpreter}; {venv}")
    row["install"] = install(venv, python=interpreter)
    if not row["install"]["ok"]:
        return row
    row["airflow"] = version_of(py, "__import__('airflow').__version__")
    row["python"] = version_of(py, "'%d.%d.%d' % __import__('sys').version_info[:3]")
    row["tests"] = pytest_step(py, f"py{version.replace('.', '')}-unit", ["tests/unit"])
    return row


def newest_row() -> dict[str, Any] | None:
    """The newest Airflow's row, from the last ``make test`` (its junit and system summary)."""
    junit = TMP / "junit-test.xml"
    if not junit.exists():
        return None
    row: dict[str, Any] = {"tests": junit_counts(junit), "from": "make test"}
    py = ".venv/bin/python"
    row["airflow"] = version_of(py, "__import__('airflow').__version__")
    row["python"] = version_of(py, "'%d.%d.%d' % __import__('sys').version_info[:3]")
    summary = TMP / f"system-summary-{row['airflow']}.json"
    if summary.exists():
        row["system_summary"] = json.loads(summary.read_text())
    return row


def _scenario_number(name: str) -> str:
    """``s02`` for ``02 deferred, run failed (trigger on_kill)``: the number the README's table uses."""
    number = name.split()[0] if name.split() else name
    return f"s{number}" if number[:1].isdigit() else number


def _abort_figures(summary: dict[str, Any] | None) -> str:
    """``s02 1.2 s`` style medians (max) of the scenarios that measured one."""
    if not summary:
        return "-"
    parts = []
    for scenario in summary.get("scenarios", []):
        fig = scenario.get("abort_to_cancel") or {}
        short = _scenario_number(scenario["scenario"])
        if fig:
            parts.append(f"{short} {fig['median_s']:.1f}/{fig['max_s']:.1f}")
    return ", ".join(parts) or "-"


def _system_cell(summary: dict[str, Any] | None, step: dict[str, Any] | None) -> str:
    if not summary:
        return "not run" if step is None else ("FAILED (no summary)" if not step["ok"] else "-")
    rows = summary.get("scenarios", [])
    passed = sum(1 for r in rows if r["outcome"] in ("passed", "xfailed"))
    failed = [
        _scenario_number(r["scenario"]) for r in rows if r["outcome"] in ("failed", "xpassed", "not run")
    ]
    cell = f"{passed}/{len(rows)} passed"
    if failed:
        cell += f" (FAILED: {', '.join(failed)})"
    return cell


def _tests_cell(tests: dict[str, Any] | None) -> str:
    if not tests:
        return "not run"
    cell = f"{tests['passed']} passed"
    if tests["skipped"]:
        cell += f", {tests['skipped']} skipped"
    if tests["failed"]:
        cell += f", **{tests['failed']} FAILED**"
    return cell


def _listed(rows: list[dict[str, Any]], key: str) -> list[str]:
    """Every row's ``key`` entries (``skips`` or ``failures``) of its tests and system steps, named by version."""
    return [
        f"- Airflow {row.get('airflow', '?')}, Python {row.get('python', '?')}: {entry}"
        for row in rows
        for step in ("tests", "system")
        for entry in (row.get(step) or {}).get(key, [])
    ]


def table(
    newest: dict[str, Any] | None, airflows: list[dict[str, Any]], pythons: list[dict[str, Any]]
) -> str:
    """The Markdown table (and skip reasons) for the README."""
    lines = [
        f"Measured by `make test-compat` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs).",
        "Abort-to-cancel: seconds from the abort to the cancel request at the emulator, median/max per scenario.",
        "",
        "| Airflow | Python | What ran | Unit + integration | System scenarios | Abort-to-cancel (s) |",
        "|---|---|---|---|---|---|",
    ]
    if newest:
        s = newest.get("system_summary")
        lines.append(
            f"| {newest['airflow']} | {newest['python']} | `make test` (full suite) | "
            f"{_tests_cell(newest['tests'])} | {_system_cell(s, {'ok': True})} | {_abort_figures(s)} |"
        )
    for row in airflows:
        if not row["install"]["ok"]:
            lines.append(f"| {row['airflow_minor']} | - | install FAILED | - | - | - |")
            continue
        s = row.get("system_summary")
        what = "unit, hardening, integration; system " + SYSTEM_SCENARIOS.replace(" or ", "/")
        what += " + HA" if not row.get("ha_missing") else " (HA test absent)"
        lines.append(
            f"| {row['airflow']} | {row['python']} | {what} | {_tests_cell(row.get('tests'))} | "
            f"{_system_cell(s, row.get('system'))} | {_abort_figures(s)} |"
        )
    for row in pythons:
        if row.get("interpreter") is None:
            lines.append(f"| - | {row['python_minor']} | interpreter not found: not run | - | - | - |")
            continue
        if not row["install"]["ok"]:
            lines.append(f"| - | {row['python_minor']} | install FAILED | - | - | - |")
            continue
        lines.append(
            f"| {row['airflow']} | {row['python']} | install + unit tests | {_tests_cell(row.get('tests'))} | "
            "not run | - |"
        )
    everyone = [*([newest] if newest else []), *airflows, *pythons]
    skips = _listed(everyone, "skips")
    failures = _listed(everyone, "failures")
    if failures:
        lines += ["", "FAILED:", *failures]
    if skips:
        lines += ["", "Skipped:", *sorted(set(skips))]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the matrix; write the table; exit 1 when anything failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--airflows", default="3.1", help="older Airflow minors, space-separated")
    parser.add_argument("--pythons", default="3.10 3.12 3.13", help="other Pythons, space-separated")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    minors = args.airflows.split()
    versions = args.pythons.split()
    found = {v: find_python(v) for v in versions}
    log("Pythons: " + ", ".join(f"{v} {'found at ' + p if p else 'NOT FOUND'}" for v, p in found.items()))
    airflows = []
    for i, minor in enumerate(minors, 1):
        log(f"({i}/{len(minors) + len(versions)})")
        airflows.append(airflow_row(minor))
    pythons = []
    for i, version in enumerate(versions, len(minors) + 1):
        log(f"({i}/{len(minors) + len(versions)})")
        pythons.append(python_row(version))
    newest = newest_row()
    md = table(newest, airflows, pythons)
    (TMP / "compat-summary.md").write_text(md)
    (TMP / "compat-summary.json").write_text(
        json.dumps({"newest": newest, "airflows": airflows, "pythons": pythons}, indent=2, default=str) + "\n"
    )
    print(md, flush=True)
    failed = [
        step
        for row in [*airflows, *pythons]
        for step in ("install", "tests", "system")
        if row.get(step) is not None and not row[step]["ok"]
    ]
    missing = [v for v, p in found.items() if p is None]
    log(
        f"done in {time.monotonic() - started:.0f} s; table in {TMP / 'compat-summary.md'}; "
        f"{len(failed)} step(s) failed" + (f"; Pythons not found: {', '.join(missing)}" if missing else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
