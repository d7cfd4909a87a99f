"""cancel_quietly / acancel_quietly: cancel only what still runs, never raise, log the request id."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from airflow_provider_qwenbatch.client import (
    CancelAction,
    CancelOutcome,
    RetryPolicy,
    acancel_quietly,
    cancel_quietly,
)
from tests.recordings import load

from .conftest import Api, Router, json_response, raising, recorded

MakeApi = Callable[..., Api]
BATCH_ID = "batch_2ecfc43e-439e-4443-bfe8-9a36b89456d0"
BATCH = f"/batches/{BATCH_ID}"
CANCEL = f"{BATCH}/cancel"
LOGGER = "test.cancel"


async def cancel(api: Api, batch_id: str = BATCH_ID) -> CancelOutcome:
    logger = logging.getLogger(LOGGER)
    if api.kind == "sync":
        return cancel_quietly(api.client, batch_id, logger=logger)
    return await acancel_quietly(api.client, batch_id, logger=logger)


def outcome_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.getMessage().startswith("Cancel batch")
    ]


def batch_with(status: str, rid: str) -> Callable[[httpx.Request], httpx.Response]:
    document = {**load("get-inprogress-batch").json(), "status": status}
    return json_response(200, document, {"x-request-id": rid})


@pytest.mark.parametrize("status", ["completed", "failed", "expired", "cancelled"])
async def test_terminal_batch_is_not_cancelled(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture, status: str
) -> None:
    router = (
        Router()
        .add("GET", BATCH, batch_with(status, "rid-read"))
        .add("POST", CANCEL, recorded("cancel-batch"))
    )
    api = make_api(router)
    outcome = await cancel(api)
    assert router.seen("POST") == []
    assert outcome.action is CancelAction.ALREADY_TERMINAL
    assert outcome.status is not None
    assert outcome.status.value == status
    assert outcome.ok
    (line,) = outcome_lines(caplog)
    assert "rid-read" in line
    assert BATCH_ID in line


async def test_recorded_cancelled_batch_is_not_cancelled_again(make_api: MakeApi) -> None:
    router = (
        Router()
        .add("GET", BATCH, recorded("get-cancelled-batch"))
        .add("POST", CANCEL, recorded("cancel-batch"))
    )
    api = make_api(router)
    outcome = await cancel(api)
    assert router.seen("POST") == []
    assert outcome.action is CancelAction.ALREADY_TERMINAL
    assert outcome.request_id == load("get-cancelled-batch").request_id


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing"])
async def test_in_flight_batch_gets_one_cancel_request(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture, status: str
) -> None:
    router = (
        Router()
        .add("GET", BATCH, batch_with(status, "rid-read"))
        .add("POST", CANCEL, recorded("cancel-batch"))
    )
    api = make_api(router)
    outcome = await cancel(api)
    assert len(router.seen("POST", CANCEL)) == 1
    assert router.seen("POST", CANCEL)[0].content == b""
    assert outcome.action is CancelAction.REQUESTED
    assert outcome.status is not None
    assert outcome.status.value == "cancelling"
    assert outcome.ok
    rid = load("cancel-batch").request_id
    assert outcome.request_id == rid
    (line,) = outcome_lines(caplog)
    assert rid is not None
    assert rid in line
    assert "cancel_requested" in line
    assert outcome.to_dict()["action"] == "cancel_requested"


async def test_cancel_refused_because_the_batch_finished_meanwhile(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    refused = json_response(
        400,
        {
            "error": {
                "message": "batch is already completed",
                "type": "invalid_request_error",
                "code": "invalid_status",
            }
        },
        {"x-request-id": "rid-refused"},
    )
    router = (
        Router()
        .add("GET", BATCH, batch_with("in_progress", "rid-read-1"), batch_with("completed", "rid-read-2"))
        .add("POST", CANCEL, refused)
    )
    api = make_api(router)
    outcome = await cancel(api)
    assert len(router.seen("POST", CANCEL)) == 1
    assert outcome.action is CancelAction.ALREADY_TERMINAL
    assert outcome.status is not None
    assert outcome.status.value == "completed"
    assert outcome.ok
    assert "rid-refused" in outcome_lines(caplog)[0]


async def test_missing_batch_is_not_found(make_api: MakeApi, caplog: pytest.LogCaptureFixture) -> None:
    missing = json_response(404, {"code": "NotFound", "message": "batch not found", "request_id": "rid-404"})
    router = Router().add("GET", BATCH, missing).add("POST", CANCEL, missing)
    api = make_api(router)
    outcome = await cancel(api)
    assert outcome.action is CancelAction.NOT_FOUND
    assert outcome.request_id == "rid-404"
    assert "rid-404" in outcome_lines(caplog)[0]


async def test_cancel_404_after_a_failed_read_is_not_found(make_api: MakeApi) -> None:
    router = (
        Router()
        .add("GET", BATCH, json_response(500, {"code": "x", "message": "down"}))
        .add(
            "POST",
            CANCEL,
            json_response(404, {"code": "NotFound", "message": "gone", "request_id": "rid-404"}),
        )
    )
    api = make_api(router)
    outcome = await cancel(api)
    assert outcome.action is CancelAction.NOT_FOUND


async def test_server_error_on_cancel_is_failed_without_raising_or_retrying(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    router = (
        Router()
        .add("GET", BATCH, batch_with("in_progress", "rid-read"))
        .add(
            "POST",
            CANCEL,
            json_response(500, {"code": "InternalError", "message": "oops"}, {"x-request-id": "rid-500"}),
        )
    )
    api = make_api(router, retry=RetryPolicy(max_retries=5))
    outcome = await cancel(api)
    assert outcome.action is CancelAction.FAILED
    assert not outcome.ok
    assert len(router.seen("POST", CANCEL)) == 1  # a kill path has no time for retries
    assert api.sleep.delays == []
    assert outcome.request_id == "rid-500"
    lines = outcome_lines(caplog)
    assert "rid-500" in lines[0]
    assert any(r.levelno == logging.WARNING and r.name == LOGGER for r in caplog.records)


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout])
async def test_server_down_is_failed_without_raising(
    make_api: MakeApi, exc: type[httpx.TransportError]
) -> None:
    router = Router().add("GET", BATCH, raising(exc)).add("POST", CANCEL, raising(exc))
    api = make_api(router, retry=RetryPolicy(max_retries=5))
    outcome = await cancel(api)
    assert outcome.action is CancelAction.FAILED
    assert len(router.seen("POST", CANCEL)) == 1
    assert api.sleep.delays == []


async def test_arbitrary_exception_from_the_transport_never_escapes(make_api: MakeApi) -> None:
    def explode(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("something nobody expected")

    router = Router().add("GET", BATCH, explode).add("POST", CANCEL, explode)
    api = make_api(router)
    outcome = await cancel(api)
    assert outcome.action is CancelAction.FAILED
    assert "something nobody expected" in outcome.detail
    assert len(router.seen("POST", CANCEL)) == 1


async def test_read_failure_still_tries_the_cancel(make_api: MakeApi) -> None:
    router = (
        Router()
        .add("GET", BATCH, json_response(503, {"code": "x", "message": "busy"}))
        .add("POST", CANCEL, recorded("cancel-batch"))
    )
    api = make_api(router)
    outcome = await cancel(api)
    assert outcome.action is CancelAction.REQUESTED
    assert len(router.seen("POST", CANCEL)) == 1


async def test_invalid_batch_id_never_raises(make_api: MakeApi) -> None:
    router = Router()
    api = make_api(router)
    outcome = await cancel(api, "a/b")
    assert outcome.action is CancelAction.FAILED
    assert router.requests == []


async def test_outcome_is_json_able(make_api: MakeApi) -> None:
    import json

    router = Router().add("GET", BATCH, recorded("get-completed-batch"))
    api = make_api(router)
    outcome = await cancel(api)
    data = json.loads(json.dumps(outcome.to_dict()))
    assert data == {
        "batch_id": BATCH_ID,
        "action": "already_terminal",
        "status": "completed",
        "request_id": load("get-completed-batch").request_id,
        "detail": outcome.detail,
    }


async def test_cancelling_batch_is_not_cancelled_twice(make_api: MakeApi) -> None:
    router = (
        Router().add("GET", BATCH, recorded("cancel-batch")).add("POST", CANCEL, recorded("cancel-batch"))
    )
    api = make_api(router)
    outcome = await cancel(api)
    assert router.seen("POST") == []
    assert outcome.ok
    assert outcome.status is not None
    assert outcome.status.value == "cancelling"


async def test_cancel_refused_because_the_batch_is_already_cancelling_is_success(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    refused = json_response(
        400,
        {
            "error": {
                "message": "batch is cancelling",
                "type": "invalid_request_error",
                "code": "invalid_status",
            }
        },
        {"x-request-id": "rid-refused"},
    )
    # Read before the cancel shows it running; someone else's cancel lands first; the re-read says cancelling.
    router = (
        Router()
        .add("GET", BATCH, batch_with("in_progress", "rid-read-1"), batch_with("cancelling", "rid-read-2"))
        .add("POST", CANCEL, refused)
    )
    outcome = await cancel(make_api(router))
    assert outcome.action is CancelAction.ALREADY_TERMINAL
    assert outcome.status is not None and outcome.status.value == "cancelling"
    assert outcome.ok
    assert "already being cancelled" in outcome_lines(caplog)[0]


async def test_retries_are_used_only_when_asked(make_api: MakeApi) -> None:
    async def run(retries: int) -> tuple[CancelOutcome, int]:
        unavailable = json_response(
            503, {"code": "ServiceUnavailable", "message": "busy"}, {"x-request-id": "r"}
        )
        router = (
            Router()
            .add("GET", BATCH, batch_with("in_progress", "rid-read"))
            .add("POST", CANCEL, unavailable, recorded("cancel-batch"))
        )
        api = make_api(router)
        if api.kind == "sync":
            outcome = cancel_quietly(api.client, BATCH_ID, budget=10.0, retries=retries)
        else:
            outcome = await acancel_quietly(api.client, BATCH_ID, budget=10.0, retries=retries)
        return outcome, len(router.seen("POST", CANCEL))

    kill_path, sent = await run(0)  # the kill path: one attempt, nothing past the 4 s budget
    assert (kill_path.action, sent) == (CancelAction.FAILED, 1)
    timeout_path, sent = await run(2)
    assert (timeout_path.action, sent) == (CancelAction.REQUESTED, 2)


def test_cancel_many_sends_every_cancel_at_once() -> None:
    """Three cancels that each wait for the other two: sent one after another they would all time out."""
    import threading

    from airflow_provider_qwenbatch.client import BatchClient
    from airflow_provider_qwenbatch.client.cancel import cancel_many

    from .conftest import API_KEY, BASE_URL

    ids = [f"batch_{n}" for n in range(3)]
    together = threading.Barrier(3, timeout=5)
    seen: list[str] = []
    document = load("get-inprogress-batch").json()

    def handler(request: httpx.Request) -> httpx.Response:
        batch_id = request.url.path.split("/")[-2 if request.url.path.endswith("/cancel") else -1]
        assert batch_id in ids, f"a cancel for a batch that was not given: {request.url.path}"
        if request.url.path.endswith("/cancel"):
            together.wait()  # raises BrokenBarrierError if the others never come
            seen.append(batch_id)
            return httpx.Response(200, json={**document, "id": batch_id, "status": "cancelling"})
        return httpx.Response(200, json={**document, "id": batch_id, "status": "in_progress"})

    with BatchClient(API_KEY, BASE_URL, transport=httpx.MockTransport(handler)) as client:
        outcomes = cancel_many(client, ids, budget=10, logger=logging.getLogger(LOGGER))
    assert sorted(seen) == ids
    assert [o.batch_id for o in outcomes] == ids and all(o.ok for o in outcomes)
    assert cancel_many(client, [], budget=1) == []
