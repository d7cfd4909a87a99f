"""The emulator as a subprocess: CLI flags, READY line, state-dir restart, and bounded memory."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from emulator_helpers import chat_lines, create, jsonl, upload, wait_status

from airflow_provider_qwenbatch.emulator import EmulatorConfig, EmulatorProcess, FaultSpec
from airflow_provider_qwenbatch.emulator.__main__ import config_from_args, parse_fault
from airflow_provider_qwenbatch.emulator.server import config_to_args


def _client(handle: Any) -> httpx.Client:
    return httpx.Client(
        base_url=handle.base_url, headers={"Authorization": f"Bearer {handle.api_key}"}, timeout=60
    )


def test_cli_flags_round_trip() -> None:
    cfg = EmulatorConfig(
        api_key="k",
        time_scale=3600,
        lines_per_second=5,
        cancel_delay=0.5,
        seed=3,
        shuffle_output=False,
        models=["qwen-plus", "my-finetune"],
        accept_any_model=True,
        test_model_max_concurrent=5,
        faults={
            "create_batch": FaultSpec(p_429=0.5, retry_after=2, fail_next=["429", "drop"]),
            "*": FaultSpec(latency_ms=5),
        },
    )
    assert config_from_args(config_to_args(cfg)) == cfg
    endpoint, spec = parse_fault("get_batch:p_500=0.1,latency_jitter_ms=20")
    assert endpoint == "get_batch"
    assert spec.p_500 == 0.1
    assert spec.latency_jitter_ms == 20
    assert config_from_args(["--port", "0", "--state-dir", "/tmp/x"]).state_dir == "/tmp/x"


def test_subprocess_ready_line_and_stop_by_pid() -> None:
    proc = EmulatorProcess(EmulatorConfig.fast(api_key="sk-proc"))
    with proc as handle:
        assert handle.base_url.startswith("http://127.0.0.1:")
        assert handle.base_url.endswith("/compatible-mode/v1")
        assert any(line.startswith("QWENBATCH_EMULATOR_READY http://127.0.0.1:") for line in proc.output)
        with _client(handle) as http:
            assert http.get("/batches").status_code == 200
        assert handle.health()["status"] == "ok"
        pid = proc.pid
    assert proc.proc is not None
    assert proc.proc.returncode is not None
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()


def test_state_dir_survives_a_restart(tmp_path: Path) -> None:
    cfg = EmulatorConfig.fast(state_dir=str(tmp_path), lines_per_second=100, shuffle_output=False)
    with EmulatorProcess(cfg) as handle, _client(handle) as http:
        f = upload(http, chat_lines(300))
        done_file = upload(http, chat_lines(2))
        done = wait_status(http, create(http, done_file["id"])["id"], "completed")
        b = create(http, f["id"], metadata={"ds_name": "keep me"})
        before = wait_status(http, b["id"], "in_progress")
        time.sleep(0.5)
    # Restarted on the same directory: files, batches and progress are still there.
    with EmulatorProcess(cfg) as handle, _client(handle) as http:
        assert http.get(f"/files/{f['id']}").json()["bytes"] == f["bytes"]
        assert http.get(f"/batches/{done['id']}").json()["status"] == "completed"
        assert len(jsonl(http.get(f"/files/{done['output_file_id']}/content").text)) == 2
        resumed = http.get(f"/batches/{b['id']}").json()
        assert resumed["status"] == "in_progress"
        assert resumed["request_counts"]["completed"] > 0
        assert resumed["in_progress_at"] == before["in_progress_at"]
        final = wait_status(http, b["id"], "completed")
        out = jsonl(http.get(f"/files/{final['output_file_id']}/content").text)
        assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(300))
        assert final["request_counts"] == {"total": 300, "completed": 300, "failed": 0}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "big.jsonl"
    line = (
        json.dumps(
            {
                "custom_id": "x",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "qwen-flash", "p": "z" * 1000},
            }
        ).encode()
        + b"\n"
    )
    with path.open("wb") as fh:
        block = line * 1000
        for _ in range(100 * 1024 * 1024 // len(block) + 1):
            fh.write(block)
    yield path
    path.unlink()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_large_upload_is_streamed_with_bounded_memory(big_file: Path) -> None:
    size = big_file.stat().st_size
    proc = EmulatorProcess(EmulatorConfig.fast())
    with proc as handle, _client(handle) as http:
        assert proc.pid is not None
        http.get("/files")  # warm up imports and the first request path
        before = _rss_kib(proc.pid)
        with big_file.open("rb") as fh:
            r = http.post("/files", files={"file": ("big.jsonl", fh)}, data={"purpose": "batch"})
        assert r.status_code == 200, r.text
        grown = _rss_kib(proc.pid) - before
        assert r.json()["bytes"] == size
        assert size > 100 * 1024 * 1024
        # 100 MB went through; the server grew by far less than the file.
        assert grown < 30 * 1024, f"server RSS grew by {grown} KiB for a {size // 1024} KiB upload"


def test_emulator_does_not_import_airflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, airflow_provider_qwenbatch.emulator, airflow_provider_qwenbatch.emulator.__main__, "
        "airflow_provider_qwenbatch.emulator.testing; "
        "bad = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.') or m == 'pytest'); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
