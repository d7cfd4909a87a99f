"""SubmitBatchOperator spend safety against the emulator: what a retry, a clear, a kill and a timeout do.

Every test reads the truth from the emulator's request log and stored files. Where Airflow's
own objects decide the outcome (``RuntimeTaskInstance.xcom_pull`` of a mapped task, the task
runner's ``resume_execution``, template rendering), the test runs the DAG with ``dag.test()``.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from tests.integration.conftest import API_KEY
from tests.integration.helpers import StubTI, chat_requests, context_for, status_of, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def files(stored_emulator: tuple[EmulatorHandle, Path]) -> Path:
    return stored_emulator[1]


def _submit(**kw: Any) -> SubmitBatchOperator:
    kw.setdefault("task_id", "submit")
    kw.setdefault("poll_interval", 0.2)
    return SubmitBatchOperator(**kw)


def _batches(emu: EmulatorHandle) -> list[dict[str, Any]]:
    return sorted((b["batch"] for b in emu.batches(lines=False)), key=lambda b: (b["created_at"], b["id"]))


def _cancels(emu: EmulatorHandle, batch_id: str) -> int:
    return len(emu.requests(endpoint="cancel_batch", batch_id=batch_id))


def _prompted(prompt: str, n: int = 3) -> list[dict[str, Any]]:
    rows = chat_requests(n)
    for i, row in enumerate(rows):
        row["body"]["messages"][0]["content"] = f"{prompt} {i}"
    return rows


# ---- deferral timeout / trigger failure, with Airflow's real task runner and XCom --------------


def _serialize(dag: Any) -> None:
    """Write a DAG built in a test to the metadata DB, as the dag-processor would (dag.test() needs it)."""
    import importlib

    from airflow.dag_processing.bundles.manager import DagBundlesManager

    from airflow_provider_qwenbatch.compat import dag_bag_class

    DagBag = dag_bag_class()
    # sync_bag_to_db sits beside DagBag, wherever this minor keeps it.
    sync_bag_to_db = importlib.import_module(DagBag.__module__).sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder="/nonexistent")
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def _resumes_with_fail(error: str) -> type[SubmitBatchOperator]:
    class ResumesWithFail(SubmitBatchOperator):
        """Defers like the real operator, then resumes as the scheduler makes a timed-out or failed trigger resume.

        ``check_trigger_timeouts`` (or a trigger failure) writes ``next_method="__fail__"`` and
        ``next_kwargs={"error": ...}``; this class asks for exactly that resume. Everything else
        (``resume_execution``, XCom, the cancel) is the real operator in Airflow's task runner.
        """

        def defer(self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None) -> Any:
            return super().defer(
                trigger=trigger, method_name="__fail__", kwargs={"error": error}, timeout=timeout
            )

    return ResumesWithFail


def _dag_test(
    dag_id: str, error: str, inputs: list[list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> Any:
    from airflow.sdk import DAG

    # The run-failure listener would cancel every batch of the failed run; the task's own path is under test.
    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    # dag.test() runs a trigger inline; here it never fires, as a trigger that timed out or crashed.
    monkeypatch.setattr("airflow.sdk.definitions.dag._run_inline_trigger", lambda trigger, ti: None)
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        _resumes_with_fail(error).partial(task_id="submit", deferrable=True, poll_interval=0.2).expand(
            requests=inputs
        )
    _serialize(dag)
    return dag.test()


@pytest.mark.usefixtures("airflow_db")
def test_deferral_timeout_of_a_mapped_task_cancels_each_map_indexs_own_batch(
    emu: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.set_config(lines_per_second=20.0)  # 2,000 lines: still running when each map index resumes
    dr = _dag_test(
        "safety_mapped_timeout", "Trigger timeout", [chat_requests(2000) for _ in range(3)], monkeypatch
    )
    states = {ti.map_index: str(ti.state) for ti in dr.get_task_instances()}
    assert states == {0: "failed", 1: "failed", 2: "failed"}
    batches = _batches(emu)
    assert len(batches) == 3
    for batch in batches:
        # Each batch got exactly one cancel: its own task's (a sibling's pull would have hit another).
        assert _cancels(emu, batch["id"]) == 1, batch["id"]
        wait_until(lambda b=batch: status_of(emu, b["id"]) == "cancelled", what=f"{batch['id']} cancelled")


@pytest.mark.usefixtures("airflow_db")
def test_trigger_failure_is_not_an_abort_and_the_retry_reattaches(
    emu: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.set_config(lines_per_second=20.0)
    rows = chat_requests(2000)
    dr = _dag_test("safety_trigger_failure", "Trigger failure", [rows], monkeypatch)
    (ti,) = dr.get_task_instances()
    assert str(ti.state) == "failed"
    (batch,) = _batches(emu)
    assert _cancels(emu, batch["id"]) == 0  # a crashed trigger is no reason to stop a paid batch
    assert status_of(emu, batch["id"]) in ("validating", "in_progress")
    # The retry of that task instance re-attaches instead of paying again.
    retry = StubTI(dr.dag_id, dr.run_id, "submit", try_number=2, map_index=0)
    summary = _submit(requests=rows, wait_for_completion=False).execute(context_for(retry))
    assert summary["batch_id"] == batch["id"]
    assert len(emu.requests(endpoint="create_batch")) == 1


# ---- re-attach rules ---------------------------------------------------------------------------


def test_retry_while_the_batch_is_cancelling_creates_a_fresh_batch(emu: EmulatorHandle) -> None:
    emu.set_config(lines_per_second=20.0, cancel_delay=30.0)  # `cancelling` lasts, as live (tens of seconds)
    rows = chat_requests(500)
    first = _submit(requests=rows, wait_for_completion=False).execute(context_for(StubTI(try_number=1)))
    with BatchClient(emu.api_key, emu.base_url) as client:
        client.cancel_batch(first["batch_id"])
    assert status_of(emu, first["batch_id"]) == "cancelling"
    emu.set_config(lines_per_second=2000.0)
    second = _submit(requests=rows).execute(context_for(StubTI(try_number=2)))
    assert second["batch_id"] != first["batch_id"]
    assert second["status"] == "completed"
    assert len(emu.requests(endpoint="create_batch")) == 2
    assert _cancels(emu, first["batch_id"]) == 1  # only the user's own cancel: it was not re-cancelled


def test_clear_with_changed_input_cancels_the_running_old_batch_and_creates_a_new_one(
    emu: EmulatorHandle, files: Path
) -> None:
    emu.set_config(lines_per_second=20.0)
    old = _submit(requests=_prompted("old", 500), wait_for_completion=False).execute(
        context_for(StubTI(try_number=1))
    )
    emu.set_config(lines_per_second=2000.0)
    new = _submit(requests=_prompted("new")).execute(context_for(StubTI(try_number=2)))
    assert new["batch_id"] != old["batch_id"]
    assert new["status"] == "completed"
    assert _cancels(emu, old["batch_id"]) == 1
    wait_until(lambda: status_of(emu, old["batch_id"]) == "cancelled", what="old batch cancelled")
    stored = (files / emu.batch_state(new["batch_id"])["batch"]["input_file_id"]).read_text()
    assert [json.loads(x)["body"]["messages"][0]["content"] for x in stored.splitlines()] == [
        "new 0",
        "new 1",
        "new 2",
    ]


def test_clear_with_changed_input_after_completion_does_not_return_the_old_results(
    emu: EmulatorHandle,
) -> None:
    done = _submit(requests=_prompted("v1")).execute(context_for(StubTI(try_number=1)))
    assert done["status"] == "completed"
    again = _submit(requests=_prompted("v1")).execute(context_for(StubTI(try_number=2)))
    assert again["batch_id"] == done["batch_id"]  # same input: re-attached, nothing paid twice
    changed = _submit(requests=_prompted("v2")).execute(context_for(StubTI(try_number=3)))
    assert changed["batch_id"] != done["batch_id"]
    assert len(emu.requests(endpoint="create_batch")) == 2
    assert _cancels(emu, done["batch_id"]) == 0
    # Other batch parameters are part of the input too.
    window = _submit(requests=_prompted("v2"), completion_window="48h").execute(
        context_for(StubTI(try_number=4))
    )
    assert window["batch_id"] != changed["batch_id"]


def test_kill_during_upload_creates_no_batch(emu: EmulatorHandle) -> None:
    emu.set_faults({"upload_file": {"latency_ms": 1500}})
    op = _submit(requests=chat_requests(50))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(context_for(StubTI()))
        except BaseException as exc:  # the test asserts on what execute raised
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_until(lambda: emu.requests(endpoint="upload_file"), what="upload in flight")
    op.on_kill()  # nothing to cancel yet
    worker.join(15)
    assert errors and "killed before the batch was created" in str(errors[0])
    assert emu.requests(endpoint="create_batch") == []
    uploaded = [e for e in emu.requests(endpoint="upload_file") if e["status"] == 200]
    assert len(uploaded) == 1
    assert len(emu.requests(endpoint="delete_file")) == 1  # the file is not left in the 10,000-file quota


# ---- requests are not templated -----------------------------------------------------------------

TRICKY = [
    "Hello {{ name }}!",
    "{% for x in items %}{{ x }}{% endfor %}",
    "{# not a comment to us #} keep",
    "Leak {{ conn.qwen_batch_default.password }} here",
    "{{ ds }} {{ var.value.get('x') }}",
]


@pytest.mark.usefixtures("airflow_db")
def test_requests_reach_the_server_byte_for_byte_under_dag_test(emu: EmulatorHandle, files: Path) -> None:
    from airflow.sdk import DAG, task

    def rows(prefix: str) -> list[dict[str, Any]]:
        return [
            {
                "custom_id": f"{prefix}-{i}",
                "body": {"model": "qwen-flash", "messages": [{"role": "user", "content": p}]},
            }
            for i, p in enumerate(TRICKY)
        ]

    with DAG(
        "safety_untemplated_requests", schedule=None, start_date=datetime(2026, 1, 1), catchup=False
    ) as dag:

        @task
        def build() -> list[dict[str, Any]]:
            return rows("x")

        upstream = build()
        from_xcom = SubmitBatchOperator(task_id="from_xcom", requests=upstream, wait_for_completion=False)
        SubmitBatchOperator(task_id="literal", requests=rows("l"), wait_for_completion=False)
    assert upstream.operator in from_xcom.upstream_list  # the XComArg still orders the tasks
    _serialize(dag)
    dr = dag.test()
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert states == {"build": "success", "from_xcom": "success", "literal": "success"}
    batches = _batches(emu)
    assert len(batches) == 2
    for batch in batches:
        stored = (files / batch["input_file_id"]).read_bytes()
        assert API_KEY.encode() not in stored
        sent = [json.loads(line)["body"]["messages"][0]["content"] for line in stored.decode().splitlines()]
        assert sent == TRICKY
    assert "requests" not in SubmitBatchOperator.template_fields  # nor stored as a rendered field


def test_timeout_cancel_retries_a_transient_error(emu: EmulatorHandle) -> None:
    # No SIGKILL clock on the timeout path: a 503 on the cancel must not leave the batch billing.
    from airflow_provider_qwenbatch.exceptions import BatchTimeoutError

    emu.set_config(lines_per_second=10.0)
    emu.set_faults({"cancel_batch": {"fail_next": ["503"]}})
    op = _submit(requests=chat_requests(1000), timeout=1.5)
    with pytest.raises(BatchTimeoutError, match="cancel: cancel_requested"):
        op.execute(context_for(StubTI()))
    assert op.batch_id is not None
    assert [c["status"] for c in emu.requests(endpoint="cancel_batch", batch_id=op.batch_id)] == [503, 200]
