"""Every endpoint of BatchClient and AsyncBatchClient against recorded answers: what goes on the wire."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from airflow_provider_qwenbatch.client import (
    Batch,
    BatchList,
    BatchResultLine,
    BatchStatus,
    FileDeleted,
    FileList,
    FileObject,
)
from tests.recordings import load

from .conftest import API_KEY, Api, Router, api_path, recorded

MakeApi = Callable[..., Api]


def parse_multipart(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """Field name -> (filename, content) of a small multipart request."""
    ctype = request.headers["content-type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    boundary = ctype.split("boundary=", 1)[1].encode()
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in request.content.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        assert part.startswith(b"\r\n")
        assert part.endswith(b"\r\n")
        head, _, body = part[2:-2].partition(b"\r\n\r\n")
        disposition = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-disposition"))
        params = dict(p.strip().split(b"=", 1) for p in disposition.split(b";")[1:] if b"=" in p)
        name = params[b"name"].strip(b'"').decode()
        filename = params[b"filename"].strip(b'"').decode() if b"filename" in params else None
        fields[name] = (filename, body)
    return fields


def assert_authorised(router: Router) -> None:
    assert router.requests
    for request in router.requests:
        assert request.headers["authorization"] == f"Bearer {API_KEY}"


# ---- batches ------------------------------------------------------------------------------


async def test_create_batch_sends_the_recorded_body(make_api: MakeApi) -> None:
    ex = load("create-batch")
    router = Router().add("POST", "/batches", recorded("create-batch"))
    api = make_api(router)
    sent = ex.request_json()
    batch = await api("create_batch", **sent)
    (request,) = router.requests
    assert request.method == "POST"
    assert api_path(request) == "/batches"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == sent
    assert isinstance(batch, Batch)
    assert batch.id == ex.json()["id"]
    assert batch.status is BatchStatus.VALIDATING
    assert batch.x_request_id == ex.request_id
    assert_authorised(router)


async def test_create_batch_without_metadata_sends_no_metadata(make_api: MakeApi) -> None:
    router = Router().add("POST", "/batches", recorded("create-batch"))
    api = make_api(router)
    await api("create_batch", "file-batch-1", "/v1/chat/completions")
    body = json.loads(router.requests[0].content)
    assert body == {
        "input_file_id": "file-batch-1",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"completion_window": "12h"}, "12h"),
        ({"completion_window": "15d"}, "15d"),
        ({"endpoint": "/v1/chat/completion"}, "endpoint"),
        ({"metadata": {"ds_name": "x" * 101}}, "ds_name"),
        ({"metadata": {"ds_description": "x" * 201}}, "ds_description"),
        ({"input_file_id": ""}, "input_file_id"),
    ],
)
async def test_create_batch_refuses_invalid_arguments_before_sending(
    make_api: MakeApi, kwargs: dict[str, object], needle: str
) -> None:
    router = Router().add("POST", "/batches", recorded("create-batch"))
    api = make_api(router)
    args: dict[str, object] = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions", **kwargs}
    with pytest.raises(ValueError, match=needle):
        await api("create_batch", **args)
    assert router.requests == []


async def test_create_batch_accepts_metadata_at_the_limits(make_api: MakeApi) -> None:
    router = Router().add("POST", "/batches", recorded("create-batch"))
    api = make_api(router)
    meta = {"ds_name": "n" * 100, "ds_description": "d" * 200}
    await api("create_batch", "file-1", "/v1/chat/completions", completion_window="336h", metadata=meta)
    assert json.loads(router.requests[0].content)["metadata"] == meta


@pytest.mark.parametrize(
    "name", ["get-inprogress-batch", "get-completed-batch", "get-cancelled-batch", "get-invalid-batch"]
)
async def test_retrieve_batch(make_api: MakeApi, name: str) -> None:
    ex = load(name)
    router = Router().add("GET", ex.api_path, recorded(name))
    api = make_api(router)
    batch = await api("retrieve_batch", ex.json()["id"])
    (request,) = router.requests
    assert request.method == "GET"
    assert api_path(request) == ex.api_path
    assert request.content == b""
    assert batch.model_dump(mode="json")["status"] == ex.json()["status"]
    assert batch.x_request_id == ex.request_id
    assert_authorised(router)


async def test_cancel_batch_posts_without_body(make_api: MakeApi) -> None:
    ex = load("cancel-batch")
    router = Router().add("POST", ex.api_path, recorded("cancel-batch"))
    api = make_api(router)
    batch = await api("cancel_batch", "batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0")
    (request,) = router.requests
    assert request.method == "POST"
    assert api_path(request) == "/batches/batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0/cancel"
    assert request.content == b""
    assert batch.status is BatchStatus.CANCELLING
    assert_authorised(router)


@pytest.mark.parametrize("bad_id", ["", "a/b", "../files", "x?y=1", "x#y"])
async def test_ids_that_would_change_the_url_are_refused(make_api: MakeApi, bad_id: str) -> None:
    router = Router()
    api = make_api(router)
    for method in ("retrieve_batch", "cancel_batch", "retrieve_file", "delete_file"):
        with pytest.raises(ValueError, match="invalid id"):
            await api(method, bad_id)
    assert router.requests == []


async def test_download_refuses_an_id_that_would_change_the_url(make_api: MakeApi, tmp_path: Path) -> None:
    router = Router()
    api = make_api(router)
    with pytest.raises(ValueError, match="invalid id"):
        await api("download_file", "../batches/batch_1", tmp_path / "out.jsonl")
    method = "iter_file_lines" if api.kind == "sync" else "aiter_file_lines"
    with pytest.raises(ValueError, match="invalid id"):
        await api.collect(method, "../batches/batch_1")
    assert router.requests == []
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240


# ---- list filters: each recorded list request is reproduced exactly ------------------------

UTC = timezone.utc


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("list-batches-empty", {"limit": 2, "input_file_ids": ["hello"]}),
        (
            "list-batches-filter-by-input-file-id",
            {"input_file_ids": ["file-batch-c015426ce301481bb13c76b4"] * 2},
        ),
        (
            "list-batches-filter-by-time",
            {
                "create_after": datetime(2026, 4, 17, 8, 20, tzinfo=UTC),
                "create_before": datetime(2026, 4, 17, 9, 0, tzinfo=UTC),
            },
        ),
        ("list-batches-search-ds-name", {"limit": 2, "ds_name": "任务"}),
        (
            "list-batches-search-ds-name-second-page",
            {"after": "batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0", "limit": 1, "ds_name": "任务"},
        ),
        (
            "list-batches-search-status",
            {
                "limit": 2,
                "status": [BatchStatus.COMPLETED, "cancelled"],
                "create_after": datetime(2026, 4, 17, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            },
        ),
    ],
)
async def test_list_batches_reproduces_the_recorded_query(
    make_api: MakeApi, name: str, kwargs: dict[str, object]
) -> None:
    ex = load(name)
    router = Router().add("GET", "/batches", recorded(name))
    api = make_api(router)
    page = await api("list_batches", **kwargs)
    (request,) = router.requests
    assert dict(request.url.params) == ex.query
    assert isinstance(page, BatchList)
    assert [b.id for b in page.batches] == [b["id"] for b in ex.json()["data"] or []]
    assert page.has_more is ex.json()["has_more"]
    assert_authorised(router)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 4, 17, 8, 20, tzinfo=UTC), "20260417162000"),
        (datetime(2026, 4, 17, 16, 20, tzinfo=timezone(timedelta(hours=8))), "20260417162000"),
        (datetime(2026, 4, 16, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))), "20260417125959"),
        (datetime(2026, 12, 31, 20, 0, tzinfo=UTC), "20270101040000"),
    ],
)
async def test_create_after_and_before_are_sent_in_utc8(
    make_api: MakeApi, moment: datetime, expected: str
) -> None:
    router = Router().add("GET", "/batches", recorded("list-batches-empty"))
    api = make_api(router)
    await api("list_batches", create_after=moment, create_before=moment)
    params = router.requests[0].url.params
    assert params["create_after"] == expected
    assert params["create_before"] == expected


@pytest.mark.parametrize("field", ["create_after", "create_before"])
async def test_naive_datetime_is_refused(make_api: MakeApi, field: str) -> None:
    router = Router().add("GET", "/batches", recorded("list-batches-empty"))
    api = make_api(router)
    with pytest.raises(ValueError, match="timezone-aware"):
        await api("list_batches", **{field: datetime(2026, 4, 17, 8, 20)})
    assert router.requests == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("in_progress", "in_progress"),
        (BatchStatus.CANCELLING, "cancelling"),
        (["validating", BatchStatus.FINALIZING], "validating,finalizing"),
        ((BatchStatus.FAILED, BatchStatus.EXPIRED), "failed,expired"),
    ],
)
async def test_status_filter_one_or_many(make_api: MakeApi, status: object, expected: str) -> None:
    router = Router().add("GET", "/batches", recorded("list-batches-empty"))
    api = make_api(router)
    await api("list_batches", status=status)
    assert router.requests[0].url.params["status"] == expected


async def test_unknown_status_filter_is_refused(make_api: MakeApi) -> None:
    router = Router()
    api = make_api(router)
    with pytest.raises(ValueError, match="running"):
        await api("list_batches", status="running")
    assert router.requests == []


async def test_input_file_ids_at_most_twenty(make_api: MakeApi) -> None:
    router = Router().add("GET", "/batches", recorded("list-batches-empty"))
    api = make_api(router)
    ids = [f"file-{i}" for i in range(20)]
    await api("list_batches", input_file_ids=ids)
    assert router.requests[0].url.params["input_file_ids"] == ",".join(ids)
    with pytest.raises(ValueError, match="21"):
        await api("list_batches", input_file_ids=[*ids, "file-20"])
    assert len(router.requests) == 1


@pytest.mark.parametrize("limit", [0, -1, 101])
async def test_list_limit_out_of_bounds(make_api: MakeApi, limit: int) -> None:
    router = Router()
    api = make_api(router)
    with pytest.raises(ValueError, match=str(limit)):
        await api("list_batches", limit=limit)
    assert router.requests == []


@pytest.mark.parametrize("limit", [1, 100])
async def test_list_limit_bounds_accepted(make_api: MakeApi, limit: int) -> None:
    router = Router().add("GET", "/batches", recorded("list-batches-empty"))
    api = make_api(router)
    await api("list_batches", limit=limit)
    assert router.requests[0].url.params["limit"] == str(limit)


async def test_list_without_filters_sends_no_query(make_api: MakeApi) -> None:
    router = Router().add("GET", "/batches", recorded("list-batches-empty"))
    api = make_api(router)
    await api("list_batches")
    assert router.requests[0].url.query == b""


async def test_iter_batches_follows_last_id_until_has_more_is_false(make_api: MakeApi) -> None:
    pages = ["list-batches-search-ds-name", "list-batches-search-ds-name-second-page", "list-batches-empty"]
    router = Router().add("GET", "/batches", *(recorded(p) for p in pages))
    api = make_api(router)
    batches = await api.collect("iter_batches", ds_name="任务", page_size=2)
    expected = [b["id"] for p in pages for b in (load(p).json()["data"] or [])]
    assert [b.id for b in batches] == expected
    afters = [r.url.params.get("after") for r in router.requests]
    assert afters == [None, load(pages[0]).json()["last_id"], load(pages[1]).json()["last_id"]]
    assert all(r.url.params["ds_name"] == "任务" for r in router.requests)
    assert all(r.url.params["limit"] == "2" for r in router.requests)


async def test_iter_batches_stops_on_a_page_without_more(make_api: MakeApi) -> None:
    router = Router().add("GET", "/batches", recorded("list-batches-filter-by-input-file-id"))
    api = make_api(router)
    batches = await api.collect("iter_batches", input_file_ids=["file-batch-c015426ce301481bb13c76b4"])
    assert len(batches) == 2
    assert len(router.requests) == 1


# ---- files --------------------------------------------------------------------------------


async def test_upload_file_is_multipart_with_purpose_batch(make_api: MakeApi, tmp_path: Path) -> None:
    content = (
        b'{"custom_id":"1","method":"POST","url":"/v1/chat/ds-test","body":{"model":"batch-test-model"}}\n'
    )
    path = tmp_path / "requests.jsonl"
    path.write_bytes(content)
    router = Router().add("POST", "/files", recorded("upload-file"))
    api = make_api(router)
    f = await api("upload_file", path)
    (request,) = router.requests
    assert request.method == "POST"
    assert api_path(request) == "/files"
    fields = parse_multipart(request)
    assert fields["purpose"] == (None, b"batch")
    assert fields["file"] == ("requests.jsonl", content)
    assert isinstance(f, FileObject)
    assert f.id == load("upload-file").json()["id"]
    assert f.x_request_id == load("upload-file").request_id
    assert_authorised(router)


async def test_upload_file_with_another_name(make_api: MakeApi, tmp_path: Path) -> None:
    path = tmp_path / "local.jsonl"
    path.write_bytes(b"{}\n")
    router = Router().add("POST", "/files", recorded("upload-file"))
    api = make_api(router)
    await api("upload_file", path, filename="remote.jsonl")
    assert parse_multipart(router.requests[0])["file"][0] == "remote.jsonl"


async def test_upload_is_retried_with_the_whole_file(make_api: MakeApi, tmp_path: Path) -> None:
    content = b"".join(b'{"n":%d}\n' % i for i in range(5000))
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    router = Router().add(
        "POST",
        "/files",
        lambda r: httpx.Response(503, json={"code": "x", "message": "busy"}),
        recorded("upload-file"),
    )
    api = make_api(router)
    await api("upload_file", path)
    assert len(router.requests) == 2
    for request in router.requests:
        assert parse_multipart(request)["file"][1] == content


def test_upload_fileobj_sends_from_the_current_position(tmp_path: Path) -> None:
    from airflow_provider_qwenbatch.client import BatchClient

    from .conftest import BASE_URL

    router = Router().add("POST", "/files", recorded("upload-file"))
    path = tmp_path / "with-header.bin"
    path.write_bytes(b"HEADER-NOT-TO-SEND\n" + b'{"a":1}\n')
    with (
        BatchClient(API_KEY, BASE_URL, transport=httpx.MockTransport(router)) as client,
        path.open("rb") as fh,
    ):
        fh.seek(len(b"HEADER-NOT-TO-SEND\n"))
        client.upload_fileobj(fh, filename="part.jsonl")
    assert parse_multipart(router.requests[0])["file"][1] == b'{"a":1}\n'


async def test_retrieve_file(make_api: MakeApi) -> None:
    ex = load("get-file")
    router = Router().add("GET", ex.api_path, recorded("get-file"))
    api = make_api(router)
    f = await api("retrieve_file", "file-fe-d5c0ea9110bd47afb0505f43")
    assert router.requests[0].method == "GET"
    assert f.model_dump(mode="json", exclude_none=True) == ex.json()
    assert_authorised(router)


async def test_delete_file(make_api: MakeApi) -> None:
    ex = load("delete-file")
    router = Router().add("DELETE", ex.api_path, recorded("delete-file"))
    api = make_api(router)
    result = await api("delete_file", "file-fe-d5c0ea9110bd47afb0505f43")
    assert router.requests[0].method == "DELETE"
    assert api_path(router.requests[0]) == "/files/file-fe-d5c0ea9110bd47afb0505f43"
    assert isinstance(result, FileDeleted)
    assert result.deleted is True
    assert_authorised(router)


async def test_list_files_with_query(make_api: MakeApi) -> None:
    ex = load("list-files")
    router = Router().add("GET", "/files", recorded("list-files"))
    api = make_api(router)
    page = await api("list_files", after="file-fe-e457d4773c3f4c9fbfadffaf", limit=3, purpose="file-extract")
    params = dict(router.requests[0].url.params)
    assert params == {"after": "file-fe-e457d4773c3f4c9fbfadffaf", "limit": "3", "purpose": "file-extract"}
    assert isinstance(page, FileList)
    assert [f.id for f in page.files] == [d["id"] for d in ex.json()["data"]]
    assert_authorised(router)


@pytest.mark.parametrize("limit", [0, 2001])
def test_list_files_limit_bounds(limit: int) -> None:
    from airflow_provider_qwenbatch.client import BatchClient

    router = Router()
    with (
        BatchClient(API_KEY, transport=httpx.MockTransport(router)) as client,
        pytest.raises(ValueError, match=str(limit)),
    ):
        client.list_files(limit=limit)
    assert router.requests == []


async def test_answer_with_a_byte_order_mark_is_parsed(make_api: MakeApi) -> None:
    ex = load("get-file")
    body = "\ufeff" + ex.response_body
    router = Router().add("GET", ex.api_path, lambda r: httpx.Response(200, content=body.encode("utf-8")))
    api = make_api(router)
    f = await api("retrieve_file", "file-fe-d5c0ea9110bd47afb0505f43")
    assert f.id == ex.json()["id"]


async def test_download_file_writes_the_recorded_content(make_api: MakeApi, tmp_path: Path) -> None:
    ex = load("get-file-content")
    router = Router().add("GET", ex.api_path, recorded("get-file-content"))
    api = make_api(router)
    dest = tmp_path / "sub" / "results.jsonl"
    written = await api("download_file", "file-batch_output-c5f57bf1fbc749cdae9676ba", dest)
    assert dest.read_bytes() == ex.response_body.encode("utf-8")
    assert written == dest.stat().st_size
    assert [p.name for p in dest.parent.iterdir()] == ["results.jsonl"]
    assert_authorised(router)


async def test_file_lines_are_streamed(make_api: MakeApi) -> None:
    ex = load("get-file-content")
    router = Router().add("GET", ex.api_path, recorded("get-file-content"))
    api = make_api(router)
    method = "iter_file_lines" if api.kind == "sync" else "aiter_file_lines"
    lines = await api.collect(method, "file-batch_output-c5f57bf1fbc749cdae9676ba")
    assert lines == [line for line in ex.response_body.splitlines() if line.strip()]
    parsed = [BatchResultLine.model_validate_json(line) for line in lines]
    assert {p.custom_id for p in parsed} == {"1", "2"}


async def test_file_lines_skip_blank_lines(make_api: MakeApi) -> None:
    body = b'{"custom_id":"a"}\n\n\r\n{"custom_id":"b"}'
    router = Router().add("GET", "/files/file-x/content", lambda r: httpx.Response(200, content=body))
    api = make_api(router)
    method = "iter_file_lines" if api.kind == "sync" else "aiter_file_lines"
    assert await api.collect(method, "file-x") == ['{"custom_id":"a"}', '{"custom_id":"b"}']


async def test_base_url_trailing_slash_and_region(kind: str) -> None:
    from airflow_provider_qwenbatch.client import AsyncBatchClient, BatchClient, Region

    router = Router().add("GET", "/batches", recorded("list-batches-empty"))
    base = Region.SINGAPORE.base_url + "/"
    if kind == "sync":
        with BatchClient(API_KEY, base, transport=httpx.MockTransport(router)) as client:
            client.list_batches()
    else:

        async def handler(request: httpx.Request) -> httpx.Response:
            return router(request)

        async with AsyncBatchClient(API_KEY, base, transport=httpx.MockTransport(handler)) as aclient:
            await aclient.list_batches()
    assert str(router.requests[0].url) == "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/batches"


def test_client_repr_hides_the_key() -> None:
    from airflow_provider_qwenbatch.client import AsyncBatchClient, BatchClient

    for client in (BatchClient(API_KEY), AsyncBatchClient(API_KEY)):
        assert API_KEY not in repr(client)
        assert API_KEY not in str(client)
        assert "dashscope.aliyuncs.com" in repr(client)


def test_missing_api_key_is_refused() -> None:
    from airflow_provider_qwenbatch.client import BatchClient, QwenBatchError

    with pytest.raises(QwenBatchError, match="API key"):
        BatchClient("")


def test_wait_for_batch_polls_until_terminal() -> None:
    from airflow_provider_qwenbatch.client import BatchClient

    from .conftest import BASE_URL, SleepRecorder

    path = load("get-inprogress-batch").api_path
    router = Router().add(
        "GET",
        path,
        recorded("get-inprogress-batch"),
        recorded("get-inprogress-batch"),
        recorded("get-cancelled-batch"),
    )
    sleep = SleepRecorder()
    seen: list[str] = []
    with BatchClient(API_KEY, BASE_URL, transport=httpx.MockTransport(router), sleep=sleep) as client:
        batch = client.wait_for_batch(
            "batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0",
            poll_interval=60.0,
            on_poll=lambda b: seen.append(b.status.value),
        )
    assert batch.status is BatchStatus.CANCELLED
    assert seen == ["in_progress", "in_progress", "cancelled"]
    assert sleep.delays == [60.0, 60.0]


def test_wait_for_batch_gives_up_after_its_timeout() -> None:
    from airflow_provider_qwenbatch.client import BatchClient

    from .conftest import BASE_URL, SleepRecorder

    router = Router().add("GET", load("get-inprogress-batch").api_path, recorded("get-inprogress-batch"))
    with (
        BatchClient(
            API_KEY, BASE_URL, transport=httpx.MockTransport(router), sleep=SleepRecorder()
        ) as client,
        pytest.raises(TimeoutError, match="in_progress"),
    ):
        client.wait_for_batch("batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0", poll_interval=60.0, timeout=30.0)
    assert len(router.requests) == 1
