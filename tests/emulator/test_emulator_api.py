"""Auth, files, create-batch checks, pagination and every list filter."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.emulator import EmulatorHandle


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-emulator"}]
)
def test_auth_401(emu: EmulatorHandle, headers: dict[str, str]) -> None:
    r = httpx.get(emu.base_url + "/batches", headers=headers)
    assert r.status_code == 401
    assert r.json() == {
        "error": {
            "message": "Incorrect API key provided. ",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert r.headers["x-request-id"]


def test_unknown_headers_are_accepted(http: httpx.Client) -> None:
    r = http.get("/batches", headers={"X-DashScope-Whatever": "1", "User-Agent": "bruno-runtime/3.2.2"})
    assert r.status_code == 200


def test_files_api(http: httpx.Client, helpers: Any) -> None:
    a = helpers.upload(http, helpers.chat_lines(2), "a.jsonl")
    b = helpers.upload(http, helpers.chat_lines(3), "b.jsonl")
    assert a["id"].startswith("file-batch-")
    assert len(a["id"]) == len("file-batch-") + 24
    assert a["filename"] == "a.jsonl"
    assert a["purpose"] == "batch"
    assert a["status"] == "processed"
    assert a["bytes"] == len(helpers.chat_lines(2))
    listed = http.get("/files", params={"limit": 1}).json()
    assert [f["id"] for f in listed["data"]] == [b["id"]]
    assert listed["has_more"] is True
    listed = http.get("/files", params={"limit": 1, "after": b["id"]}).json()
    assert [f["id"] for f in listed["data"]] == [a["id"]]
    assert listed["has_more"] is False
    assert http.get("/files", params={"purpose": "batch_output"}).json()["data"] == []
    assert http.get("/files", params={"limit": 2001}).status_code == 400
    # Input files cannot be downloaded.
    r = http.get(f"/files/{a['id']}/content")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_file_purpose"
    assert http.delete(f"/files/{a['id']}").json() == {"id": a["id"], "object": "file", "deleted": True}
    for r in (
        http.get(f"/files/{a['id']}"),
        http.delete(f"/files/{a['id']}"),
        http.get("/files/nope/content"),
    ):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "file_not_found"
    assert http.post("/files", data={"purpose": "batch"}, files={"x": ("a", b"1")}).status_code == 400
    assert http.post("/files", files={"file": ("a", b"1")}).status_code == 400


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"completion_window": "23h"}, "completion_window"),
        ({"completion_window": "337h"}, "completion_window"),
        ({"completion_window": "15d"}, "completion_window"),
        ({"endpoint": "/v1/chat/completion"}, "endpoint"),
        ({"metadata": {"ds_name": "x" * 101}}, "metadata.ds_name"),
        ({"metadata": {"ds_description": "x" * 201}}, "metadata.ds_description"),
        ({"input_file_id": "file-batch-missing"}, "input_file_id"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
def test_create_batch_checks(http: httpx.Client, helpers: Any, change: dict[str, Any], param: str) -> None:
    f = helpers.upload(http, helpers.chat_lines(1))
    body = {
        "input_file_id": f["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **change,
    }
    r = http.post("/batches", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_create_batch_accepts_window_forms(http: httpx.Client, helpers: Any) -> None:
    f = helpers.upload(http, helpers.chat_lines(1))
    for window in ("24h", "7d", "14d", "336h"):
        b = helpers.create(
            http,
            f["id"],
            completion_window=window,
            metadata={"ds_name": "x" * 100, "ds_description": "y" * 200},
        )
        assert b["completion_window"] == window
        assert b["id"].startswith("batch_")
        assert len(b["id"]) == len("batch_") + 36


def test_get_missing_batch(http: httpx.Client) -> None:
    r = http.get("/batches/batch_missing")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "batch_not_found"


def test_pagination_and_filters(http: httpx.Client, helpers: Any, emu: EmulatorHandle) -> None:
    emu.set_config(validation_delay=30)  # keep them all validating
    f1 = helpers.upload(http, helpers.chat_lines(1))
    f2 = helpers.upload(http, helpers.chat_lines(1))
    ids = [
        helpers.create(http, (f1 if i % 2 else f2)["id"], metadata={"ds_name": f"run af-{i % 3} name"})["id"]
        for i in range(7)
    ]
    newest_first = list(reversed(ids))
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if after:
            params["after"] = after
        page = http.get("/batches", params=params).json()
        seen += [b["id"] for b in page["data"]]
        assert page["first_id"] == page["data"][0]["id"]
        assert page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == newest_first
    assert len(http.get("/batches").json()["data"]) == 7  # default limit 20
    # `after` may be any batch id, also one the filter would not return.
    page = http.get("/batches", params={"after": ids[3], "ds_name": "af-0"}).json()
    assert [b["id"] for b in page["data"]] == [ids[0]]
    assert [b["id"] for b in http.get("/batches", params={"ds_name": "af-1"}).json()["data"]] == [
        ids[4],
        ids[1],
    ]
    by_file = http.get("/batches", params={"input_file_ids": f"{f1['id']},file-batch-other"}).json()["data"]
    assert [b["id"] for b in by_file] == [ids[5], ids[3], ids[1]]
    assert http.get("/batches", params={"status": "completed,failed"}).json()["data"] is None
    assert len(http.get("/batches", params={"status": "validating"}).json()["data"]) == 7
    now8 = datetime.now(timezone(timedelta(hours=8)))
    fmt = "%Y%m%d%H%M%S"
    after_q = (now8 - timedelta(minutes=5)).strftime(fmt)
    before_q = (now8 + timedelta(minutes=5)).strftime(fmt)
    assert (
        len(http.get("/batches", params={"create_after": after_q, "create_before": before_q}).json()["data"])
        == 7
    )
    assert http.get("/batches", params={"create_after": before_q}).json()["data"] is None
    assert http.get("/batches", params={"create_before": after_q}).json()["data"] is None
    for bad in (
        {"limit": 0},
        {"limit": 101},
        {"status": "bogus"},
        {"create_after": "yesterday"},
        {"after": "batch_unknown"},
        {"input_file_ids": ",".join(f"f{i}" for i in range(21))},
    ):
        assert http.get("/batches", params=bad).status_code == 400, bad
    empty = http.get("/batches", params={"ds_name": "nothing"}).json()
    assert empty == {"object": "list", "data": None, "first_id": None, "last_id": None, "has_more": False}
