"""Fault injection per endpoint, the request log and runtime config."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.emulator import EmulatorConfig, EmulatorHandle, FaultSpec, running_emulator


def test_429_with_retry_after(http: httpx.Client, emu: EmulatorHandle) -> None:
    emu.set_faults({"list_batches": {"p_429": 1.0, "retry_after": 3}})
    r = http.get("/batches")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"
    body = r.json()
    assert body["code"] == "Throttling.RateQuota"
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["message"]
    # Other endpoints are untouched.
    assert http.get("/files").status_code == 200


@pytest.mark.parametrize("kind", ["500", "503"])
def test_5xx_json(http: httpx.Client, emu: EmulatorHandle, kind: str) -> None:
    emu.set_faults({"get_batch": {f"p_{kind}": 1.0}})
    r = http.get("/batches/batch_x")
    assert r.status_code == int(kind)
    assert r.json()["error"]["code"]


def test_502_is_html(http: httpx.Client, emu: EmulatorHandle) -> None:
    emu.set_faults({"*": {"p_502": 1.0}})
    r = http.get("/files")
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in r.text


def test_dropped_connection(http: httpx.Client, emu: EmulatorHandle, helpers: Any) -> None:
    emu.set_faults({"create_batch": FaultSpec(p_drop=1.0)})
    f = helpers.upload(http, helpers.chat_lines(1))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post(
            "/batches",
            json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
    assert http.get("/batches").json()["data"] is None  # not processed
    log = emu.requests(endpoint="create_batch")
    assert log[-1]["fault"] == "drop"
    assert log[-1]["status"] is None


def test_lost_reply_after_processing(http: httpx.Client, emu: EmulatorHandle, helpers: Any) -> None:
    emu.set_faults({"create_batch": FaultSpec(fail_next=["drop_after"])})
    f = helpers.upload(http, helpers.chat_lines(1))
    body = {"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post("/batches", json=body)
    listed = http.get("/batches").json()["data"]
    assert len(listed) == 1  # the batch exists although the client never saw the answer
    assert http.post("/batches", json=body).status_code == 200  # fail_next is used up


def test_fail_next_sequence_and_latency(http: httpx.Client, emu: EmulatorHandle) -> None:
    emu.set_faults({"list_files": {"fail_next": ["429", "500"], "latency_ms": 150, "latency_jitter_ms": 50}})
    started = time.monotonic()
    assert [http.get("/files").status_code for _ in range(3)] == [429, 500, 200]
    assert time.monotonic() - started >= 0.45
    faults = httpx.get(emu.admin_url + "/faults").json()["faults"]
    assert faults["list_files"]["fail_next"] == []
    emu.clear_faults()
    assert httpx.get(emu.admin_url + "/faults").json() == {"faults": {}}


def test_probabilities_are_seeded() -> None:
    def statuses() -> list[int]:
        cfg = EmulatorConfig.fast(seed=42, faults={"list_files": FaultSpec(p_429=0.3, p_500=0.2)})
        with (
            running_emulator(cfg) as emu,
            httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"}) as http,
        ):
            return [http.get("/files").status_code for _ in range(40)]

    first = statuses()
    assert first == statuses()
    assert {200, 429, 500} == set(first)


def test_bad_fault_spec_is_refused(emu: EmulatorHandle) -> None:
    r = httpx.put(emu.admin_url + "/faults", json={"faults": {"x": {"p_429": 2}}})
    assert r.status_code == 400


def test_request_log(http: httpx.Client, emu: EmulatorHandle, helpers: Any) -> None:
    f = helpers.upload(http, helpers.chat_lines(1))
    b = helpers.create(http, f["id"])
    http.get(f"/batches/{b['id']}", params={"x": "1"})
    httpx.get(emu.base_url + "/batches")  # no key
    log = emu.requests()
    assert [e["endpoint"] for e in log] == ["upload_file", "create_batch", "get_batch", "list_batches"]
    assert [e["status"] for e in log] == [200, 200, 200, 401]
    assert log[0]["file_id"] == f["id"]
    assert log[1]["batch_id"] == b["id"]
    assert log[2]["batch_id"] == b["id"]
    assert log[2]["query"] == "x=1"
    assert log[2]["method"] == "GET"
    assert log[0]["monotonic"] <= log[1]["monotonic"]
    assert log[0]["wall"] > 1e9
    assert all(e["fault"] is None and len(e["request_id"]) == 36 for e in log)
    assert [e["seq"] for e in emu.requests(since=log[1]["seq"])] == [log[2]["seq"], log[3]["seq"]]
    assert len(emu.requests(batch_id=b["id"])) == 2


def test_admin_config_health_and_reset(http: httpx.Client, emu: EmulatorHandle, helpers: Any) -> None:
    cfg = emu.set_config(lines_per_second=77, cancel_delay=0.5)
    assert cfg["lines_per_second"] == 77
    assert httpx.put(emu.admin_url + "/config", json={"port": 1}).status_code == 400
    assert httpx.put(emu.admin_url + "/config", json={"lines_per_second": -1}).status_code == 400
    helpers.run_batch(http, helpers.chat_lines(1))
    h = emu.health()
    assert h["status"] == "ok"
    assert h["batches"] == 1
    assert h["files"] == 2
    emu.reset()
    assert emu.health()["batches"] == 0
    assert emu.requests() == []
    assert http.get("/batches").json()["data"] is None
