"""Bad server answers: a clear error from the client and the operators, an error event from the trigger.

The emulator produces the 401, the 404 and the HTML 502 page; answers it cannot produce
(truncated JSON, unknown status, missing fields...) come from a tiny scripted HTTP server on
127.0.0.1 that answers every request with the same raw bytes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.errors import (
    AuthenticationError,
    InvalidResponseError,
    NotFoundError,
    ServerError,
)
from airflow_provider_qwenbatch.client.retry import RetryPolicy
from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.compat import AirflowException
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator, SubmitBatchOperator
from airflow_provider_qwenbatch.sensors.batch import BatchStatusSensor
from airflow_provider_qwenbatch.triggers.batch import MAX_FAILED_POLLS, BatchStatusTrigger
from tests.hardening.helpers import StubTI, chat_rows, context

BATCH_ID = "batch_0b5e7c1e-0000-4000-8000-000000000001"
RID = "rid-hardening-42"
GOOD_BATCH = {
    "id": BATCH_ID,
    "object": "batch",
    "endpoint": "/v1/chat/completions",
    "status": "in_progress",
    "created_at": 1700000000,
    "request_counts": {"total": 3, "completed": 1, "failed": 0},
}
HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>Tengine</center></body></html>"


class RawServer:
    """Answers with the queued ``(status, content_type, body)`` answers, then ``answer``; counts requests."""

    def __init__(self) -> None:
        self.answer: tuple[int, str, bytes] = (200, "application/json", json.dumps(GOOD_BATCH).encode())
        self.queue: list[tuple[int, str, bytes]] = []
        self.hits = 0
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                owner.hits += 1
                owner.paths.append(self.path)
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                status, ctype, body = owner.queue.pop(0) if owner.queue else owner.answer
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.send_header("x-request-id", RID)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _reply

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/compatible-mode/v1"

    def reads_of(self, batch_id: str) -> int:
        """``GET /batches/{batch_id}`` requests received (not list pages)."""
        return sum(1 for p in self.paths if p.endswith(f"/batches/{batch_id}"))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def raw(monkeypatch: pytest.MonkeyPatch) -> Iterator[RawServer]:
    server = RawServer()
    conn = {
        "conn_type": "qwen_batch",
        "password": "sk-raw",
        "host": server.base_url,
        "extra": {"max_retries": 0},
    }
    monkeypatch.setenv("AIRFLOW_CONN_QWEN_RAW", json.dumps(conn))
    yield server
    server.close()


def _client(base_url: str, key: str = "sk-raw") -> BatchClient:
    return BatchClient(key, base_url, retry=RetryPolicy(max_retries=1, backoff_base=0.01), timeout=5.0)


def _json(data: Any) -> tuple[int, str, bytes]:
    return (200, "application/json", json.dumps(data).encode())


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD_BATCH.items() if k != key}


# (id, answer, error type, fragments of the message)
BAD_2XX = [
    (
        "truncated-json",
        (200, "application/json", json.dumps(GOOD_BATCH).encode()[:37]),
        ["invalid JSON", "HTTP 200"],
    ),
    ("html-page-with-200", (200, "text/html", HTML_502), ["an HTML page", "502 Bad Gateway"]),
    ("empty-body", (200, "application/json", b""), ["invalid JSON"]),
    (
        "unknown-status",
        _json({**GOOD_BATCH, "status": "paused_by_operator"}),
        ["not a valid Batch", "status", "paused_by_operator"],
    ),
    ("missing-status", _json(_without("status")), ["not a valid Batch", "status", "Field required"]),
    ("missing-id", _json(_without("id")), ["not a valid Batch", "id", "Field required"]),
    ("json-array", _json([GOOD_BATCH]), ["not a valid Batch"]),
    (
        "counts-not-numbers",
        _json({**GOOD_BATCH, "request_counts": {"total": "many"}}),
        ["request_counts.total"],
    ),
]


@pytest.mark.parametrize(("answer", "fragments"), [pytest.param(a, f, id=i) for i, a, f in BAD_2XX])
def test_client_names_a_malformed_answer(
    raw: RawServer, answer: tuple[int, str, bytes], fragments: list[str]
) -> None:
    raw.answer = answer
    with _client(raw.base_url) as client, pytest.raises(InvalidResponseError) as info:
        client.retrieve_batch(BATCH_ID)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert f"GET {raw.base_url}/batches/{BATCH_ID}" in message and f"x-request-id={RID}" in message
    assert raw.hits == 1  # a malformed 2xx is not retried: the next answer would be no better


def test_client_html_502_is_a_server_error_quoting_the_page(raw: RawServer) -> None:
    raw.answer = (502, "text/html", HTML_502)
    with _client(raw.base_url) as client, pytest.raises(ServerError) as info:
        client.retrieve_batch(BATCH_ID)
    assert "HTTP 502" in str(info.value) and "502 Bad Gateway" in str(info.value)
    assert f"x-request-id={RID}" in str(info.value)
    assert raw.hits == 2  # a read is retried (max_retries=1)


def test_client_native_error_shape_is_parsed(raw: RawServer) -> None:
    raw.answer = (
        500,
        "application/json",
        json.dumps({"code": "InternalError", "message": "boom", "request_id": "r1"}).encode(),
    )
    with _client(raw.base_url) as client, pytest.raises(ServerError) as info:
        client.retrieve_batch(BATCH_ID)
    assert "boom" in str(info.value) and "code=InternalError" in str(info.value)


def test_client_create_is_not_retried_on_a_5xx(raw: RawServer) -> None:
    raw.answer = (503, "text/html", HTML_502)
    with _client(raw.base_url) as client, pytest.raises(ServerError):
        client.create_batch("file-1", "/v1/chat/completions")
    assert raw.hits == 1


def test_client_401_from_the_emulator(emulator: EmulatorHandle) -> None:
    with _client(emulator.base_url, key="sk-wrong-key") as client, pytest.raises(AuthenticationError) as info:
        client.retrieve_batch(BATCH_ID)
    message = str(info.value)
    assert "HTTP 401" in message and "invalid_api_key" in message and "x-request-id=" in message
    assert "sk-wrong-key" not in message
    assert len(emulator.requests()) == 1  # a wrong key is not retried


def test_client_404_from_the_emulator(emulator: EmulatorHandle) -> None:
    with _client(emulator.base_url, emulator.api_key) as client, pytest.raises(NotFoundError) as info:
        client.retrieve_batch(BATCH_ID)
    assert "HTTP 404" in str(info.value) and BATCH_ID in str(info.value)


def test_client_html_502_from_the_emulator(emulator: EmulatorHandle) -> None:
    emulator.set_faults({"get_batch": {"p_502": 1.0}})
    with _client(emulator.base_url) as client, pytest.raises(ServerError) as info:
        client.retrieve_batch(BATCH_ID)
    assert "HTTP 502" in str(info.value) and "non-JSON error body" in str(info.value)


# ---- operators and sensor -----------------------------------------------------------------


@pytest.mark.parametrize(("answer", "fragments"), [pytest.param(a, f, id=i) for i, a, f in BAD_2XX[:5]])
def test_download_operator_fails_clearly(
    raw: RawServer, answer: tuple[int, str, bytes], fragments: list[str], tmp_path: Any
) -> None:
    raw.answer = answer
    op = DownloadBatchResultsOperator(
        task_id="download", batch_id=BATCH_ID, destination=str(tmp_path), conn_id="qwen_raw"
    )
    with pytest.raises(AirflowException) as info:
        op.execute(context(StubTI("d", "r", "download")))
    assert fragments[0] in str(info.value) and f"x-request-id={RID}" in str(info.value)
    assert getattr(info.value, "request_id", None) == RID


def test_sensor_fails_clearly_on_unknown_status(raw: RawServer) -> None:
    raw.answer = _json({**GOOD_BATCH, "status": "archived"})
    sensor = BatchStatusSensor(task_id="wait", batch_id=BATCH_ID, conn_id="qwen_raw")
    with pytest.raises(AirflowException, match="archived"):
        sensor.poke(context(StubTI("d", "r", "wait")))


def test_submit_with_a_wrong_key_stops_at_the_upload(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "qwen_batch", "password": "sk-WRONG-0000", "host": emulator.base_url}
    monkeypatch.setenv("AIRFLOW_CONN_QWEN_WRONGKEY", json.dumps(conn))
    op = SubmitBatchOperator(task_id="submit", requests=chat_rows(2), conn_id="qwen_wrongkey")
    with pytest.raises(AirflowException) as info:
        op.execute(context(StubTI("d", "r", "submit")))
    assert "HTTP 401" in str(info.value) and "sk-WRONG-0000" not in str(info.value)
    assert [e["endpoint"] for e in emulator.requests()] == ["upload_file"]


def test_download_404_names_the_batch(emulator: EmulatorHandle, tmp_path: Any) -> None:
    op = DownloadBatchResultsOperator(task_id="download", batch_id=BATCH_ID, destination=str(tmp_path))
    with pytest.raises(AirflowException) as info:
        op.execute(context(StubTI("d", "r", "download")))
    assert "HTTP 404" in str(info.value) and BATCH_ID in str(info.value)


# ---- trigger: an error event, never an exception out of run() -----------------------------


async def _events(trigger: BatchStatusTrigger, timeout: float = 20.0) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        out = [e.payload async for e in trigger.run()]
        await trigger.cleanup()
        return out

    return await asyncio.wait_for(collect(), timeout)


@pytest.mark.parametrize(("answer", "fragments"), [pytest.param(a, f, id=i) for i, a, f in BAD_2XX])
async def test_trigger_yields_an_error_event_on_a_malformed_answer(
    raw: RawServer, answer: tuple[int, str, bytes], fragments: list[str]
) -> None:
    raw.answer = answer
    events = await _events(BatchStatusTrigger(batch_id=BATCH_ID, conn_id="qwen_raw", poll_interval=0.05))
    assert len(events) == 1
    (event,) = events
    assert event["status"] == "error" and event["batch_id"] == BATCH_ID
    assert fragments[0] in event["message"] and BATCH_ID in event["message"]
    assert raw.reads_of(BATCH_ID) == 1  # the list page failed or did not show it: one read, fatal


async def test_trigger_gives_up_on_endless_502_with_one_error_event(raw: RawServer) -> None:
    raw.answer = (502, "text/html", HTML_502)
    events = await _events(BatchStatusTrigger(batch_id=BATCH_ID, conn_id="qwen_raw", poll_interval=0.01))
    assert [e["status"] for e in events] == ["error"]
    assert "HTTP 502" in events[0]["message"] and f"{MAX_FAILED_POLLS} polls" in events[0]["message"]
    assert raw.reads_of(BATCH_ID) == MAX_FAILED_POLLS


async def test_trigger_recovers_when_the_502s_stop(raw: RawServer) -> None:
    raw.queue = [(502, "text/html", HTML_502)] * 3
    raw.answer = _json({**GOOD_BATCH, "status": "completed", "output_file_id": "file-batch_output-1"})
    events = await _events(BatchStatusTrigger(batch_id=BATCH_ID, conn_id="qwen_raw", poll_interval=0.02))
    assert raw.hits == 4  # 1 list page (a 502, so listing pauses) + 3 reads of the batch
    assert [e["status"] for e in events] == ["success"]


@pytest.mark.parametrize(
    ("key", "batch_id", "fragment"), [("sk-wrong", BATCH_ID, "HTTP 401"), (None, BATCH_ID, "HTTP 404")]
)
async def test_trigger_error_event_on_401_and_404(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, key: str | None, batch_id: str, fragment: str
) -> None:
    conn = {"conn_type": "qwen_batch", "password": key or emulator.api_key, "host": emulator.base_url}
    monkeypatch.setenv("AIRFLOW_CONN_QWEN_EMU", json.dumps(conn))
    events = await _events(BatchStatusTrigger(batch_id=batch_id, conn_id="qwen_emu", poll_interval=0.05))
    assert [e["status"] for e in events] == ["error"]
    assert fragment in events[0]["message"]
    assert len(emulator.requests(endpoint="get_batch")) == 1  # fatal: no polling on


async def test_trigger_error_event_on_an_unknown_connection() -> None:
    events = await _events(
        BatchStatusTrigger(batch_id=BATCH_ID, conn_id="qwen_absent_conn", poll_interval=0.05)
    )
    assert [e["status"] for e in events] == ["error"]
    assert "qwen_absent_conn" in events[0]["message"]
