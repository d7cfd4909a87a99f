"""1,000 concurrent batches progress together while requests are still answered quickly."""

from __future__ import annotations

import time

import httpx
from emulator_helpers import chat_lines, upload

from airflow_provider_qwenbatch.emulator import EmulatorConfig, running_emulator


def test_thousand_concurrent_batches() -> None:
    cfg = EmulatorConfig.fast(validation_delay=0.5, lines_per_second=10, finalize_delay=0.1)
    with (
        running_emulator(cfg) as emu,
        httpx.Client(
            base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=30
        ) as http,
    ):
        f = upload(http, chat_lines(10))
        body = {"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        ids = [http.post("/batches", json=body).json()["id"] for _ in range(1000)]
        worst = 0.0
        deadline = time.monotonic() + 30
        while True:
            started = time.monotonic()
            page = http.get("/batches", params={"status": "completed", "limit": 1})
            worst = max(worst, time.monotonic() - started)
            assert page.status_code == 200
            health = emu.health()
            if health["active_batches"] == 0:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        # The event loop never stalled: every poll was answered quickly.
        assert worst < 1.0
        states = emu.batches(lines=False)
        assert {s["batch"]["status"] for s in states} == {"completed"}
        assert sum(s["batch"]["request_counts"]["completed"] for s in states) == 10_000
        assert {s["batch"]["id"] for s in states} == set(ids)
