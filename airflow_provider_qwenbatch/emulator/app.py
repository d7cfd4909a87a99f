"""The ASGI application uvicorn serves: what a gateway does in front of the API.

:class:`EmulatorASGI` gives every answer an ``x-request-id``, logs the request, injects the
configured faults and checks the API key, before the FastAPI app of :mod:`.api` (the Files
and Batches API) and :mod:`.admin` (``/_emulator/``) sees the request.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from airflow_provider_qwenbatch.emulator.admin import ADMIN_PREFIX
from airflow_provider_qwenbatch.emulator.api import API_PREFIX, build_api
from airflow_provider_qwenbatch.emulator.config import EmulatorConfig, FaultSpec
from airflow_provider_qwenbatch.emulator.errors import ApiError
from airflow_provider_qwenbatch.emulator.state import EmulatorState

__all__ = ["ADMIN_PREFIX", "API_PREFIX", "EmulatorASGI", "classify", "create_app"]


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), name)
    for method, pattern, name in (
        ("POST", r"^/files$", "upload_file"),
        ("GET", r"^/files$", "list_files"),
        ("GET", r"^/files/(?P<file_id>[^/]+)$", "get_file"),
        ("DELETE", r"^/files/(?P<file_id>[^/]+)$", "delete_file"),
        ("GET", r"^/files/(?P<file_id>[^/]+)/content$", "get_file_content"),
        ("POST", r"^/batches$", "create_batch"),
        ("GET", r"^/batches$", "list_batches"),
        ("GET", r"^/batches/(?P<batch_id>[^/]+)$", "get_batch"),
        ("POST", r"^/batches/(?P<batch_id>[^/]+)/cancel$", "cancel_batch"),
        ("POST", r"^/chat/completions$", "chat_completions"),
        ("POST", r"^/embeddings$", "embeddings"),
    )
)
_BAD_GATEWAY = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>istio-envoy</center>\r\n</body>\r\n</html>\r\n"
)


def classify(method: str, path: str) -> tuple[str | None, dict[str, str]]:
    """Name the API endpoint of a request (``None`` when it is none of them).

    :param method: HTTP method.
    :param path: the path below ``/compatible-mode/v1``.
    """
    for m, pattern, name in _ROUTES:
        if m == method:
            match = pattern.match(path)
            if match:
                return name, {k: unquote(v) for k, v in match.groupdict().items()}
    return None, {}


async def _send_bytes(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class EmulatorASGI:
    """The ASGI application uvicorn serves: gateway behaviour in front of the FastAPI app.

    :param config: the settings.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.state = EmulatorState(config)
        self.api = build_api(self.state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        path: str = scope["path"]
        rid_header = (b"x-request-id", request_id.encode())
        if not path.startswith(API_PREFIX + "/") and path != API_PREFIX:
            await self.api(scope, receive, self._with_header(send, rid_header, None))
            return
        sub = path[len(API_PREFIX) :]
        endpoint, ids = classify(scope["method"], sub)
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "endpoint": endpoint,
            "status": None,
            "fault": None,
            "monotonic": time.monotonic(),
            "wall": time.time(),
            "batch_id": ids.get("batch_id"),
            "file_id": ids.get("file_id"),
            "request_id": request_id,
        }
        # Logged now, completed in place: a test reading the log right after its answer sees it.
        self.state.request_log.append(entry)
        scope["qwenbatch_emulator"] = entry
        kind, latency, spec = self.state.draw_fault(endpoint) if endpoint else (None, 0.0, None)
        entry["fault"] = kind
        if latency > 0:
            await asyncio.sleep(latency)
        if kind == "drop":
            await self._drop(receive)
            return
        if kind in ("429", "500", "502", "503"):
            await self._fault_answer(kind, spec, request_id, send, entry)
            return
        if not self._authorized(scope):
            err = ApiError(401, "Incorrect API key provided. ", code="invalid_api_key")
            entry["status"] = 401
            await _send_bytes(
                send, 401, _json_bytes(err.body()), [(b"content-type", b"application/json"), rid_header]
            )
            return
        if kind == "drop_after":
            # The request is processed, then the answer is lost on the way back.
            async def swallow(message: Message) -> None:
                if message["type"] == "http.response.start":
                    entry["status"] = message["status"]

            await self.api(scope, receive, swallow)
            await self._drop(receive)
            return
        await self.api(scope, receive, self._with_header(send, rid_header, entry))

    @staticmethod
    def _with_header(send: Send, header: tuple[bytes, bytes], entry: dict[str, Any] | None) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
                if entry is not None:
                    entry["status"] = message["status"]
            await send(message)

        return wrapped

    def _authorized(self, scope: Scope) -> bool:
        expected = f"Bearer {self.state.config.api_key}".encode()
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                return bool(value.strip() == expected)
        return False

    @staticmethod
    async def _drop(receive: Receive) -> None:
        # Close the socket without a byte of answer. uvicorn hands the app the bound
        # ``receive`` of its request cycle, which holds the transport.
        cycle = getattr(receive, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise ConnectionAbortedError("emulator fault: connection dropped")
        # Marking the cycle disconnected stops uvicorn from writing its own 500 afterwards.
        cycle.disconnected = True  # type: ignore[union-attr]
        transport.close()

    async def _fault_answer(
        self, kind: str, spec: FaultSpec | None, request_id: str, send: Send, entry: dict[str, Any]
    ) -> None:
        rid = (b"x-request-id", request_id.encode())
        status = int(kind)
        entry["status"] = status
        if kind == "429":
            retry_after = str(spec.retry_after if spec else 1).encode()
            body = {
                "code": "Throttling.RateQuota",
                "message": "Requests rate limit exceeded, please try again later.",
                "request_id": request_id,
            }
            await _send_bytes(
                send,
                429,
                _json_bytes(body),
                [(b"content-type", b"application/json"), (b"retry-after", retry_after), rid],
            )
        elif kind == "502":
            await _send_bytes(send, 502, _BAD_GATEWAY, [(b"content-type", b"text/html"), rid])
        else:
            code, message = (
                ("internal_error", "An internal error has occured, please try again later.")
                if kind == "500"
                else ("ServiceUnavailable", "The service is temporarily unavailable, please try again later.")
            )
            err = ApiError(status, message, code=code, type_=code)
            await _send_bytes(
                send, status, _json_bytes(err.body()), [(b"content-type", b"application/json"), rid]
            )


def create_app(config: EmulatorConfig | None = None) -> EmulatorASGI:
    """Build the emulator's ASGI app (serve it with uvicorn).

    :param config: the settings (defaults when omitted).
    """
    return EmulatorASGI(config or EmulatorConfig())
