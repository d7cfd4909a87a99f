"""``ds_batch_finish_callback`` is POSTed when a batch ends; ``batch-test-model`` runs at most 2 at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.emulator import EmulatorHandle


class Receiver:
    """A user's callback receiver on 127.0.0.1: records each POST; can hold or fail answers."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.release.set()
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                owner.release.wait(timeout=20)
                owner.posts.append(
                    {"path": self.path, "body": body, "type": self.headers.get("content-type")}
                )
                self.send_response(owner.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _meta(url: str) -> dict[str, str]:
    return {"ds_name": "cb", "ds_batch_finish_callback": url}


def test_callback_posts_the_finished_batch(
    http: httpx.Client, helpers: Any, emu: EmulatorHandle, receiver: Receiver
) -> None:
    final = helpers.run_batch(http, helpers.chat_lines(3), metadata=_meta(receiver.url + "/hook?x=1"))
    _wait(lambda: len(receiver.posts) == 1)
    post = receiver.posts[0]
    assert post["path"] == "/hook?x=1"
    assert post["type"] == "application/json"
    assert post["body"] == http.get(f"/batches/{final['id']}").json()
    assert post["body"]["status"] == "completed"
    _wait(lambda: emu.callbacks()[0]["done"])
    [delivery] = emu.callbacks()
    assert delivery["batch_id"] == final["id"]
    assert delivery["http_status"] == 200
    assert delivery["error"] is None


def test_callback_on_failed_and_cancelled_batches(
    http: httpx.Client, helpers: Any, emu: EmulatorHandle, receiver: Receiver
) -> None:
    failed = helpers.run_batch(http, helpers.chat_lines(1, model="qwen-plsu"), metadata=_meta(receiver.url))
    assert failed["status"] == "failed"
    emu.set_config(lines_per_second=5)
    f = helpers.upload(http, helpers.chat_lines(50))
    b = helpers.create(http, f["id"], metadata=_meta(receiver.url))
    http.post(f"/batches/{b['id']}/cancel")
    helpers.wait_status(http, b["id"], "cancelled")
    _wait(lambda: len(receiver.posts) == 2)
    assert sorted(p["body"]["status"] for p in receiver.posts) == ["cancelled", "failed"]
    no_callback = helpers.run_batch(http, helpers.chat_lines(1))
    assert no_callback["status"] == "completed"
    time.sleep(0.2)
    assert len(receiver.posts) == 2  # a batch without the key notifies nobody


def test_a_slow_or_broken_receiver_never_stalls_the_emulator(
    http: httpx.Client, helpers: Any, emu: EmulatorHandle, receiver: Receiver
) -> None:
    receiver.release.clear()  # the receiver holds its answer until released
    first = helpers.run_batch(http, helpers.chat_lines(2), metadata=_meta(receiver.url))
    _wait(lambda: len(emu.callbacks()) == 1)
    # While that callback is still waiting for its answer, other batches run to their end.
    second = helpers.run_batch(http, helpers.chat_lines(2), metadata=_meta("http://127.0.0.1:9/closed"))
    third = helpers.run_batch(http, helpers.chat_lines(2), metadata=_meta("not a url"))
    assert first["status"] == second["status"] == third["status"] == "completed"
    _wait(lambda: all(d["done"] for d in emu.callbacks()[1:]))
    held, refused, bad = emu.callbacks()
    assert held["done"] is False
    assert refused["error"] and refused["http_status"] is None
    assert bad["error"] and "http" in bad["error"]
    receiver.status = 500
    receiver.release.set()
    _wait(lambda: emu.callbacks()[0]["done"])
    assert emu.callbacks()[0]["http_status"] == 500
    assert emu.health()["status"] == "ok"


def _test_model_file(http: httpx.Client, helpers: Any) -> str:
    f: dict[str, Any] = helpers.upload(
        http, helpers.chat_lines(50, model="batch-test-model", url="/v1/chat/ds-test")
    )
    return str(f["id"])


def test_test_model_allows_two_unfinished_batches(
    http: httpx.Client, helpers: Any, emu: EmulatorHandle
) -> None:
    emu.set_config(lines_per_second=5)
    file_id = _test_model_file(http, helpers)
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/ds-test", "completion_window": "24h"}
    one, two = (http.post("/batches", json=body).json() for _ in range(2))
    third = http.post("/batches", json=body)
    assert third.status_code == 429
    assert third.headers["retry-after"] == "1"
    assert third.headers["x-request-id"]
    assert third.json()["error"]["code"] == "Throttling.ConcurrencyQuota"
    assert "batch-test-model" in third.json()["error"]["message"]
    assert len(http.get("/batches").json()["data"]) == 2  # nothing was created
    # Other models are not limited.
    chat = helpers.upload(http, helpers.chat_lines(50))
    assert (
        http.post(
            "/batches", json={**body, "input_file_id": chat["id"], "endpoint": "/v1/chat/completions"}
        ).status_code
        == 200
    )
    # Once one has ended, a new one is accepted.
    http.post(f"/batches/{one['id']}/cancel")
    helpers.wait_status(http, one["id"], "cancelled")
    assert http.post("/batches", json=body).status_code == 200
    assert http.post("/batches", json=body).status_code == 429
    assert two["status"] == "validating"
