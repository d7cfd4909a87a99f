"""`make demo`: run the main example DAG through a real Airflow against the local emulator.

The same code path a user runs against Qwen Cloud: only the Connection's base URL differs.
Starts the emulator as a separate process, migrates a local SQLite metadata DB (once; ~12 s),
runs ``example_qwenbatch_pipeline`` with ``dag.test()``, prints the batch's journey and its
results, and stops the emulator by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
HOME = DEMO / "airflow"

# Airflow reads its configuration at import: everything is set before the first import.
os.environ["AIRFLOW_HOME"] = str(HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{HOME / 'airflow.db'}"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
os.environ["QWENBATCH_POLL_INTERVAL"] = "1"
os.environ["QWENBATCH_RESULTS_DIR"] = str(DEMO / "results")
sys.path.insert(0, str(ROOT))


def main() -> int:
    """Run the demo; return the process exit code."""
    from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
    from airflow_provider_qwenbatch.emulator.server import EmulatorProcess
    from scripts.airflow_env import migrated_db

    shutil.rmtree(DEMO / "results", ignore_errors=True)
    print("== 1/4 Migrating the local Airflow metadata DB (.demo/airflow/airflow.db)", flush=True)
    migrated_db(HOME / "airflow.db")

    # Default emulator timing: ~1 s validating, a few hundred lines per second.
    config = EmulatorConfig(port=0, api_key="sk-demo-emulator-key")
    print("== 2/4 Starting the Qwen Batch emulator", flush=True)
    with EmulatorProcess(config) as emu:
        print(f"   emulator at {emu.base_url} (pid-managed, stopped at the end)")
        os.environ["AIRFLOW_CONN_QWEN_BATCH_DEFAULT"] = json.dumps(
            {"conn_type": "qwen_batch", "password": emu.api_key, "host": emu.base_url}
        )
        from airflow import settings

        from airflow_provider_qwenbatch.compat import dag_bag_class

        DagBag = dag_bag_class()

        settings.configure_orm()
        bag = DagBag(dag_folder=str(ROOT / "example_dags"))
        if bag.import_errors:
            print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
            return 1
        dag = bag.dags["example_qwenbatch_pipeline"]
        print("== 3/4 Running example_qwenbatch_pipeline with dag.test()", flush=True)
        started = time.monotonic()
        dag_run = dag.test()
        elapsed = time.monotonic() - started
        print(f"\n== 4/4 DAG run {dag_run.run_id}: {dag_run.state} in {elapsed:.1f}s")
        for ti in sorted(dag_run.get_task_instances(), key=lambda t: t.start_date or t.end_date):
            print(f"   task {ti.task_id:<16} {ti.state}")
        _journey(emu)
        return 0 if str(dag_run.state) == "success" else 1


def _journey(emu: object) -> None:
    from airflow_provider_qwenbatch.emulator.server import EmulatorHandle

    assert isinstance(emu, EmulatorHandle)
    log = emu.requests()
    if not log:
        print("   (the emulator received no request)")
        return
    t0 = log[0]["wall"]
    print("\n   The batch's journey, as the emulator saw it:")
    for entry in log:
        when = entry["wall"] - t0
        print(f"   +{when:6.2f}s  {entry.get('method'):<6} {entry.get('path'):<58} -> {entry.get('status')}")
    for state in emu.batches(lines=False):
        batch = state["batch"]
        counts = batch["request_counts"]
        print(
            f"\n   batch {batch['id']}: {batch['status']}, {counts['completed']}/{counts['total']} completed, "
            f"ds_name={batch['metadata'].get('ds_name')!r}"
        )
        stages = (
            "created_at",
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "cancelled_at",
        )
        journey = [(batch[k], k.removesuffix("_at")) for k in stages if batch.get(k)]
        print(
            "   lifecycle: " + " -> ".join(f"{name} (+{ts - batch['created_at']}s)" for ts, name in journey)
        )
    results = sorted((DEMO / "results").rglob("*.jsonl"))
    for path in results:
        print(f"\n   results file {path.relative_to(ROOT)}:")
        for raw in path.read_text(encoding="utf-8").splitlines()[:5]:
            line = json.loads(raw)
            body = (line.get("response") or {}).get("body") or {}
            answer = ((body.get("choices") or [{}])[0].get("message") or {}).get("content", "")
            print(
                f"     {line['custom_id']}: {answer[:70]!r}  tokens={(body.get('usage') or {}).get('total_tokens')}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
