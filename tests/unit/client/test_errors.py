"""Error mapping: both error body shapes, every status class, broken answers; never the API key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from airflow_provider_qwenbatch.client import (
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    QwenBatchAPIError,
    QwenBatchError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from tests.recordings import load

from .conftest import API_KEY, Api, Router, json_response

MakeApi = Callable[..., Api]
BATCH = "/batches/batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0"
BATCH_ID = "batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0"

OPENAI_SHAPE = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
NATIVE_SHAPE = {
    "code": "InvalidApiKey",
    "message": "Invalid API-key provided.",
    "request_id": "rid-native-body",
}


def assert_no_key(err: BaseException) -> None:
    assert API_KEY not in str(err)
    assert API_KEY not in repr(err)
    assert API_KEY not in repr(vars(err))


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (409, BadRequestError),
        (422, BadRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
    ],
)
async def test_status_maps_to_typed_error(
    make_api: MakeApi, status: int, error: type[QwenBatchAPIError]
) -> None:
    router = Router().add("GET", BATCH, json_response(status, OPENAI_SHAPE, {"x-request-id": "rid-hdr-1"}))
    api = make_api(router, retry=RetryPolicy(max_retries=0))
    with pytest.raises(error) as info:
        await api("retrieve_batch", BATCH_ID)
    err = info.value
    assert type(err) is error
    assert err.status_code == status
    assert err.request_id == "rid-hdr-1"
    assert "rid-hdr-1" in str(err)
    assert f"HTTP {status}" in str(err)
    assert err.method == "GET"
    assert err.url is not None
    assert BATCH_ID in err.url
    assert_no_key(err)


async def test_openai_error_shape(make_api: MakeApi) -> None:
    router = Router().add("GET", BATCH, json_response(401, OPENAI_SHAPE, {"x-request-id": "rid-401"}))
    api = make_api(router)
    with pytest.raises(AuthenticationError) as info:
        await api("retrieve_batch", BATCH_ID)
    assert info.value.code == "invalid_api_key"
    assert info.value.message == "Incorrect API key provided."
    assert "invalid_api_key" in str(info.value)
    assert "Incorrect API key provided." in str(info.value)


async def test_openai_error_shape_without_code_uses_type(make_api: MakeApi) -> None:
    body = {
        "error": {
            "message": "bad window",
            "type": "invalid_request_error",
            "param": "completion_window",
            "code": None,
        }
    }
    router = Router().add("GET", BATCH, json_response(400, body))
    api = make_api(router)
    with pytest.raises(BadRequestError) as info:
        await api("retrieve_batch", BATCH_ID)
    assert info.value.code == "invalid_request_error"
    assert info.value.message == "bad window"


async def test_native_error_shape_takes_request_id_from_the_body(make_api: MakeApi) -> None:
    router = Router().add("GET", BATCH, json_response(401, NATIVE_SHAPE))
    api = make_api(router)
    with pytest.raises(AuthenticationError) as info:
        await api("retrieve_batch", BATCH_ID)
    err = info.value
    assert err.code == "InvalidApiKey"
    assert err.message == "Invalid API-key provided."
    assert err.request_id == "rid-native-body"
    assert "rid-native-body" in str(err)
    assert_no_key(err)


async def test_header_request_id_wins_over_the_body(make_api: MakeApi) -> None:
    router = Router().add("GET", BATCH, json_response(400, NATIVE_SHAPE, {"x-request-id": "rid-header"}))
    api = make_api(router)
    with pytest.raises(BadRequestError) as info:
        await api("retrieve_batch", BATCH_ID)
    assert info.value.request_id == "rid-header"


async def test_html_502_page_is_a_server_error_with_a_clear_message(make_api: MakeApi) -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
    router = Router().add(
        "GET",
        BATCH,
        lambda r: httpx.Response(
            502, text=html, headers={"content-type": "text/html", "x-request-id": "rid-502"}
        ),
    )
    api = make_api(router, retry=RetryPolicy(max_retries=1))
    with pytest.raises(ServerError) as info:
        await api("retrieve_batch", BATCH_ID)
    err = info.value
    assert not isinstance(err, json.JSONDecodeError)
    assert err.status_code == 502
    assert "non-JSON" in str(err)
    assert "502 Bad Gateway" in str(err)
    assert "rid-502" in str(err)
    assert len(router.requests) == 2  # a proxy's 502 is still a transient server failure


async def test_empty_error_body(make_api: MakeApi) -> None:
    router = Router().add("GET", BATCH, lambda r: httpx.Response(500, headers={"x-request-id": "rid-empty"}))
    api = make_api(router, retry=RetryPolicy(max_retries=0))
    with pytest.raises(ServerError, match="empty error body") as info:
        await api("retrieve_batch", BATCH_ID)
    assert "rid-empty" in str(info.value)


async def test_truncated_json_on_200_is_an_invalid_response(make_api: MakeApi) -> None:
    body = load("get-inprogress-batch").response_body
    router = Router().add(
        "GET",
        BATCH,
        lambda r: httpx.Response(
            200, content=body[: len(body) // 2].encode(), headers={"x-request-id": "rid-cut"}
        ),
    )
    api = make_api(router, retry=RetryPolicy(max_retries=0))
    with pytest.raises(InvalidResponseError) as info:
        await api("retrieve_batch", BATCH_ID)
    err = info.value
    assert not isinstance(err, json.JSONDecodeError)
    assert "invalid JSON" in str(err)
    assert "rid-cut" in str(err)
    assert err.status_code == 200
    assert_no_key(err)


async def test_html_page_on_200_is_an_invalid_response(make_api: MakeApi) -> None:
    router = Router().add(
        "GET", BATCH, lambda r: httpx.Response(200, text="<!DOCTYPE html><html><body>Login</body></html>")
    )
    api = make_api(router, retry=RetryPolicy(max_retries=0))
    with pytest.raises(InvalidResponseError, match="HTML page"):
        await api("retrieve_batch", BATCH_ID)


async def test_unknown_status_string_is_an_invalid_response_naming_status(make_api: MakeApi) -> None:
    document = {**load("get-inprogress-batch").json(), "status": "paused"}
    router = Router().add("GET", BATCH, json_response(200, document, {"x-request-id": "rid-paused"}))
    api = make_api(router, retry=RetryPolicy(max_retries=0))
    with pytest.raises(InvalidResponseError) as info:
        await api("retrieve_batch", BATCH_ID)
    text = str(info.value)
    assert "status" in text
    assert "paused" in text
    assert "rid-paused" in text
    assert "Batch" in text


async def test_answer_of_the_wrong_shape_is_an_invalid_response(make_api: MakeApi) -> None:
    router = Router().add("GET", "/batches", json_response(200, {"object": "list", "data": "nope"}))
    api = make_api(router, retry=RetryPolicy(max_retries=0))
    with pytest.raises(InvalidResponseError, match="data"):
        await api("list_batches")


async def test_download_http_error_is_typed(make_api: MakeApi, tmp_path: Path) -> None:
    # Input files cannot be downloaded: the server refuses, and the client says why.
    router = Router().add(
        "GET",
        "/files/file-batch-in/content",
        json_response(
            400, {"error": {"message": "input files cannot be downloaded", "code": "invalid_file"}}
        ),
    )
    api = make_api(router)
    with pytest.raises(BadRequestError, match="input files cannot be downloaded"):
        await api("download_file", "file-batch-in", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("shape", [OPENAI_SHAPE, NATIVE_SHAPE])
async def test_errors_are_all_qwenbatch_errors(make_api: MakeApi, shape: dict[str, object]) -> None:
    router = Router().add("GET", BATCH, json_response(404, shape))
    api = make_api(router)
    with pytest.raises(QwenBatchError):
        await api("retrieve_batch", BATCH_ID)
