"""Shared helpers of the client unit tests: a routed ``httpx.MockTransport``, a sleep recorder,
and the sync/async twin driver. The API key is distinctive so a leak is easy to spot."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.client import AsyncBatchClient, BatchClient, RetryPolicy
from tests.recordings import load

API_KEY = "sk-TESTKEY-9f8e7d"
BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
BASE_PATH = "/compatible-mode/v1"

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _api_key_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test of the client layer also checks that no log record carries the API key."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert API_KEY not in text, f"API key leaked in log record {record.name}: {text[:200]}"


class SleepRecorder:
    """Stands in for ``time.sleep`` / ``asyncio.sleep``: records the delays, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.delays.append(seconds)


def api_path(request: httpx.Request) -> str:
    """The request's path below the base URL."""
    path = request.url.path
    return path[len(BASE_PATH) :] if path.startswith(BASE_PATH) else path


@dataclass
class Router:
    """A handler for ``httpx.MockTransport``: answers by (method, path), records every request.

    A route's value is a response factory, or a list of them served in turn (the last one
    repeats). A factory may raise (e.g. ``httpx.ConnectError``) to simulate a broken network.
    """

    routes: dict[tuple[str, str], Any] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def add(self, method: str, path: str, *answers: Handler | httpx.Response) -> Router:
        self.routes[(method, path)] = list(answers)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, api_path(request))
        answers = self.routes.get(key)
        if answers is None:
            return httpx.Response(404, json={"error": {"message": f"no route {key}", "code": "no_route"}})
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    def seen(self, method: str | None = None, path: str | None = None) -> list[httpx.Request]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or api_path(r) == path)
        ]


def recorded(name: str, **overrides: Any) -> Handler:
    """A response factory serving a recorded exchange's answer."""
    exchange = load(name)
    return lambda request: exchange.response(request, **overrides)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers or {})


def raising(exc_type: type[httpx.TransportError], message: str = "boom") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)

    return handler


class Api:
    """Drives a :class:`BatchClient` or an :class:`AsyncBatchClient` through the same awaitable calls."""

    def __init__(self, kind: str, handler: Handler, **kwargs: Any) -> None:
        self.kind = kind
        self.sleep = SleepRecorder()
        kwargs.setdefault("retry", RetryPolicy(max_retries=3))
        if kind == "sync":
            self.client: Any = BatchClient(
                API_KEY, BASE_URL, transport=httpx.MockTransport(handler), sleep=self.sleep, **kwargs
            )
        else:

            async def ahandler(request: httpx.Request) -> httpx.Response:
                return handler(request)

            self.client = AsyncBatchClient(
                API_KEY, BASE_URL, transport=httpx.MockTransport(ahandler), sleep=self.sleep.asleep, **kwargs
            )

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, name)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def collect(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Drain an iterator method (sync generator or async generator)."""
        it = getattr(self.client, name)(*args, **kwargs)
        if hasattr(it, "__aiter__"):
            return [x async for x in it]
        return list(it)

    async def close(self) -> None:
        if self.kind == "sync":
            self.client.close()
        else:
            await self.client.aclose()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_api(kind: str) -> Iterator[Callable[..., Api]]:
    made: list[Api] = []

    def make(handler: Handler, **kwargs: Any) -> Api:
        api = Api(kind, handler, **kwargs)
        made.append(api)
        return api

    yield make
    for api in made:
        if api.kind == "sync":
            api.client.close()
