"""Helpers of the emulator tests (plain functions over an httpx client)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx


def chat_lines(
    n: int, *, model: str = "qwen-flash", url: str = "/v1/chat/completions", start: int = 0
) -> bytes:
    return "".join(
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": url,
                "body": {"model": model, "messages": [{"role": "user", "content": f"Question {i}?"}]},
            }
        )
        + "\n"
        for i in range(start, start + n)
    ).encode()


def upload(http: httpx.Client, data: bytes, name: str = "input.jsonl") -> dict[str, Any]:
    r = http.post("/files", files={"file": (name, data)}, data={"purpose": "batch"})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def create(
    http: httpx.Client, file_id: str, endpoint: str = "/v1/chat/completions", **extra: Any
) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    r = http.post("/batches", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def wait_for(
    http: httpx.Client, batch_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = http.get(f"/batches/{batch_id}").json()
        if predicate(batch):
            return batch
        assert time.monotonic() < deadline, f"timed out; last state {batch}"
        time.sleep(0.02)


def wait_status(http: httpx.Client, batch_id: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
    return wait_for(http, batch_id, lambda b: b["status"] in statuses, timeout)


def run_batch(
    http: httpx.Client, data: bytes, endpoint: str = "/v1/chat/completions", **extra: Any
) -> dict[str, Any]:
    f = upload(http, data)
    b = create(http, f["id"], endpoint, **extra)
    return wait_status(http, b["id"], "completed", "failed", "expired", "cancelled")


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
