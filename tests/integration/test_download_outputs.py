"""DownloadBatchResultsOperator's outputs: file modes, the outlet asset event's extra, OpenLineage facets;
and the console link when a submit fails before any batch exists."""

from __future__ import annotations

import json
import logging
import os
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator, SubmitBatchOperator
from tests.integration.dag_folder import load_dags
from tests.integration.helpers import StubTI, chat_requests, context_for

pytestmark = pytest.mark.integration

ASSET_URI = "file:///qwenbatch-tests/results"

DAG_FILE = textwrap.dedent(
    f"""
    import os

    from airflow.sdk import Asset, DAG

    from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator, SubmitBatchOperator

    with DAG(dag_id="qwen_download_to_asset", schedule=None, catchup=False):
        DownloadBatchResultsOperator(
            task_id="download",
            batch_id=os.environ.get("QWEN_TEST_BATCH_ID", "none"),
            destination=os.environ.get("QWEN_TEST_DEST", "/nonexistent"),
            outlets=[Asset(name="qwen_results", uri="{ASSET_URI}")],
        )

    with DAG(dag_id="qwen_submit_fails_early", schedule=None, catchup=False):
        # A line without custom_id: refused before anything is uploaded, so no batch exists.
        SubmitBatchOperator(
            task_id="submit",
            requests=[{{"body": {{"model": "qwen-flash", "messages": []}}}}],
        )
    """
)


@pytest.fixture
def finished_batch(emulator: EmulatorHandle) -> dict[str, Any]:
    emulator.set_config(line_error_rate=0.2, seed=3)
    summary: dict[str, Any] = SubmitBatchOperator(
        task_id="submit", requests=chat_requests(20), poll_interval=0.2
    ).execute(context_for(StubTI()))
    return summary


@pytest.fixture
def umask() -> Iterator[Any]:
    saved = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_result_files_follow_the_umask(
    emulator: EmulatorHandle, finished_batch: dict[str, Any], tmp_path: Path, umask: Any, mask: int, mode: int
) -> None:
    umask(mask)
    result = DownloadBatchResultsOperator(
        task_id="dl", batch_id=finished_batch["batch_id"], destination=str(tmp_path / "out")
    ).execute({})
    for key in ("output_path", "error_path"):
        assert stat.S_IMODE(Path(result[key]).stat().st_mode) == mode, key


def test_outlet_asset_event_carries_what_was_downloaded(
    airflow_db: Path,
    emulator: EmulatorHandle,
    finished_batch: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QWEN_TEST_BATCH_ID", finished_batch["batch_id"])
    monkeypatch.setenv("QWEN_TEST_DEST", str(tmp_path / "out"))
    dags = load_dags(tmp_path, monkeypatch, "qwen_download_to_asset", DAG_FILE)
    dr = dags["qwen_download_to_asset"].test()
    assert str(dr.state) == "success"

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == ASSET_URI, AssetEvent.source_run_id == dr.run_id)
        ).all()
        (event,) = events
        extra = dict(event.extra)
    truth = emulator.batch_state(finished_batch["batch_id"])["results"]
    failed = sum(1 for r in truth if r["status_code"] != 200)
    assert extra["batch_ids"] == [finished_batch["batch_id"]]
    assert (extra["lines"], extra["failed"], extra["succeeded"]) == (20, failed, 20 - failed)
    assert failed > 0
    assert extra["tokens"]["total"] > 0
    assert all(Path(p).is_file() for p in extra["output_paths"])


def test_openlineage_facets_name_remote_files_in_and_stored_files_out(
    emulator: EmulatorHandle, finished_batch: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("airflow.providers.openlineage")
    from airflow.providers.openlineage.extractors.base import DefaultExtractor

    op = DownloadBatchResultsOperator(
        task_id="dl", batch_id=finished_batch["batch_id"], destination=str(tmp_path / "out")
    )
    result = op.execute({})
    # What the OpenLineage listener runs after the task: the operator's own method.
    lineage = DefaultExtractor(op).extract_on_complete(None)  # type: ignore[arg-type]
    assert lineage is not None
    host = emulator.base_url.split("://", 1)[1].split("/", 1)[0]
    assert {(d.namespace, d.name) for d in lineage.inputs} == {
        (f"dashscope://{host}", f"files/{finished_batch['output_file_id']}"),
        (f"dashscope://{host}", f"files/{finished_batch['error_file_id']}"),
    }
    assert {(d.namespace, d.name) for d in lineage.outputs} == {
        ("file", result["output_path"]),
        ("file", result["error_path"]),
    }
    facet = lineage.run_facets["externalQuery"]
    assert facet.externalQueryId == finished_batch["batch_id"]


def test_submit_operator_lineage_names_its_input_file_and_the_batch_results(
    emulator: EmulatorHandle, finished_batch: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("airflow.providers.openlineage")
    from airflow.providers.openlineage.extractors.base import DefaultExtractor

    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_requests(3)))
    op = SubmitBatchOperator(task_id="submit", input_path=str(path), poll_interval=0.2)
    result = op.execute(context_for(StubTI(task_id="submit_lineage")))
    lineage = DefaultExtractor(op).extract_on_complete(None)  # type: ignore[arg-type]
    assert lineage is not None
    host = emulator.base_url.split("://", 1)[1].split("/", 1)[0]
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", str(path))]
    results = [result["output_file_id"], result["error_file_id"]]
    assert result["output_file_id"]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        (f"dashscope://{host}", f"files/{f}") for f in results if f
    ]
    assert lineage.run_facets["externalQuery"].externalQueryId == result["batch_id"]


def test_submit_lineage_builder_input_path_and_result_files(tmp_path: Path) -> None:
    pytest.importorskip("airflow.providers.openlineage")
    from airflow_provider_qwenbatch.lineage import submit_lineage

    base = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    lineage = submit_lineage(
        base_url=base,
        batch_id="batch_1",
        input_path="s3://bucket/in/requests.jsonl",
        input_file_id="file-batch-9",
        result_file_ids=["file-batch_output-1", None],
    )
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://bucket", "in/requests.jsonl")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("dashscope://dashscope-intl.aliyuncs.com", "files/file-batch_output-1")
    ]
    by_id = submit_lineage(
        base_url=base, batch_id=None, input_file_id="https://oss.example/x.jsonl?Signature=s"
    )
    assert [(d.namespace, d.name) for d in by_id.inputs] == [("https://oss.example", "x.jsonl")]
    assert by_id.run_facets == {}


def test_failed_submit_before_a_batch_logs_no_xcom_error(
    airflow_db: Path,
    emulator: EmulatorHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    dags = load_dags(tmp_path, monkeypatch, "qwen_download_to_asset", DAG_FILE)
    with caplog.at_level(logging.DEBUG):
        dr = dags["qwen_submit_fails_early"].test()
    assert str(dr.state) == "failed"
    assert emulator.requests(endpoint="upload_file") == []
    logged = caplog.text + "".join(capfd.readouterr())
    assert "custom_id" in logged  # the task's own, useful error is there
    assert "XCom not found" not in logged
