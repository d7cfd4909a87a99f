"""Retries: which failures are retried, how long the client waits, and when it gives up."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from airflow_provider_qwenbatch.client import (
    QwenBatchConnectionError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from tests.recordings import load

from .conftest import API_KEY, Api, Router, json_response, raising, recorded

MakeApi = Callable[..., Api]
BATCH = "/batches/batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0"
BATCH_ID = "batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0"
THROTTLED = {
    "code": "Throttling.RateQuota",
    "message": "Requests rate limit exceeded",
    "request_id": "rid-body-1",
}


def throttled(retry_after: str | None = "7") -> Callable[[httpx.Request], httpx.Response]:
    headers = {"x-request-id": "rid-429"}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return json_response(429, THROTTLED, headers)


def server_error(status: int = 503, rid: str = "rid-5xx") -> Callable[[httpx.Request], httpx.Response]:
    body = {
        "error": {
            "message": "upstream unavailable",
            "type": "server_error",
            "param": None,
            "code": "ServiceUnavailable",
        }
    }
    return json_response(status, body, {"x-request-id": rid})


def assert_backoff(delays: list[float], policy: RetryPolicy) -> None:
    """Each wait is within [ceiling/2, ceiling] of a doubling ceiling capped at backoff_max."""
    ceilings = [
        min(policy.backoff_max, policy.backoff_base * 2 ** (n - 1)) for n in range(1, len(delays) + 1)
    ]
    for attempt, (delay, ceiling) in enumerate(zip(delays, ceilings, strict=True), start=1):
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay, ceiling)
    # Below the cap, the jitter windows of consecutive retries touch but never overlap: waits grow.
    for n in range(1, len(delays)):
        if ceilings[n] == 2 * ceilings[n - 1]:
            assert delays[n] >= delays[n - 1], (n, delays)


async def test_429_waits_exactly_retry_after(make_api: MakeApi) -> None:
    router = Router().add("GET", BATCH, throttled("7"), recorded("get-inprogress-batch"))
    api = make_api(router)
    batch = await api("retrieve_batch", BATCH_ID)
    assert batch.id == BATCH_ID
    assert api.sleep.delays == [7.0]
    assert len(router.requests) == 2


async def test_retry_after_is_capped(make_api: MakeApi) -> None:
    policy = RetryPolicy(max_retries=2, retry_after_max=60.0)
    router = Router().add("GET", BATCH, throttled("86400"), recorded("get-inprogress-batch"))
    api = make_api(router, retry=policy)
    await api("retrieve_batch", BATCH_ID)
    assert api.sleep.delays == [60.0]


async def test_429_without_retry_after_backs_off(make_api: MakeApi) -> None:
    policy = RetryPolicy(max_retries=3, backoff_base=0.5, backoff_max=30.0)
    router = Router().add("GET", BATCH, throttled(None), throttled(None), recorded("get-inprogress-batch"))
    api = make_api(router, retry=policy)
    await api("retrieve_batch", BATCH_ID)
    assert len(api.sleep.delays) == 2
    assert_backoff(api.sleep.delays, policy)


@pytest.mark.parametrize(
    "failure",
    [
        server_error(500),
        server_error(502),
        server_error(503),
        raising(httpx.ConnectError),
        raising(httpx.ConnectTimeout),
        raising(httpx.ReadTimeout),
        raising(httpx.ReadError),
        raising(httpx.RemoteProtocolError),
    ],
    ids=["500", "502", "503", "connect", "connect-timeout", "read-timeout", "read-error", "protocol"],
)
async def test_safe_calls_retry_transient_failures_with_growing_backoff(
    make_api: MakeApi, failure: Callable[[httpx.Request], httpx.Response]
) -> None:
    policy = RetryPolicy(max_retries=5, backoff_base=0.5, backoff_max=30.0)
    router = Router().add("GET", BATCH, failure, failure, failure, failure, recorded("get-inprogress-batch"))
    api = make_api(router, retry=policy)
    batch = await api("retrieve_batch", BATCH_ID)
    assert batch.id == BATCH_ID
    assert len(router.requests) == 5
    assert len(api.sleep.delays) == 4
    assert_backoff(api.sleep.delays, policy)


async def test_backoff_ceiling_is_respected(make_api: MakeApi) -> None:
    policy = RetryPolicy(max_retries=8, backoff_base=0.5, backoff_max=2.0)
    router = Router().add("GET", BATCH, server_error())
    api = make_api(router, retry=policy)
    with pytest.raises(ServerError):
        await api("retrieve_batch", BATCH_ID)
    assert len(api.sleep.delays) == 8
    assert max(api.sleep.delays) <= 2.0
    assert min(api.sleep.delays[3:]) >= 1.0
    assert_backoff(api.sleep.delays, policy)


async def test_gives_up_after_max_retries_with_a_typed_error(make_api: MakeApi) -> None:
    body = {"code": "InternalError", "message": "the backend fell over", "request_id": "rid-body"}
    router = Router().add("GET", BATCH, json_response(503, body, {"x-request-id": "rid-final"}))
    api = make_api(router, retry=RetryPolicy(max_retries=2))
    with pytest.raises(ServerError) as info:
        await api("retrieve_batch", BATCH_ID)
    err = info.value
    assert len(router.requests) == 3
    assert len(api.sleep.delays) == 2
    assert err.status_code == 503
    assert err.code == "InternalError"
    assert err.message == "the backend fell over"
    assert err.request_id == "rid-final"
    assert "rid-final" in str(err)
    assert API_KEY not in str(err)
    assert API_KEY not in repr(err)


async def test_gives_up_on_connection_failures_with_a_connection_error(make_api: MakeApi) -> None:
    router = Router().add("GET", BATCH, raising(httpx.ConnectError, "connection refused"))
    api = make_api(router, retry=RetryPolicy(max_retries=2))
    with pytest.raises(QwenBatchConnectionError) as info:
        await api("retrieve_batch", BATCH_ID)
    assert len(router.requests) == 3
    assert "connection refused" in str(info.value)
    assert BATCH_ID in str(info.value)
    assert API_KEY not in str(info.value)


async def test_rate_limit_exhausted_is_rate_limit_error(make_api: MakeApi) -> None:
    router = Router().add("GET", "/batches", throttled("1"))
    api = make_api(router, retry=RetryPolicy(max_retries=1))
    with pytest.raises(RateLimitError) as info:
        await api("list_batches")
    assert info.value.retry_after == 1.0
    assert info.value.code == "Throttling.RateQuota"
    assert info.value.request_id == "rid-429"
    assert api.sleep.delays == [1.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
async def test_client_errors_are_not_retried(make_api: MakeApi, status: int) -> None:
    router = Router().add("GET", BATCH, json_response(status, {"error": {"message": "no", "code": "x"}}))
    api = make_api(router, retry=RetryPolicy(max_retries=5))
    with pytest.raises(Exception, match="HTTP"):
        await api("retrieve_batch", BATCH_ID)
    assert len(router.requests) == 1
    assert api.sleep.delays == []


# ---- create is not idempotent ------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (server_error(500), ServerError),
        (server_error(503), ServerError),
        (raising(httpx.ReadTimeout), QwenBatchConnectionError),
        (raising(httpx.ReadError), QwenBatchConnectionError),
        (raising(httpx.RemoteProtocolError), QwenBatchConnectionError),
    ],
    ids=["500", "503", "read-timeout", "read-error", "protocol"],
)
async def test_create_batch_is_not_retried_when_the_server_may_have_acted(
    make_api: MakeApi, failure: Callable[[httpx.Request], httpx.Response], error: type[Exception]
) -> None:
    router = Router().add("POST", "/batches", failure, recorded("create-batch"))
    api = make_api(router, retry=RetryPolicy(max_retries=5))
    with pytest.raises(error):
        await api("create_batch", **load("create-batch").request_json())
    assert len(router.seen("POST", "/batches")) == 1
    assert api.sleep.delays == []


@pytest.mark.parametrize(
    "failure",
    [raising(httpx.ConnectError), raising(httpx.ConnectTimeout), throttled("3")],
    ids=["connect", "connect-timeout", "429"],
)
async def test_create_batch_is_retried_when_nothing_was_created(
    make_api: MakeApi, failure: Callable[[httpx.Request], httpx.Response]
) -> None:
    router = Router().add("POST", "/batches", failure, recorded("create-batch"))
    api = make_api(router, retry=RetryPolicy(max_retries=5))
    batch = await api("create_batch", **load("create-batch").request_json())
    assert batch.id == load("create-batch").json()["id"]
    assert len(router.seen("POST", "/batches")) == 2
    assert len(api.sleep.delays) == 1


async def test_cancel_with_no_retries_is_sent_once(make_api: MakeApi) -> None:
    router = Router().add("POST", BATCH + "/cancel", server_error(500))
    api = make_api(router, retry=RetryPolicy(max_retries=5))
    with pytest.raises(ServerError):
        await api("cancel_batch", BATCH_ID, max_retries=0)
    assert len(router.requests) == 1
    assert api.sleep.delays == []


async def test_cancel_is_retried_like_a_read_by_default(make_api: MakeApi) -> None:
    router = Router().add("POST", BATCH + "/cancel", server_error(500), recorded("cancel-batch"))
    api = make_api(router, retry=RetryPolicy(max_retries=5))
    batch = await api("cancel_batch", BATCH_ID)
    assert batch.status.value == "cancelling"
    assert len(router.requests) == 2


async def test_retry_log_names_the_request_id_not_the_key(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router().add(
        "GET", BATCH, server_error(503, rid="rid-retry-42"), recorded("get-inprogress-batch")
    )
    api = make_api(router)
    with caplog.at_level(logging.DEBUG):
        await api("retrieve_batch", BATCH_ID)
    retry_lines = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retry_lines) == 1
    assert "rid-retry-42" in retry_lines[0]
    assert "503" in retry_lines[0]


async def test_policy_with_no_retries_disables_retrying(make_api: MakeApi) -> None:
    router = Router().add("GET", BATCH, server_error(503), recorded("get-inprogress-batch"))
    api = make_api(router, retry=RetryPolicy(max_retries=0))
    with pytest.raises(ServerError):
        await api("retrieve_batch", BATCH_ID)
    assert len(router.requests) == 1
