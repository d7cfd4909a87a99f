"""QwenBatchHook: Connection fields -> client settings, without leaking the key."""

from __future__ import annotations

import json
import logging

import pytest
from airflow.sdk import Connection

from airflow_provider_qwenbatch.client.regions import Region
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook, settings_from_connection

KEY = "sk-HOOKTEST-5a4b3c2d"


def _conn(**kw: object) -> Connection:
    extra = kw.pop("extra", None)
    return Connection(conn_id="c", conn_type="qwen_batch", extra=json.dumps(extra) if extra else None, **kw)  # type: ignore[arg-type]


def test_region_picks_base_url_and_defaults_to_beijing() -> None:
    log = logging.getLogger("t")
    assert settings_from_connection("c", _conn(password=KEY), log).base_url == Region.BEIJING.base_url
    s = settings_from_connection("c", _conn(password=KEY, extra={"region": "singapore"}), log)
    assert s.base_url == "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    assert s.region is Region.SINGAPORE
    # Older UIs store prefixed extras.
    s = settings_from_connection("c", _conn(password=KEY, extra={"extra__qwen_batch__region": "us"}), log)
    assert s.region is Region.US


def test_unknown_region_names_connection_and_field() -> None:
    with pytest.raises(ValueError, match=r"Connection 'c', extra 'region': unknown region 'mars'"):
        settings_from_connection("c", _conn(password=KEY, extra={"region": "mars"}), logging.getLogger("t"))


def test_base_url_override_from_host_full_url_and_uri_parts() -> None:
    log = logging.getLogger("t")
    s = settings_from_connection(
        "c", _conn(password=KEY, host="http://127.0.0.1:8123/compatible-mode/v1/"), log
    )
    assert s.base_url == "http://127.0.0.1:8123/compatible-mode/v1"
    s = settings_from_connection("c", _conn(password=KEY, host="127.0.0.1", port=9000), log)
    assert s.base_url == "http://127.0.0.1:9000/compatible-mode/v1"


def test_timeouts_and_retries_from_extras_with_clear_errors() -> None:
    log = logging.getLogger("t")
    s = settings_from_connection(
        "c", _conn(password=KEY, extra={"timeout": "12", "connect_timeout": 3, "max_retries": 0}), log
    )
    assert (s.timeout, s.connect_timeout, s.max_retries) == (12.0, 3.0, 0)
    with pytest.raises(ValueError, match=r"extra 'timeout': expected a number, got 'soon'"):
        settings_from_connection("c", _conn(password=KEY, extra={"timeout": "soon"}), log)


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"Connection 'c' has no API key .* DASHSCOPE_API_KEY is not set"):
        settings_from_connection("c", _conn(), logging.getLogger("t"))


def test_env_fallback_is_logged_and_key_never_in_repr(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    with caplog.at_level(logging.INFO):
        s = settings_from_connection("c", _conn(), logging.getLogger("t"))
    assert s.api_key == KEY and s.api_key_source == "environment"
    assert "using the DASHSCOPE_API_KEY environment variable" in caplog.text
    assert KEY not in caplog.text
    assert KEY not in repr(s)
    client = s.sync_client()
    assert KEY not in repr(client)
    client.close()


def test_hook_reads_connection_from_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_TEST",
        json.dumps({"conn_type": "qwen_batch", "password": KEY, "extra": {"region": "singapore"}}),
    )
    hook = QwenBatchHook("qwen_test")
    assert hook.settings.region is Region.SINGAPORE
    assert KEY not in repr(hook)
    assert hook.settings.console_url("batch_x").endswith("batch_id=batch_x")


def test_ui_field_behaviour_matches_provider_info() -> None:
    beh = QwenBatchHook.get_ui_field_behaviour()
    assert beh["relabeling"] == {"password": "API Key", "host": "Base URL override"}
    assert set(beh["hidden_fields"]) == {"login", "port", "schema", "extra"}
