"""The API key appears nowhere a user or another tenant can read it.

A full example DAG run (``example_qwenbatch_pipeline`` under ``dag.test()``) against the
emulator with a distinctive key, then two failing runs (a batch that fails, and a key the
server rejects). The key must appear zero times in: task logs under AIRFLOW_HOME, captured
stdout/stderr, log records, XCom values, rendered template fields, serialized trigger kwargs
as the trigger table stores them, the metadata DB file as a whole, and exception messages.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.compat import AirflowException
from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, EmulatorProcess
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger
from scripts.airflow_env import migrated_db
from tests.hardening.helpers import StubTI, chat_rows, context

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-SECRET-HYGIENE-31337"
# Also look for the key's distinctive middle, in case something cut or re-encoded it.
NEEDLES = (SECRET, "SECRET-HYGIENE-31337", "HYGIENE-31337")


def leaks(text: str | bytes) -> list[str]:
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return [n for n in NEEDLES if n in data]


@pytest.fixture
def own_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A migrated metadata DB of this test alone; the session's DB is restored afterwards."""
    from airflow import settings

    db = migrated_db(tmp_path / "airflow.db")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{db}")
    settings.dispose_orm(do_log=False)
    settings.configure_vars()
    settings.configure_orm()
    yield db
    monkeypatch.undo()
    settings.dispose_orm(do_log=False)
    settings.configure_vars()
    settings.configure_orm()


@pytest.fixture
def secret_emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[EmulatorHandle]:
    with EmulatorProcess(EmulatorConfig.fast(api_key=SECRET, port=0)) as handle:
        conn = {
            "conn_type": "qwen_batch",
            "password": SECRET,
            "host": handle.base_url,
            "extra": {"max_retries": 1},
        }
        monkeypatch.setenv("AIRFLOW_CONN_QWEN_BATCH_DEFAULT", json.dumps(conn))
        monkeypatch.setenv("QWENBATCH_POLL_INTERVAL", "0.3")
        monkeypatch.setenv("QWENBATCH_RESULTS_DIR", str(tmp_path / "results"))
        monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
        yield handle


def _pipeline() -> Any:
    from airflow_provider_qwenbatch.compat import dag_bag_class

    DagBag = dag_bag_class()

    bag = DagBag(dag_folder=str(ROOT / "example_dags" / "example_qwenbatch_pipeline.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["example_qwenbatch_pipeline"]


def _rows(sql: str) -> list[tuple[Any, ...]]:
    from airflow.utils.session import create_session
    from sqlalchemy import text

    with create_session() as session:
        return [tuple(r) for r in session.execute(text(sql)).fetchall()]


def test_api_key_never_leaks(
    own_db: Path,
    secret_emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    exceptions: list[BaseException] = []

    # 1. The full pipeline succeeds.
    dr = _pipeline().test()
    assert str(dr.state) == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert secret_emulator.batches(lines=False)[0]["batch"]["status"] == "completed"

    # 2. A batch that fails on the server (unknown model): the task fails with the server's errors.
    monkeypatch.setenv("QWENBATCH_MODEL", "no-such-model-x")
    dr = _pipeline().test(logical_date=datetime(2026, 2, 1, tzinfo=timezone.utc))
    assert str(dr.state) == "failed"

    # 3. The server rejects the key (rotated): every call answers 401.
    secret_emulator.set_config(api_key="sk-rotated-elsewhere")
    monkeypatch.setenv("QWENBATCH_MODEL", "qwen-flash")
    dr = _pipeline().test(logical_date=datetime(2026, 3, 1, tzinfo=timezone.utc))
    assert str(dr.state) == "failed"
    assert secret_emulator.requests()[-1]["status"] == 401

    # The same failures, held as exception objects (message, repr, formatted traceback).
    op = SubmitBatchOperator(task_id="submit", requests=chat_rows(2))
    with pytest.raises(AirflowException) as rejected:
        op.execute(context(StubTI("hygiene", "direct", "submit")))
    exceptions.append(rejected.value)
    secret_emulator.set_config(api_key=SECRET)
    op = SubmitBatchOperator(
        task_id="submit", requests=chat_rows(2, model="no-such-model-x"), poll_interval=0.1
    )
    with pytest.raises(AirflowException) as failed:
        op.execute(context(StubTI("hygiene", "direct-2", "submit")))
    exceptions.append(failed.value)
    for exc in exceptions:
        text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(vars(exc))
        assert not leaks(text), text

    # Captured output and log records (the message and its raw arguments).
    out, err = capfd.readouterr()
    # What is scanned must hold the runs' task logs and their failures, or the scan proves nothing:
    # the task logs (batches created, the 401 of the rejected key) reach stdout ...
    assert out.count("Created batch ") >= 2 and "HTTP 401" in out + err, (out + err)[-3000:]
    # ... and the records hold the provider's own, with the rejected key's exception attached.
    provider = [r for r in caplog.records if r.name.startswith("airflow_provider_qwenbatch")]
    assert provider, "no log record of the provider was captured"
    assert any(r.exc_info and "HTTP 401" in str(r.exc_info[1]) for r in provider), caplog.text[-3000:]
    assert not leaks(out) and not leaks(err)
    assert not leaks(caplog.text)
    for record in caplog.records:
        assert not leaks(str(record.msg) + repr(record.args)), record

    # Task log files under AIRFLOW_HOME.
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    for path in logs.rglob("*") if logs.exists() else []:
        if path.is_file():
            assert not leaks(path.read_bytes()), path

    # XCom values and rendered template fields are there, and clean.
    xcoms = _rows("SELECT key, value FROM xcom")
    assert any(k == "batch_id" for k, _ in xcoms) and any(k == "return_value" for k, _ in xcoms)
    assert not leaks(repr(xcoms))
    rendered = _rows("SELECT task_id, rendered_fields FROM rendered_task_instance_fields")
    assert {t for t, _ in rendered} >= {"submit", "download"}
    assert not leaks(repr(rendered))
    next_kwargs = _rows("SELECT next_kwargs FROM task_instance")
    assert not leaks(repr(next_kwargs))

    # The trigger as the scheduler stores it in the trigger table (dag.test runs it inline, so
    # store one the way the triggerer path does, then read the row back raw).
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session

    batch_id = secret_emulator.batches(lines=False)[0]["batch"]["id"]
    before = _rows('SELECT id FROM "trigger"')
    with create_session() as session:
        session.add(Trigger.from_object(BatchStatusTrigger(batch_id=batch_id, poll_interval=60)))
    stored = _rows('SELECT classpath, kwargs FROM "trigger"')
    assert len(stored) == len(before) + 1 and all("BatchStatusTrigger" in c for c, _ in stored), (
        before,
        stored,
    )
    assert not leaks(repr(stored))
    with create_session() as session:
        triggers = session.query(Trigger).all()
        assert batch_id in [t.kwargs.get("batch_id") for t in triggers]
        for trigger in triggers:
            assert not leaks(repr(trigger.kwargs)), trigger.kwargs

    # The whole metadata DB file, every table and page.
    from airflow import settings

    settings.dispose_orm(do_log=False)
    assert not leaks(own_db.read_bytes())
    for extra in own_db.parent.glob("airflow.db-*"):  # WAL / journal, if any
        assert not leaks(extra.read_bytes())
