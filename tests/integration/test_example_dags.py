"""Every example DAG runs under dag.test() against the emulator over loopback, through a real Airflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator.server import EmulatorHandle

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture
def dags(
    airflow_db: Path, emulator: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("QWENBATCH_POLL_INTERVAL", "0.5")
    monkeypatch.setenv("QWENBATCH_RESULTS_DIR", str(tmp_path / "results"))
    from airflow_provider_qwenbatch.compat import dag_bag_class

    DagBag = dag_bag_class()

    bag = DagBag(dag_folder=str(ROOT / "example_dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


def _run(dag: Any) -> Any:
    dr = dag.test()
    return dr


def _tis(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def test_pipeline_example_succeeds_end_to_end(
    dags: dict[str, Any], emulator: EmulatorHandle, tmp_path: Path
) -> None:
    dr = _run(dags["example_qwenbatch_pipeline"])
    assert str(dr.state) == "success", _tis(dr)
    creates = emulator.requests(endpoint="create_batch")
    assert len(creates) == 1
    (batch,) = [b["batch"] for b in emulator.batches()]
    assert batch["status"] == "completed"
    # Results were downloaded, counted and the remote files deleted.
    files = list((tmp_path / "results" / batch["id"]).glob("*.jsonl"))
    assert [f.name for f in files] == ["output.jsonl"]
    lines = [json.loads(x) for x in files[0].read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["r-001", "r-002", "r-003", "r-004", "r-005"]
    assert emulator.requests(endpoint="delete_file")
    # The batch carries the provider's tag beside the user's ds_name.
    assert batch["metadata"]["ds_name"].startswith("review-labelling af-")


def test_sensor_example_succeeds(dags: dict[str, Any], emulator: EmulatorHandle) -> None:
    dr = _run(dags["example_qwenbatch_sensor"])
    assert str(dr.state) == "success", _tis(dr)
    (batch,) = [b["batch"] for b in emulator.batches()]
    assert batch["status"] == "completed"
    assert batch["endpoint"] == "/v1/embeddings"


def test_cleanup_example_fails_and_its_batch_is_cancelled(
    dags: dict[str, Any], emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listener would race the callback to the same cancel; this test proves the callback.
    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    emulator.set_config(lines_per_second=50.0)  # 2,000 lines: still running when the run fails
    dr = _run(dags["example_qwenbatch_cleanup"])
    assert str(dr.state) == "failed"
    assert _tis(dr)["downstream_step_that_fails"] == "failed"
    (batch,) = [b["batch"] for b in emulator.batches()]
    cancels = emulator.requests(endpoint="cancel_batch", batch_id=batch["id"])
    assert len(cancels) == 1
    assert emulator.batch_state(batch["id"])["batch"]["status"] in ("cancelling", "cancelled")


def test_large_example_runs_three_shards_and_merges_them(
    dags: dict[str, Any], emulator: EmulatorHandle, tmp_path: Path
) -> None:
    dr = _run(dags["example_qwenbatch_large"])
    assert str(dr.state) == "success", _tis(dr)
    creates = [e for e in emulator.requests(endpoint="create_batch") if e.get("status") == 200]
    assert len(creates) == 3 and max(e["unfinished"] for e in creates) <= 2
    out = tmp_path / "results" / "large" / "output.jsonl"
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == [f"ticket-{n:06d}" for n in range(250)]
