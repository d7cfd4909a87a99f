"""Operators and sensor against the emulator over loopback (only the task instance is a stub)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.exceptions import BatchFailedError, BatchInputError, BatchTimeoutError
from airflow_provider_qwenbatch.operators.batch import (
    CancelBatchOperator,
    DownloadBatchResultsOperator,
    SubmitBatchOperator,
)
from airflow_provider_qwenbatch.sensors.batch import BatchStatusSensor
from tests.integration.helpers import StubTI, chat_requests, context_for, create_batch, status_of, wait_until

pytestmark = pytest.mark.integration


def _submit(**kw: Any) -> SubmitBatchOperator:
    kw.setdefault("task_id", "submit")
    kw.setdefault("poll_interval", 0.2)
    return SubmitBatchOperator(**kw)


def test_submit_waits_and_returns_a_small_summary(emulator: EmulatorHandle) -> None:
    ti = StubTI()
    result = _submit(requests=chat_requests(5)).execute(context_for(ti))
    assert result["status"] == "completed"
    assert result["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert ti.xcom["batch_id"] == result["batch_id"]
    assert result["batch_id"] in ti.xcom["console_url"]
    assert len(json.dumps(result)) < 2000  # XCom carries ids and counts, never payloads
    assert emulator.api_key not in json.dumps(result)


def test_on_kill_during_wait_cancels_within_5s(emulator: EmulatorHandle) -> None:
    emulator.set_config(lines_per_second=20.0)
    op = _submit(requests=chat_requests(2000))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(context_for(StubTI()))
        except BaseException as exc:  # the test only needs the kill's effect on the server
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_until(
        lambda: op.batch_id and status_of(emulator, op.batch_id) == "in_progress", what="batch in progress"
    )
    started = time.monotonic()
    op.on_kill()
    took = time.monotonic() - started
    assert took < 5.0
    assert op.batch_id is not None
    cancels = emulator.requests(endpoint="cancel_batch", batch_id=op.batch_id)
    assert [c["status"] for c in cancels] == [200]
    wait_until(lambda: status_of(emulator, op.batch_id or "") == "cancelled", what="cancelled")
    worker.join(10)
    assert errors and isinstance(errors[0], BatchFailedError)  # the waiting execute sees the cancel


def test_retry_reattaches_instead_of_creating_a_second_batch(emulator: EmulatorHandle) -> None:
    emulator.set_config(lines_per_second=50.0)
    first = _submit(requests=chat_requests(100), wait_for_completion=False)
    s1 = first.execute(context_for(StubTI(try_number=1)))
    second = _submit(requests=chat_requests(100))
    s2 = second.execute(context_for(StubTI(try_number=2)))
    assert s2["batch_id"] == s1["batch_id"]
    assert s2["status"] == "completed"
    assert len(emulator.requests(endpoint="create_batch")) == 1
    assert len(emulator.requests(endpoint="upload_file")) == 1


def test_retry_after_a_failed_batch_creates_a_new_one(emulator: EmulatorHandle) -> None:
    emulator.set_config(lines_per_second=20.0)
    first = _submit(requests=chat_requests(500), wait_for_completion=False)
    s1 = first.execute(context_for(StubTI(try_number=1)))
    CancelBatchOperator(
        task_id="c", batch_ids=s1["batch_id"], wait_for_termination=True, poll_interval=0.1
    ).execute({})
    emulator.set_config(lines_per_second=2000.0)
    s2 = _submit(requests=chat_requests(5)).execute(context_for(StubTI(try_number=2)))
    assert s2["batch_id"] != s1["batch_id"]
    assert len(emulator.requests(endpoint="create_batch")) == 2


def test_other_task_or_run_never_reattaches(emulator: EmulatorHandle) -> None:
    a = _submit(requests=chat_requests(3)).execute(context_for(StubTI(task_id="a", try_number=2)))
    b = _submit(requests=chat_requests(3)).execute(context_for(StubTI(task_id="b", try_number=2)))
    c = _submit(requests=chat_requests(3)).execute(
        context_for(StubTI(task_id="a", run_id="run-2", try_number=2))
    )
    assert len({a["batch_id"], b["batch_id"], c["batch_id"]}) == 3


def test_timeout_cancels_and_fails_clearly(emulator: EmulatorHandle) -> None:
    emulator.set_config(lines_per_second=10.0)
    op = _submit(requests=chat_requests(1000), timeout=1.5)
    with pytest.raises(
        BatchTimeoutError, match=r"still in_progress after the timeout of 2s; cancel: cancel_requested"
    ):
        op.execute(context_for(StubTI()))
    assert op.batch_id is not None
    assert len(emulator.requests(endpoint="cancel_batch", batch_id=op.batch_id)) == 1


def test_invalid_input_fails_before_any_request(emulator: EmulatorHandle, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    rows = chat_requests(3)
    rows[2]["custom_id"] = rows[0]["custom_id"]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(BatchInputError, match=r"bad\.jsonl:3: \[duplicate_custom_id\] field 'custom_id'"):
        _submit(input_path=str(bad)).execute(context_for(StubTI()))
    assert emulator.requests() == []
    assert bad.read_text().count("\n") == 3  # the user's file is untouched


def test_download_counts_each_line_by_its_own_status(emulator: EmulatorHandle, tmp_path: Path) -> None:
    emulator.set_config(line_error_rate=0.1, line_soft_error_rate=0.1, seed=7)
    summary = _submit(requests=chat_requests(200)).execute(context_for(StubTI()))
    # request_counts.failed misses the non-200 lines inside the output file; the download does not.
    truth = emulator.batch_state(summary["batch_id"])["results"]
    expected_failed = sum(1 for r in truth if r["status_code"] != 200)
    assert summary["request_counts"]["failed"] < expected_failed
    result = DownloadBatchResultsOperator(
        task_id="dl",
        batch_id=summary["batch_id"],
        destination=str(tmp_path / "out"),
        delete_remote_files=True,
    ).execute({})
    assert result["lines"] == 200
    assert result["failed"] == expected_failed
    assert result["succeeded"] == 200 - expected_failed
    assert result["tokens"]["total"] > 0
    downloaded = (
        Path(result["output_path"]).read_text().splitlines()
        + Path(result["error_path"]).read_text().splitlines()
    )
    assert sorted(json.loads(x)["custom_id"] for x in downloaded) == sorted(r["custom_id"] for r in truth)
    assert sorted(result["deleted_files"]) == sorted(
        f for f in (summary["output_file_id"], summary["error_file_id"]) if f
    )


def test_download_threshold_fails_but_keeps_files(emulator: EmulatorHandle, tmp_path: Path) -> None:
    emulator.set_config(line_error_rate=0.3, seed=3)
    summary = _submit(requests=chat_requests(50)).execute(context_for(StubTI()))
    op = DownloadBatchResultsOperator(
        task_id="dl",
        batch_id=summary["batch_id"],
        destination=str(tmp_path),
        max_failed_ratio=0.05,
        delete_remote_files=True,
    )
    with pytest.raises(Exception, match=r"failed lines of 50 .* over the threshold"):
        op.execute({})
    assert list((tmp_path / summary["batch_id"]).glob("*.jsonl"))
    assert emulator.requests(endpoint="delete_file") == []


def test_cancel_operator_is_idempotent_and_waits(emulator: EmulatorHandle, tmp_path: Path) -> None:
    done = create_batch(emulator, tmp_path, 2)
    wait_until(lambda: status_of(emulator, done.id) == "completed", what="small batch done")
    emulator.set_config(lines_per_second=20.0)
    running = create_batch(emulator, tmp_path, 1000)
    result = CancelBatchOperator(
        task_id="cancel", batch_ids=[running.id, done.id], wait_for_termination=True, poll_interval=0.1
    ).execute({})
    assert result == {running.id: "cancelled", done.id: "completed"}
    assert len(emulator.requests(endpoint="cancel_batch")) == 1  # the completed one was only read


@pytest.mark.parametrize("ending", ["failed", "cancelled", "expired"])
def test_sensor_fails_with_server_details(emulator: EmulatorHandle, tmp_path: Path, ending: str) -> None:
    if ending == "failed":
        rows = chat_requests(2)
        rows[1]["body"]["model"] = "qwen-max"
        batch = create_batch(emulator, tmp_path, rows=rows)
        expect = r"ended failed.*mismatched_model"
    elif ending == "cancelled":
        emulator.set_config(lines_per_second=5.0)
        batch = create_batch(emulator, tmp_path, 100)
        wait_until(lambda: status_of(emulator, batch.id) == "in_progress", what="in progress")
        with BatchClient(emulator.api_key, emulator.base_url) as client:
            client.cancel_batch(batch.id)
        expect = r"ended cancelled: \d+ completed, \d+ failed of 100"
    else:
        emulator.set_config(lines_per_second=1.0, time_scale=100_000.0)
        batch = create_batch(emulator, tmp_path, 100)
        expect = r"ended expired"
    sensor = BatchStatusSensor(task_id="wait", batch_id=batch.id, poke_interval=0.1, timeout=60)
    with pytest.raises(BatchFailedError, match=expect):
        sensor.execute(context_for(StubTI()))


def test_sensor_soft_fail_skips(emulator: EmulatorHandle, tmp_path: Path) -> None:
    from airflow_provider_qwenbatch.compat import AirflowSkipException

    rows = chat_requests(1)
    rows[0]["url"] = "/v1/embeddings"
    batch = create_batch(emulator, tmp_path, rows=rows)
    sensor = BatchStatusSensor(
        task_id="wait", batch_id=batch.id, poke_interval=0.1, timeout=60, soft_fail=True
    )
    with pytest.raises(AirflowSkipException):
        sensor.execute(context_for(StubTI()))


def test_sensor_success_returns_summary_and_on_kill_cancels(emulator: EmulatorHandle, tmp_path: Path) -> None:
    done = create_batch(emulator, tmp_path, 3)
    result = BatchStatusSensor(task_id="w", batch_id=done.id, poke_interval=0.1, timeout=60).execute(
        context_for(StubTI())
    )
    assert result["status"] == "completed"
    emulator.set_config(lines_per_second=10.0)
    running = create_batch(emulator, tmp_path, 1000)
    sensor = BatchStatusSensor(task_id="w2", batch_id=running.id, poke_interval=0.2, timeout=60)
    worker = threading.Thread(target=lambda: _swallow(sensor.execute, context_for(StubTI())), daemon=True)
    worker.start()
    wait_until(lambda: emulator.requests(endpoint="get_batch", batch_id=running.id), what="first poke")
    sensor.on_kill()
    assert len(emulator.requests(endpoint="cancel_batch", batch_id=running.id)) == 1
    worker.join(10)


def _swallow(fn: Any, *args: Any) -> None:
    # The sensor's own ending after the kill is not what this test checks.
    with contextlib.suppress(BaseException):
        fn(*args)


@pytest.fixture
def memory_store() -> None:
    """An object store Airflow's ObjectStoragePath resolves (fsspec's in-memory filesystem)."""
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())


@pytest.mark.usefixtures("memory_store")
def test_object_storage_input_and_destination(emulator: EmulatorHandle, tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    src = ObjectStoragePath("memory://qwen-in/requests.jsonl")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("\n".join(json.dumps(r) for r in chat_requests(4)) + "\n")
    summary = _submit(input_path="memory://qwen-in/requests.jsonl").execute(context_for(StubTI()))
    assert summary["request_counts"]["completed"] == 4
    result = DownloadBatchResultsOperator(
        task_id="dl", batch_id=summary["batch_id"], destination="memory://qwen-out/results"
    ).execute({})
    # universal-pathlib 0.2 (what Airflow 3.1 allows) spells it memory:///...: the same object.
    expected = f"memory://qwen-out/results/{summary['batch_id']}/output.jsonl"
    assert result["output_path"].replace("memory:///", "memory://") == expected
    lines = ObjectStoragePath(result["output_path"]).read_text().splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in lines) == [f"req-{i}" for i in range(4)]


@pytest.mark.usefixtures("memory_store")
def test_object_storage_input_errors_name_the_uri(emulator: EmulatorHandle) -> None:
    from airflow.sdk import ObjectStoragePath

    src = ObjectStoragePath("memory://qwen-bad/requests.jsonl")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text('{"custom_id": "a"\n')
    with pytest.raises(BatchInputError, match=r"memory://qwen-bad/requests\.jsonl:1: \[invalid_json\]"):
        _submit(input_path="memory://qwen-bad/requests.jsonl").execute(context_for(StubTI()))
    assert emulator.requests() == []


def test_kill_while_create_is_in_flight_cancels_the_new_batch(emulator: EmulatorHandle) -> None:
    emulator.set_config(lines_per_second=20.0)
    emulator.set_faults({"create_batch": {"latency_ms": 1500}})
    op = _submit(requests=chat_requests(500))
    errors: list[BaseException] = []
    worker = threading.Thread(
        target=lambda: _collect_error(errors, op.execute, context_for(StubTI())), daemon=True
    )
    worker.start()
    wait_until(lambda: emulator.requests(endpoint="create_batch"), what="create in flight")
    op.on_kill()  # nothing known to cancel yet
    worker.join(15)
    assert op.batch_id is not None
    assert [c["status"] for c in emulator.requests(endpoint="cancel_batch", batch_id=op.batch_id)] == [200]
    assert errors
    assert "killed while creating batch" in str(errors[0])


def _collect_error(errors: list[BaseException], fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # the test asserts on what execute raised
        errors.append(exc)


def test_cancel_operator_fails_on_an_id_that_does_not_exist(emulator: EmulatorHandle, tmp_path: Path) -> None:
    from airflow_provider_qwenbatch.exceptions import BatchNotFoundError

    emulator.set_config(lines_per_second=20.0)
    running = create_batch(emulator, tmp_path, 1000)
    typo = "batch_00000000-0000-0000-0000-00000000dead"
    op = CancelBatchOperator(task_id="cancel", batch_ids=[typo, running.id], fail_on_error=False)
    with pytest.raises(BatchNotFoundError, match=rf"no such batch: {typo} \(x-request-id="):
        op.execute({})
    # The other id was still handled.
    assert len(emulator.requests(endpoint="cancel_batch", batch_id=running.id)) == 1


def test_cancel_operator_logs_progress_and_accepts_a_batch_already_cancelling(
    emulator: EmulatorHandle, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    emulator.set_config(lines_per_second=20.0, cancel_delay=5.0)  # `cancelling` lasts a while, as live
    batch = create_batch(emulator, tmp_path, 1000)
    with BatchClient(emulator.api_key, emulator.base_url) as client:
        client.cancel_batch(batch.id)  # someone else cancelled first
    result = CancelBatchOperator(task_id="cancel", batch_ids=batch.id, wait_for_termination=True).execute({})
    assert result == {batch.id: "cancelled"}
    assert len(emulator.requests(endpoint="cancel_batch", batch_id=batch.id)) == 1  # not cancelled twice
    out = capfd.readouterr()
    waiting = [x for x in (out.out + out.err).splitlines() if "batches terminal after" in x]
    assert waiting and f"{batch.id} cancelling" in waiting[0]
    # The default poll backs off (2 s, 4 s, ...): a few reads over ~5 s, not one a second.
    assert len(emulator.requests(endpoint="get_batch", batch_id=batch.id)) <= 5
