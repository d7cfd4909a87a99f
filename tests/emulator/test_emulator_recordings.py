"""The emulator's answers have the keys and JSON types of the recorded real answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.emulator import EmulatorHandle

RECORDINGS = Path(__file__).resolve().parents[1] / "fixtures" / "dashscope-recordings"


def recorded(name: str) -> Any:
    text = (RECORDINGS / f"{name}-compatible-nosse.response.body.txt").read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if name == "get-file-content":
        return [json.loads(line) for line in lines]
    return json.loads(text)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def assert_same_shape(real: Any, ours: Any, path: str = "$", *, free_keys: bool = False) -> None:
    """Same keys and JSON types; null in the recording (an unset field) also matches a value."""
    if real is None or ours is None:
        return  # an unset field may be null on one side and set on the other
    assert _kind(real) == _kind(ours) or {_kind(real), _kind(ours)} <= {"int", "float"}, (
        f"{path}: recorded {_kind(real)}, emulator {_kind(ours)}"
    )
    if isinstance(real, dict):
        if path.endswith(".metadata") or free_keys:
            return  # user-supplied keys
        assert set(real) == set(ours), f"{path}: keys differ: {sorted(set(real) ^ set(ours))}"
        for key in real:
            assert_same_shape(real[key], ours[key], f"{path}.{key}")
    elif isinstance(real, list) and real and ours:
        for item in ours:
            assert_same_shape(real[0], item, f"{path}[]")


META = {
    "ds_name": "测试任务",
    "ds_description": "任务描述",
    "ds_batch_finish_callback": "https://www.cnblogs.com",
}


@pytest.fixture
def completed(http: httpx.Client, helpers: Any) -> dict[str, Any]:
    return helpers.run_batch(http, helpers.chat_lines(3), metadata=META)


def test_create_batch_reply(http: httpx.Client, helpers: Any) -> None:
    f = helpers.upload(http, helpers.chat_lines(2, model="batch-test-model", url="/v1/chat/ds-test"))
    ours = helpers.create(http, f["id"], "/v1/chat/ds-test", metadata=META)
    real = recorded("create-batch")
    assert list(ours) == list(real)  # same keys in the same order
    for key, value in real.items():
        if value is None:
            assert ours[key] is None, key  # every unset field null, like the live service
    assert_same_shape(real, ours)
    assert ours["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


def test_batch_objects_in_every_recorded_status(
    http: httpx.Client, helpers: Any, emu: EmulatorHandle
) -> None:
    done = helpers.run_batch(http, helpers.chat_lines(3), metadata=META)
    assert_same_shape(recorded("get-completed-batch"), done)
    bad = helpers.run_batch(http, helpers.chat_lines(2, model="batch-test-model"), metadata=META)
    assert_same_shape(recorded("get-invalid-batch"), bad)
    assert bad["errors"]["data"][0]["code"] == "mismatched_test_url"

    emu.set_config(lines_per_second=5)
    f = helpers.upload(http, helpers.chat_lines(50))
    b = helpers.create(http, f["id"], metadata=META)
    running = helpers.wait_status(http, b["id"], "in_progress")
    assert_same_shape(recorded("get-inprogress-batch"), running)
    cancel = http.post(f"/batches/{b['id']}/cancel").json()
    assert_same_shape(recorded("cancel-batch"), cancel)
    cancelled = helpers.wait_status(http, b["id"], "cancelled")
    assert_same_shape(recorded("get-cancelled-batch"), cancelled)
    assert cancelled["error_file_id"].startswith("file-batch_output-")


def test_list_pages(http: httpx.Client, helpers: Any, completed: dict[str, Any]) -> None:
    for name, query in [
        ("list-batches-search-ds-name", {"limit": 2, "ds_name": "任务"}),
        ("list-batches-filter-by-input-file-id", {"input_file_ids": completed["input_file_id"]}),
        ("list-batches-search-status", {"status": "completed,cancelled"}),
        ("list-batches-filter-by-time", {"create_after": "20200101000000"}),
        ("list-batches-search-ds-name-second-page", {"limit": 1, "ds_name": "任务"}),
    ]:
        ours = http.get("/batches", params=query).json()
        assert ours["data"], name
        assert_same_shape(recorded(name), ours, name)
    empty = http.get("/batches", params={"limit": 2, "input_file_ids": "hello"}).json()
    assert empty == recorded("list-batches-empty")


def test_file_objects(http: httpx.Client, helpers: Any, completed: dict[str, Any]) -> None:
    f = helpers.upload(http, helpers.chat_lines(1))
    assert_same_shape(recorded("upload-file"), f)
    assert_same_shape(recorded("get-file"), http.get(f"/files/{f['id']}").json())
    assert_same_shape(recorded("list-files"), http.get("/files", params={"limit": 3}).json())
    content = http.get(f"/files/{completed['output_file_id']}/content").text
    ours = [json.loads(x) for x in content.splitlines()]
    for line in ours:
        assert_same_shape(recorded("get-file-content")[0], line)
    deleted = http.delete(f"/files/{f['id']}").json()
    assert_same_shape(recorded("delete-file"), deleted)
    assert list(deleted) == list(recorded("delete-file"))


def test_every_response_has_a_request_id(http: httpx.Client, emu: EmulatorHandle) -> None:
    for r in (http.get("/batches"), http.get("/batches/batch_nope"), httpx.get(emu.admin_url + "/health")):
        assert len(r.headers["x-request-id"]) == 36
