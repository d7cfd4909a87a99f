"""The Files and Batches API under ``/compatible-mode/v1``, as the real service answers it.

Choices where the real service is unconfirmed:

- Cancelling a terminal batch answers ``400`` with code ``invalid_batch_status``.
- Downloading an input file (only ``file-batch_output-*`` files can be downloaded) answers
  ``400`` with code ``invalid_file_purpose``.
- An unknown ``after`` cursor answers ``400`` (``invalid_value``, param ``after``).
- Creating a batch on an unknown input file answers ``400`` (``invalid_file``).
- Unknown batch or file ids answer ``404`` (``batch_not_found`` / ``file_not_found``).
- A third unfinished ``batch-test-model`` batch (endpoint ``/v1/chat/ds-test``; the limit is 2)
  is refused at create with ``429`` ``Throttling.ConcurrencyQuota`` and ``Retry-After``;
  nothing is created, so a retry is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_qwenbatch.client.models import ENDPOINTS, METADATA_LIMITS
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.window import parse_completion_window
from airflow_provider_qwenbatch.emulator.admin import admin_router
from airflow_provider_qwenbatch.emulator.errors import ApiError, parse_list_time
from airflow_provider_qwenbatch.emulator.files import copy_upload
from airflow_provider_qwenbatch.emulator.realtime import realtime_router
from airflow_provider_qwenbatch.emulator.records import BatchRecord, new_hex
from airflow_provider_qwenbatch.emulator.state import EmulatorState

API_PREFIX = "/compatible-mode/v1"
MAX_INPUT_FILE_IDS = 20


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
        ticker = asyncio.create_task(state.lifecycle.run_ticker())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await state.callbacks.aclose()
            state.close()

    app = FastAPI(title="Qwen Cloud batch emulator", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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
            dest = state.file_store.files_dir / file_id
            # The multipart parser has already spooled the part to a temp file; copy it in
            # chunks off the event loop, counting lines as it goes.
            stats = await asyncio.to_thread(copy_upload, upload.file, str(dest))
            stored = state.file_store.add_file(
                file_id, upload.filename or "upload.jsonl", purpose, str(dest), stats
            )
        finally:
            await form.close()
        _note(request, file_id=file_id)
        return JSONResponse(stored.public())

    @api.get("/files")
    async def list_files(request: Request) -> JSONResponse:
        limit = _int_param(request, "limit", 20, 1, 2000)
        files, has_more = state.file_store.list_files(
            after=request.query_params.get("after") or None,
            limit=limit,
            purpose=request.query_params.get("purpose") or None,
            create_after=_time_param(request, "create_after"),
            create_before=_time_param(request, "create_before"),
        )
        return JSONResponse({"object": "list", "data": [f.public() for f in files], "has_more": has_more})

    @api.get("/files/{file_id}")
    async def get_file(file_id: str) -> JSONResponse:
        return JSONResponse(state.file_store.get_file(file_id).public())

    @api.delete("/files/{file_id}")
    async def delete_file(file_id: str) -> JSONResponse:
        state.delete_file(file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    @api.get("/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        stored = state.file_store.get_file(file_id)
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
        rec = state.book.create_batch(
            input_file_id,
            endpoint,
            window,
            metadata,
            test_model_max_concurrent=state.config.test_model_max_concurrent,
        )
        _note(request, batch_id=rec.id, file_id=input_file_id)
        entry = request.scope.get("qwenbatch_emulator")
        if isinstance(entry, dict):
            # Unfinished batches right after this one was created (it included): a test reads from
            # it that a job kept to its max_active_batches.
            entry["unfinished"] = len(state.book.active)
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
        page, has_more = state.book.list_batches(
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
        return JSONResponse(state.book.get_batch(batch_id).public())

    @api.post("/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> JSONResponse:
        return JSONResponse(state.book.cancel_batch(batch_id))

    app.include_router(api)
    app.include_router(realtime_router(state), prefix=API_PREFIX)
    app.include_router(admin_router(state))  # /_emulator/, no auth
    return app
