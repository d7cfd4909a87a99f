"""The Connection's Singapore workspace domain, test_connection's budget, the env-key notice."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from airflow.sdk import Connection

from airflow_provider_qwenbatch.client.regions import Region
from airflow_provider_qwenbatch.hooks import qwen_batch
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook, settings_from_connection

KEY = "sk-REGIONTEST-0f9e8d7c"
LOG = logging.getLogger("t")


def _conn(**kw: Any) -> Connection:
    extra = kw.pop("extra", None)
    return Connection(conn_id="c", conn_type="qwen_batch", extra=json.dumps(extra) if extra else None, **kw)


def test_workspace_id_builds_the_singapore_workspace_domain() -> None:
    s = settings_from_connection("c", _conn(password=KEY, extra={"workspace_id": "ws-0a1b2c3d4e"}), LOG)
    assert s.base_url == "https://ws-0a1b2c3d4e.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1"
    assert s.region is Region.SINGAPORE
    # Stated region singapore is fine; the Base URL override still wins over both.
    s = settings_from_connection(
        "c", _conn(password=KEY, extra={"workspace_id": "ws-1", "region": "intl"}), LOG
    )
    assert s.base_url.startswith("https://ws-1.ap-southeast-1.maas.aliyuncs.com/")
    s = settings_from_connection(
        "c",
        _conn(password=KEY, host="http://127.0.0.1:9/compatible-mode/v1", extra={"workspace_id": "ws-1"}),
        LOG,
    )
    assert s.base_url == "http://127.0.0.1:9/compatible-mode/v1"


@pytest.mark.parametrize(
    "bad", ["WS-UPPER", "ws_underscore", "ws.dot", "-ws", "a" * 64, "evil.com/x", "ws-1 ; rm", ""]
)
def test_malformed_workspace_id_is_refused_naming_the_field(bad: str) -> None:
    if bad == "":
        # An empty field in the UI means "not set".
        s = settings_from_connection("c", _conn(password=KEY, extra={"workspace_id": bad}), LOG)
        assert s.region is Region.BEIJING
        return
    with pytest.raises(ValueError, match=r"Connection 'c', extra 'workspace_id': .*not a valid workspace id"):
        settings_from_connection("c", _conn(password=KEY, extra={"workspace_id": bad}), LOG)


def test_workspace_id_in_another_region_is_refused() -> None:
    with pytest.raises(ValueError, match=r"workspace domains exist only in the singapore region.*'beijing'"):
        settings_from_connection(
            "c", _conn(password=KEY, extra={"workspace_id": "ws-1", "region": "beijing"}), LOG
        )


def test_workspace_id_is_a_ui_field() -> None:
    from airflow_provider_qwenbatch.get_provider_info import get_provider_info

    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert fields["workspace_id"]["label"] == "Workspace ID (Singapore)"
    assert "ap-southeast-1.maas.aliyuncs.com" in fields["workspace_id"]["description"]


# ---- test_connection on an unreachable host -------------------------------------------------


class Attempts:
    """Every request httpx really sends, with the timeouts it was given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.timeouts: list[dict[str, float | None]] = []
        real = httpx.HTTPTransport.handle_request

        def recording(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
            self.timeouts.append(dict(request.extensions["timeout"]))
            return real(transport, request)

        monkeypatch.setattr(httpx.HTTPTransport, "handle_request", recording)


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()  # nothing listens there: connections are refused
    return port


@pytest.fixture
def blackhole() -> Iterator[int]:
    # Accepts connections (the kernel's backlog) and never answers a byte.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    stop = threading.Event()
    held: list[socket.socket] = []

    def hold() -> None:
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    s.close()


def _hook(monkeypatch: pytest.MonkeyPatch, port: int) -> QwenBatchHook:
    # The Connection's own settings are the slow defaults (60 s, 5 retries): the Test button must not use them.
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_UNREACHABLE",
        json.dumps(
            {
                "conn_type": "qwen_batch",
                "password": KEY,
                "host": f"http://127.0.0.1:{port}/compatible-mode/v1",
            }
        ),
    )
    return QwenBatchHook("qwen_unreachable")


def test_test_connection_refused_port_makes_one_attempt(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    attempts = Attempts(monkeypatch)
    ok, message = _hook(monkeypatch, closed_port).test_connection()
    assert not ok
    assert f"127.0.0.1:{closed_port}" in message
    assert len(attempts.timeouts) == 1  # no retries with back-off


def test_test_connection_blackhole_times_out_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, blackhole: int
) -> None:
    attempts = Attempts(monkeypatch)
    ok, message = _hook(monkeypatch, blackhole).test_connection()
    assert not ok
    assert KEY not in message
    (timeout,) = attempts.timeouts
    # connect + read at most 2.5 s each: the UI's Test button answers within about 5 s.
    assert timeout["connect"] == qwen_batch.TEST_CONNECTION_TIMEOUT
    assert timeout["read"] == qwen_batch.TEST_CONNECTION_TIMEOUT
    assert qwen_batch.TEST_CONNECTION_TIMEOUT * 2 <= 5


def test_test_connection_keeps_a_shorter_timeout_of_the_connection(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    attempts = Attempts(monkeypatch)
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_QUICK",
        json.dumps(
            {
                "conn_type": "qwen_batch",
                "password": KEY,
                "host": f"http://127.0.0.1:{closed_port}/compatible-mode/v1",
                "extra": {"timeout": 1, "connect_timeout": 0.5},
            }
        ),
    )
    QwenBatchHook("qwen_quick").test_connection()
    assert attempts.timeouts[0]["connect"] == 0.5 and attempts.timeouts[0]["read"] == 1.0


# ---- the DASHSCOPE_API_KEY notice -----------------------------------------------------------


def test_env_key_notice_once_per_task_however_many_hooks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    notice = "using the DASHSCOPE_API_KEY environment variable"
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # submit, console link, kill path: each hook resolves the Connection
            assert settings_from_connection("qwen_envkey", _conn(), LOG).api_key == KEY
    assert caplog.text.count(notice) == 1
    # Another task instance (another try) is told again.
    caplog.clear()
    monkeypatch.setattr(qwen_batch, "_task_key", lambda: "dag/run/task/-1/2")
    with caplog.at_level(logging.INFO):
        settings_from_connection("qwen_envkey", _conn(), LOG)
        settings_from_connection("qwen_envkey", _conn(), LOG)
    assert caplog.text.count(notice) == 1
    assert KEY not in caplog.text


def test_measure_unreachable_once(monkeypatch: pytest.MonkeyPatch, blackhole: int) -> None:
    # Not an assert on time: prints the seconds for the report (run with -s).
    started = time.monotonic()
    _hook(monkeypatch, blackhole).test_connection()
    print(f"\ntest_connection on a blackhole: {time.monotonic() - started:.2f}s")
