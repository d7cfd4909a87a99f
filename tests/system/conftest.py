"""Session fixtures of the system tests: one emulator and one real Airflow stack for every scenario.

The stack runs with the failure clean-up listener switched off
(``[qwenbatch] cancel_on_dag_run_failed = False``) so that each scenario proves the one
mechanism it names (operator ``on_kill``, trigger ``on_kill``, sensor ``on_kill``, the DAG
callback, the timeout); the listener scenario switches it back on by restarting the
api-server, and runs last. Figures are printed at the end of the session and written to
``.tmp/system-summary.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator import EmulatorConfig, EmulatorHandle, EmulatorProcess
from tests.system.emulator_view import EmulatorView
from tests.system.stack import CACHE, AirflowAPI, AirflowStack

DAG_IDS = (
    "sys_s01_worker_wait",
    "sys_s02_deferred",
    "sys_s04_sensor_poke",
    "sys_s05_sensor_reschedule",
    "sys_s06_callback",
    "sys_s07_timeout",
    "sys_s07b_execution_timeout",
    "sys_s08_triggerer_restart",
    "sys_s09_worker_sigkill",
    "sys_s11_mapped",
)
BIG_LINES = 2000
MEDIUM_LINES = 1200
# 2,000 lines take ~67 s: still running when a test aborts; 1,200 lines (~40 s) complete within a test.
LINES_PER_SECOND = 30.0
MODEL = "qwen-plus"
# How many times the abort scenarios run (more samples for the median/max figures).
REPEAT = max(1, int(os.environ.get("QWENBATCH_SYSTEM_REPEAT", "1")))

_SESSION_START = time.monotonic()
_OUTCOMES: dict[str, str] = {}
_RESULTS: dict[str, dict[str, Any]] = {}
_TIMINGS: dict[str, float] = {}


@dataclass
class System:
    """What a scenario works with.

    :param stack: the Airflow processes.
    :param api: Airflow's REST API (authenticated).
    :param emu: the emulator's admin API.
    :param handle: the emulator handle (faults).
    :param data: the folder of input files and PID files.
    """

    stack: AirflowStack
    api: AirflowAPI
    emu: EmulatorView
    handle: EmulatorHandle
    data: Path
    listener_enabled: bool = False
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def new_run_id(scenario: str) -> str:
        """A fresh run id per scenario."""
        return f"sys-{scenario}-{uuid.uuid4().hex[:8]}"


def _write_inputs(data: Path) -> None:
    def write(path: Path, lines: int) -> None:
        with path.open("w", encoding="utf-8") as out:
            for i in range(lines):
                line = {
                    "custom_id": f"r-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "messages": [{"role": "user", "content": f"say {i}"}]},
                }
                out.write(json.dumps(line) + "\n")

    for i in range(5):
        write(data / f"big-{i}.jsonl", BIG_LINES)
    write(data / "medium.jsonl", MEDIUM_LINES)


def _keep_logs(stack: AirflowStack | None, emulator: EmulatorProcess | None, reason: str) -> Path:
    destination = CACHE / "system-logs" / time.strftime("%Y%m%d-%H%M%S")
    destination.mkdir(parents=True, exist_ok=True)
    if stack is not None:
        stack.keep_logs(destination)
    if emulator is not None:
        (destination / "emulator.log").write_text("".join(emulator.output))
    (destination / "REASON.txt").write_text(reason + "\n")
    return destination


@pytest.fixture(scope="session")
def system(request: pytest.FixtureRequest) -> Iterator[System]:
    """Start the emulator and the Airflow stack once; stop exactly those processes at the end."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    workdir = Path(tempfile.mkdtemp(prefix="qwenbatch-system-"))
    data = workdir / "data"
    data.mkdir()
    _write_inputs(data)
    emulator = EmulatorProcess(
        EmulatorConfig(
            api_key="sk-system-" + uuid.uuid4().hex[:12],
            validation_delay=0.5,
            lines_per_second=LINES_PER_SECOND,
            finalize_delay=0.3,
            cancel_delay=1.5,
            tick_interval=0.05,
            state_dir=str(workdir / "emulator-state"),
        )
    )
    stack: AirflowStack | None = None
    failed_setup = True
    try:
        handle = emulator.start()
        conn = json.dumps(
            {
                "conn_type": "qwen_batch",
                "password": handle.api_key,
                "host": handle.base_url,
                "extra": {"timeout": 30, "max_retries": 3},
            }
        )
        stack = AirflowStack(
            workdir / "airflow-home",
            conn,
            {
                "QWENBATCH_SYSTEM_DATA": str(data),
                "AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED": "False",
            },
        )
        _TIMINGS["db_prepare_s"] = round(stack.prepare(), 1)
        started = time.monotonic()
        api = stack.start(DAG_IDS)
        _TIMINGS["stack_start_s"] = round(time.monotonic() - started, 1)
        failed_setup = False
        yield System(stack=stack, api=api, emu=EmulatorView(handle), handle=handle, data=data)
    finally:
        failed = failed_setup or any(o in ("failed", "xpassed") for o in _OUTCOMES.values())
        kept = None
        # QWENBATCH_KEEP_SYSTEM_LOGS=1 keeps them after a passing run too (to read what took how long).
        if failed or os.environ.get("QWENBATCH_KEEP_SYSTEM_LOGS") == "1":
            try:
                reason = "setup failed" if failed_setup else ("a scenario failed" if failed else "asked to")
                kept = _keep_logs(stack, emulator, reason)
            except Exception as exc:  # never hide the real failure
                kept = None
                if reporter:
                    reporter.write_line(f"could not keep the system-test logs: {exc!r}")
        if stack is not None:
            stack.stop()
        emulator.stop()
        if kept is not None:
            message = f"system tests: component logs kept in {kept}"
            print("\n" + message)
            _TIMINGS["logs_kept_in"] = str(kept)  # type: ignore[assignment]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where a scenario puts its figures; ``abort_to_cancel_s`` is a list of seconds."""
    entry: dict[str, Any] = {"name": request.node.name, "abort_to_cancel_s": []}
    _RESULTS[request.node.nodeid] = entry
    return entry


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("system") is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            _OUTCOMES[item.nodeid] = "xfailed" if report.skipped else "xpassed"
        else:
            _OUTCOMES[item.nodeid] = (
                "passed" if report.passed else ("skipped" if report.skipped else "failed")
            )


def _figures(values: list[float]) -> dict[str, Any]:
    if not values:
        return {}
    return {
        "n": len(values),
        "median_s": round(statistics.median(values), 2),
        "max_s": round(max(values), 2),
        "values_s": [round(v, 2) for v in values],
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print each scenario's outcome and abort-to-cancel seconds; write ``.tmp/system-summary.json``."""
    if not _RESULTS:
        return
    # One row per scenario; a scenario repeated (QWENBATCH_SYSTEM_REPEAT) pools its figures.
    by_scenario: dict[str, dict[str, Any]] = {}
    rank = {"failed": 4, "xpassed": 3, "not run": 2, "skipped": 1, "xfailed": 1, "passed": 0}
    for nodeid, entry in _RESULTS.items():
        name = entry.get("scenario", entry["name"])
        outcome = _OUTCOMES.get(nodeid, "not run")
        row = by_scenario.setdefault(name, {"scenario": name, "tests": [], "outcome": outcome, "_values": []})
        row["tests"].append(entry["name"])
        if rank.get(outcome, 4) > rank.get(row["outcome"], 4):
            row["outcome"] = outcome
        row["_values"].extend(entry["abort_to_cancel_s"])
        row.update({k: v for k, v in entry.items() if k not in ("name", "abort_to_cancel_s", "scenario")})
    rows = []
    for row in by_scenario.values():
        row["abort_to_cancel"] = _figures(row.pop("_values"))
        rows.append(row)
    rows.sort(key=lambda r: r["scenario"])
    summary = {
        "airflow": _airflow_version(),
        "suite_seconds": round(time.monotonic() - _SESSION_START, 1),
        "cpus": os.cpu_count(),
        "repeat": REPEAT,
        **_TIMINGS,
        "scenarios": rows,
    }
    CACHE.mkdir(exist_ok=True)
    (CACHE / "system-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # Per Airflow version too: `make test-compat` puts each minor's figures in one table.
    (CACHE / f"system-summary-{summary['airflow']}.json").write_text(json.dumps(summary, indent=2) + "\n")
    tr = terminalreporter
    tr.section("qwenbatch system scenarios: abort -> cancel request at the emulator")
    for row in rows:
        fig = row["abort_to_cancel"]
        if fig:
            timing = f"median {fig['median_s']:.2f}s, max {fig['max_s']:.2f}s (n={fig['n']})"
        else:
            timing = row.get("note", "-")
        tr.write_line(f"{row['scenario']:<44} {row['outcome']:<8} {timing}")
    tr.write_line(
        f"suite {summary['suite_seconds']}s (db {_TIMINGS.get('db_prepare_s', '?')}s, "
        f"stack start {_TIMINGS.get('stack_start_s', '?')}s); figures in {CACHE / 'system-summary.json'}"
    )
    if "logs_kept_in" in _TIMINGS:
        tr.write_line(f"component logs kept in {_TIMINGS['logs_kept_in']}")


def _airflow_version() -> str:
    import airflow

    return str(airflow.__version__)
