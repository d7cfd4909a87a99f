"""The HTTP surface: the batch and files API under ``/compatible-mode/v1`` and the admin API.

An outer ASGI layer (:class:`EmulatorASGI`) does what a gateway does before the service sees
a request: it gives every answer an ``x-request-id``, logs the request, injects the
configured faults and checks the API key. The FastAPI app behind it only implements the API.

Choices where the real service is unconfirmed:

- Cancelling a terminal batch answers ``400`` with code ``invalid_batch_status``.
- Downloading an input file (only ``file-batch_output-*`` files can be downloaded) answers
  ``400`` with code ``invalid_file_purpose``.
- An unknown ``after`` cursor answers ``400`` (``invalid_value``, param ``after``).
- Creating a batch on an unknown input file answers ``400`` (``invalid_file``).
- Unknown batch or file ids answer ``404`` (``batch_not_found`` / ``file_not_found``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_qwenbatch.client.models import ENDPOINTS, METADATA_LIMITS
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.window import parse_completion_window
from airflow_provider_qwenbatch.emulator.config import RUNTIME_FIELDS, EmulatorConfig, FaultSpec
from airflow_provider_qwenbatch.emulator.state import (
    ApiError,
    BatchRecord,
    EmulatorState,
    copy_upload,
    new_hex,
    parse_list_time,
)

API_PREFIX = "/compatible-mode/v1"
ADMIN_PREFIX = "/_emulator"
MAX_INPUT_FILE_IDS = 20

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
    )
)
_FAULTS_ADAPTER = TypeAdapter(dict[str, FaultSpec])
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
    import json

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
        self.state.log_request(entry)
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


def _note(request: Request, **ids: str | None) -> None:
    entry = request.scope.get("qwenbatch_emulator")
    if isinstance(entry, dict):
        for key, value in ids.items():
            if value is not None:
                entry[key] = value


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(
            400, f"'{name}' must be an integer from {low} to {high}.", code="invalid_value", param=name
        )
    return value


def _time_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    return parse_list_time(raw, name) if raw else None


def _list_page(batches: list[BatchRecord], has_more: bool) -> dict[str, Any]:
    data = [b.public() for b in batches]
    return {
        "object": "list",
        "data": data or None,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _check_create_body(body: Any) -> tuple[str, str, str, dict[str, Any] | None]:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_request")
    input_file_id = body.get("input_file_id")
    if not isinstance(input_file_id, str) or not input_file_id:
        raise ApiError(
            400,
            "Missing required parameter: 'input_file_id'.",
            code="missing_required_parameter",
            param="input_file_id",
        )
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise ApiError(
            400,
            f"Invalid 'endpoint': '{endpoint}'. Supported: {', '.join(ENDPOINTS)}.",
            code="invalid_value",
            param="endpoint",
        )
    window = body.get("completion_window")
    try:
        if not isinstance(window, str):
            raise ValueError(f"completion_window {window!r} must be a string such as '24h'")
        parse_completion_window(window)
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_value", param="completion_window") from None
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ApiError(
                400, "'metadata' must map names to strings.", code="invalid_value", param="metadata"
            )
        for key, limit in METADATA_LIMITS.items():
            value = metadata.get(key)
            if value is not None and len(value) > limit:
                raise ApiError(
                    400,
                    f"metadata.{key} is {len(value)} characters long; at most {limit} are allowed.",
                    code="invalid_value",
                    param=f"metadata.{key}",
                )
    return input_file_id, str(endpoint), window, metadata


def build_api(state: EmulatorState) -> FastAPI:
    """The FastAPI app with the API and admin routes, bound to one state.

    :param state: the emulator's state.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ticker = asyncio.create_task(state.run_ticker())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            state.close()

    app = FastAPI(title="Qwen Cloud batch emulator", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = ApiError(400, f"Invalid request: {exc.errors()}", code="invalid_request")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "invalid_request"
        err = ApiError(exc.status_code, str(exc.detail), code=code)
        return JSONResponse(err.body(), status_code=exc.status_code)

    api = APIRouter(prefix=API_PREFIX)

    # ------------------------------------------------------------------ files
    @api.post("/files")
    async def upload_file(request: Request) -> JSONResponse:
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # any parse failure means a bad multipart body
            raise ApiError(400, f"Could not read the multipart body: {exc}", code="invalid_request") from None
        try:
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    400,
                    "Missing required parameter: 'file'.",
                    code="missing_required_parameter",
                    param="file",
                )
            if not isinstance(purpose, str) or not purpose:
                raise ApiError(
                    400,
                    "Missing required parameter: 'purpose'.",
                    code="missing_required_parameter",
                    param="purpose",
                )
            file_id = f"file-batch-{new_hex()}"
            dest = state.files_dir / file_id
            # The multipart parser has already spooled the part to a temp file; copy it in
            # chunks off the event loop, counting lines as it goes.
            stats = await asyncio.to_thread(copy_upload, upload.file, str(dest))
            stored = state.add_file(file_id, upload.filename or "upload.jsonl", purpose, str(dest), stats)
        finally:
            await form.close()
        _note(request, file_id=file_id)
        return JSONResponse(stored.public())

    @api.get("/files")
    async def list_files(request: Request) -> JSONResponse:
        limit = _int_param(request, "limit", 20, 1, 2000)
        files, has_more = state.list_files(
            after=request.query_params.get("after") or None,
            limit=limit,
            purpose=request.query_params.get("purpose") or None,
            create_after=_time_param(request, "create_after"),
            create_before=_time_param(request, "create_before"),
        )
        return JSONResponse({"object": "list", "data": [f.public() for f in files], "has_more": has_more})

    @api.get("/files/{file_id}")
    async def get_file(file_id: str) -> JSONResponse:
        return JSONResponse(state.get_file(file_id).public())

    @api.delete("/files/{file_id}")
    async def delete_file(file_id: str) -> JSONResponse:
        state.delete_file(file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    @api.get("/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        stored = state.get_file(file_id)
        if not stored.downloadable:
            raise ApiError(
                400,
                f"The file '{file_id}' cannot be downloaded: only batch result files "
                "(ids starting 'file-batch_output-') can be downloaded.",
                code="invalid_file_purpose",
                param="file_id",
            )
        return FileResponse(stored.path, media_type="application/octet-stream", filename=stored.filename)

    # ------------------------------------------------------------------ batches
    @api.post("/batches")
    async def create_batch(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "The request body is not valid JSON.", code="invalid_request") from None
        input_file_id, endpoint, window, metadata = _check_create_body(body)
        rec = state.create_batch(input_file_id, endpoint, window, metadata)
        _note(request, batch_id=rec.id, file_id=input_file_id)
        return JSONResponse(rec.public())

    @api.get("/batches")
    async def list_batches(request: Request) -> JSONResponse:
        q = request.query_params
        limit = _int_param(request, "limit", 20, 1, 100)
        statuses: set[str] | None = None
        if q.get("status"):
            statuses = {s.strip() for s in q["status"].split(",") if s.strip()}
            unknown = statuses - {s.value for s in BatchStatus}
            if unknown:
                raise ApiError(
                    400,
                    f"Unknown status: {', '.join(sorted(unknown))}.",
                    code="invalid_value",
                    param="status",
                )
        file_ids: set[str] | None = None
        if q.get("input_file_ids"):
            ids = [s.strip() for s in q["input_file_ids"].split(",") if s.strip()]
            if len(ids) > MAX_INPUT_FILE_IDS:
                raise ApiError(
                    400,
                    f"At most {MAX_INPUT_FILE_IDS} input_file_ids are allowed, got {len(ids)}.",
                    code="invalid_value",
                    param="input_file_ids",
                )
            file_ids = set(ids)
        page, has_more = state.list_batches(
            after=q.get("after") or None,
            limit=limit,
            ds_name=q.get("ds_name") or None,
            statuses=statuses,
            input_file_ids=file_ids,
            create_after=_time_param(request, "create_after"),
            create_before=_time_param(request, "create_before"),
        )
        entry = request.scope.get("qwenbatch_emulator")
        if isinstance(entry, dict):
            # Which batches this page showed: a status read of each, for the request log's readers.
            entry["listed"] = [rec.id for rec in page]
        return JSONResponse(_list_page(page, has_more))

    @api.get("/batches/{batch_id}")
    async def get_batch(batch_id: str) -> JSONResponse:
        return JSONResponse(state.get_batch(batch_id).public())

    @api.post("/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> JSONResponse:
        return JSONResponse(state.cancel_batch(batch_id))

    app.include_router(api)

    # ------------------------------------------------------------------ admin (no auth)
    admin = APIRouter(prefix=ADMIN_PREFIX)

    @admin.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "files": len(state.files),
            "batches": len(state.batches),
            "active_batches": len(state.active),
            "requests": state.request_seq,
            "uptime_s": round(time.time() - state.started_wall, 3),
        }

    @admin.get("/requests")
    async def requests(request: Request) -> dict[str, Any]:
        q = request.query_params
        since = int(q.get("since", "0") or 0)
        items = [
            dict(e)
            for e in state.requests
            if e["seq"] > since
            and (not q.get("endpoint") or e["endpoint"] == q["endpoint"])
            and (not q.get("batch_id") or e["batch_id"] == q["batch_id"])
        ]
        return {"requests": items, "last_seq": state.request_seq}

    @admin.post("/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return {"reset": True}

    @admin.get("/batches")
    async def admin_batches(request: Request) -> dict[str, Any]:
        lines = request.query_params.get("lines", "true").lower() != "false"
        return {"batches": [b.admin(lines=lines) for b in state.batches.values()]}

    @admin.get("/batches/{batch_id}")
    async def admin_batch(batch_id: str) -> dict[str, Any]:
        return state.get_batch(batch_id).admin()

    @admin.get("/faults")
    async def get_faults() -> dict[str, Any]:
        return {"faults": {k: v.model_dump() for k, v in state.config.faults.items()}}

    @admin.put("/faults")
    async def put_faults(request: Request) -> JSONResponse:
        body = await request.json()
        raw = body.get("faults", body) if isinstance(body, dict) else body
        try:
            faults = _FAULTS_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            raise ApiError(400, str(exc), code="invalid_value", param="faults") from None
        state.set_faults(faults)
        return JSONResponse({"faults": {k: v.model_dump() for k, v in state.config.faults.items()}})

    @admin.get("/config")
    async def get_config() -> dict[str, Any]:
        return state.config.model_dump()

    @admin.put("/config")
    async def put_config(request: Request) -> JSONResponse:
        body = await request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "The body must be a JSON object.", code="invalid_value")
        refused = set(body) - RUNTIME_FIELDS
        if refused:
            raise ApiError(
                400,
                f"Not changeable at runtime: {', '.join(sorted(refused))}.",
                code="invalid_value",
                param="config",
            )
        try:
            config = state.update_config(body)
        except ValidationError as exc:
            raise ApiError(400, str(exc), code="invalid_value", param="config") from None
        return JSONResponse(config.model_dump())

    app.include_router(admin)
    return app


def create_app(config: EmulatorConfig | None = None) -> EmulatorASGI:
    """Build the emulator's ASGI app (serve it with uvicorn).

    :param config: the settings (defaults when omitted).
    """
    return EmulatorASGI(config or EmulatorConfig())
