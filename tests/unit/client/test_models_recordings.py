"""Every recorded answer of the live service parses into the right model, losslessly."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from airflow_provider_qwenbatch.client import (
    Batch,
    BatchList,
    BatchResultLine,
    BatchStatus,
    FileDeleted,
    FileList,
    FileObject,
)
from tests.recordings import Exchange, load, response_body_files

_ID = r"[^/]+"
# Which model answers which call: decided by the recorded request, so a new recording is
# classified without touching this test.
_MODEL_OF: list[tuple[str, str, type[BaseModel]]] = [
    ("POST", r"/batches", Batch),
    ("GET", rf"/batches/{_ID}", Batch),
    ("POST", rf"/batches/{_ID}/cancel", Batch),
    ("GET", r"/batches", BatchList),
    ("POST", r"/files", FileObject),
    ("GET", r"/files", FileList),
    ("GET", rf"/files/{_ID}", FileObject),
    ("DELETE", rf"/files/{_ID}", FileDeleted),
    ("GET", rf"/files/{_ID}/content", BatchResultLine),
]


def model_for(exchange: Exchange) -> type[BaseModel] | None:
    for method, pattern, model in _MODEL_OF:
        if exchange.method == method and re.fullmatch(pattern, exchange.api_path):
            return model
    return None


def _exchange_of(body_file: Path) -> Exchange:
    return load(body_file.name[: -len(".response.body.txt")])


BODY_FILES = response_body_files()


def test_recordings_are_present() -> None:
    # Guards the parametrisation below against silently running over nothing.
    assert len(BODY_FILES) >= 17


def assert_round_trip(dumped: Any, recorded: Any, where: str = "") -> None:
    """Every recorded key survives with its value; a key the model adds is only ever null."""
    if isinstance(recorded, dict):
        assert isinstance(dumped, dict), where
        for key, value in recorded.items():
            assert key in dumped, f"{where}.{key} lost"
            assert_round_trip(dumped[key], value, f"{where}.{key}")
        for key in dumped.keys() - recorded.keys():
            assert dumped[key] is None, f"{where}.{key} invented: {dumped[key]!r}"
    elif isinstance(recorded, list):
        assert isinstance(dumped, list), where
        assert len(dumped) == len(recorded), where
        for i, (d, r) in enumerate(zip(dumped, recorded, strict=True)):
            assert_round_trip(d, r, f"{where}[{i}]")
    else:
        assert dumped == recorded, f"{where}: {dumped!r} != {recorded!r}"


@pytest.mark.parametrize("body_file", BODY_FILES, ids=lambda p: p.name.split(".")[0])
def test_every_recorded_answer_parses_and_round_trips(body_file: Path) -> None:
    exchange = _exchange_of(body_file)
    model = model_for(exchange)
    assert model is not None, f"{body_file.name}: no model maps {exchange.method} {exchange.api_path}"
    if model is BatchResultLine:
        documents = exchange.json_lines()
        assert documents, "a result file with no lines"
    else:
        documents = [exchange.json()]
    for document in documents:
        parsed = model.model_validate(document)
        assert_round_trip(parsed.model_dump(mode="json"), document, body_file.name)


def test_unknown_fields_are_kept() -> None:
    document = {**load("get-inprogress-batch").json(), "priority": {"level": 3}, "region": "cn"}
    document["request_counts"] = {**document["request_counts"], "skipped": 1}
    batch = Batch.model_validate(document)
    dumped = batch.model_dump(mode="json")
    assert dumped["priority"] == {"level": 3}
    assert dumped["region"] == "cn"
    assert dumped["request_counts"]["skipped"] == 1


def test_in_progress_batch() -> None:
    batch = Batch.model_validate(load("get-inprogress-batch").json())
    assert batch.status is BatchStatus.IN_PROGRESS
    assert not batch.status.is_terminal
    assert batch.status.is_in_flight
    assert batch.expires_at is None
    assert batch.output_file_id is None


def test_deadline_is_created_at_plus_window_while_expires_at_is_null() -> None:
    document = load("get-inprogress-batch").json()
    assert document["expires_at"] is None
    batch = Batch.model_validate(document)
    created = datetime.fromtimestamp(document["created_at"], tz=timezone.utc)
    assert batch.deadline == created + timedelta(hours=24)
    week = Batch.model_validate({**document, "completion_window": "7d"})
    assert week.deadline == created + timedelta(days=7)


def test_deadline_prefers_expires_at_when_the_server_sends_one() -> None:
    document = load("get-inprogress-batch").json()
    expires = document["created_at"] + 3600
    batch = Batch.model_validate({**document, "expires_at": expires})
    assert batch.deadline == datetime.fromtimestamp(expires, tz=timezone.utc)


def test_cancelled_batch_counts_unfinished_requests_as_failed() -> None:
    batch = Batch.model_validate(load("get-cancelled-batch").json())
    assert batch.status is BatchStatus.CANCELLED
    assert batch.status.is_terminal
    assert not batch.status.is_success
    assert batch.counts.failed == 2
    assert batch.counts.completed == 0
    assert batch.output_file_id is None
    # The error file's id starts like an output file's: never infer a role from a prefix.
    assert batch.error_file_id is not None
    assert batch.error_file_id.startswith("file-batch_output-")


def test_cancel_answer_is_cancelling_with_cancelling_at_still_null() -> None:
    batch = Batch.model_validate(load("cancel-batch").json())
    assert batch.status is BatchStatus.CANCELLING
    assert batch.status.is_in_flight
    assert batch.cancelling_at is None


def test_invalid_batch_carries_line_numbered_errors() -> None:
    batch = Batch.model_validate(load("get-invalid-batch").json())
    assert batch.status is BatchStatus.FAILED
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert batch.errors.data[0].line == 1
    assert batch.errors.data[0].code == "url_not_found"
    assert batch.error_list[0].param == "url"
    assert "line 1" in batch.describe_errors()
    assert "url_not_found" in batch.describe_errors()


def test_create_answer_is_validating_with_nulls() -> None:
    document = load("create-batch").json()
    batch = Batch.model_validate(document)
    assert batch.status is BatchStatus.VALIDATING
    assert batch.in_progress_at is None
    assert batch.output_file_id is None
    assert batch.metadata == document["metadata"]


def test_empty_list_page_has_null_data() -> None:
    document = load("list-batches-empty").json()
    assert document["data"] is None
    page = BatchList.model_validate(document)
    assert page.batches == []
    assert page.has_more is False
    assert page.last_id is None


def test_list_page_keeps_order_and_cursor() -> None:
    document = load("list-batches-search-ds-name").json()
    page = BatchList.model_validate(document)
    assert [b.id for b in page.batches] == [b["id"] for b in document["data"]]
    assert page.last_id == document["data"][-1]["id"]
    assert page.has_more is True


def test_file_list_and_file_object() -> None:
    files = FileList.model_validate(load("list-files").json())
    assert [f.id for f in files.files] == ["file-fe-d5c0ea9110bd47afb0505f43"]
    assert files.has_more is False
    f = FileObject.model_validate(load("get-file").json())
    assert f.status == "processed"
    assert f.status_details is None
    assert FileDeleted.model_validate(load("delete-file").json()).deleted is True


def test_result_lines_of_file_content() -> None:
    lines = [BatchResultLine.model_validate(d) for d in load("get-file-content").json_lines()]
    assert [line.custom_id for line in lines] == ["1", "2"]
    assert all(line.ok for line in lines)
    usage = lines[0].usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.total_tokens == 75


def test_result_line_with_non_200_status_is_not_ok() -> None:
    document = load("get-file-content").json_lines()[0]
    document["response"] = {**document["response"], "status_code": 400, "body": {"error": {"message": "bad"}}}
    line = BatchResultLine.model_validate(document)
    assert not line.ok
    assert "400" in line.describe_error()
    assert "bad" in line.describe_error()


# The example of the published cancel-batch doc page (API-FACTS.md): unset timestamps as 0.
DOC_CANCEL_EXAMPLE = json.loads(
    """{
  "id": "batch_abc123", "object": "batch", "endpoint": "/v1/chat/completions",
  "errors": {"object": "list", "data": [{"code": "<string>", "message": "<string>", "param": "<string>", "line": 0}]},
  "input_file_id": "file-abc123", "completion_window": "24h", "status": "validating",
  "output_file_id": "file-xyz789", "error_file_id": "file-err456", "created_at": 1735113344,
  "in_progress_at": 0, "expires_at": 0, "finalizing_at": 0, "completed_at": 0, "failed_at": 0,
  "expired_at": 0, "cancelled_at": 0, "cancelling_at": 0,
  "request_counts": {"total": 0, "completed": 0, "failed": 0},
  "metadata": {"ds_name": "<string>", "ds_description": "<string>"}
}"""
)


def test_zero_timestamps_of_the_doc_example_mean_unset() -> None:
    batch = Batch.model_validate(DOC_CANCEL_EXAMPLE)
    for name in (
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelled_at",
        "cancelling_at",
    ):
        assert getattr(batch, name) is None, name
    assert batch.created_at == DOC_CANCEL_EXAMPLE["created_at"]
    # expires_at 0 must not make the deadline 1970: it comes from created_at.
    created = datetime.fromtimestamp(DOC_CANCEL_EXAMPLE["created_at"], tz=timezone.utc)
    assert batch.deadline == created + timedelta(hours=24)
