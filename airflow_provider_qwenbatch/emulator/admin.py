"""The admin API under ``/_emulator/`` (no auth): health, requests, batches, callbacks, faults, config, reset.

Not part of the real service: it is how tests and users look inside the emulator and
steer it while it runs.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from airflow_provider_qwenbatch.emulator.config import RUNTIME_FIELDS, FaultSpec
from airflow_provider_qwenbatch.emulator.errors import ApiError
from airflow_provider_qwenbatch.emulator.state import EmulatorState

ADMIN_PREFIX = "/_emulator"
_FAULTS_ADAPTER = TypeAdapter(dict[str, FaultSpec])


def admin_router(state: EmulatorState) -> APIRouter:
    """The admin routes, bound to one state.

    :param state: the emulator's state.
    """
    admin = APIRouter(prefix=ADMIN_PREFIX)

    @admin.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "files": len(state.file_store.files),
            "batches": len(state.book.batches),
            "active_batches": len(state.book.active),
            "requests": state.request_log.seq,
            "uptime_s": round(time.time() - state.started_wall, 3),
        }

    @admin.get("/requests")
    async def requests(request: Request) -> dict[str, Any]:
        q = request.query_params
        items = state.request_log.select(
            since=int(q.get("since", "0") or 0),
            endpoint=q.get("endpoint") or None,
            batch_id=q.get("batch_id") or None,
        )
        return {"requests": items, "last_seq": state.request_log.seq}

    @admin.post("/reset")
    async def reset() -> dict[str, Any]:
        state.reset()
        return {"reset": True}

    @admin.get("/batches")
    async def admin_batches(request: Request) -> dict[str, Any]:
        lines = request.query_params.get("lines", "true").lower() != "false"
        return {"batches": [b.admin(lines=lines) for b in state.book.batches.values()]}

    @admin.get("/batches/{batch_id}")
    async def admin_batch(batch_id: str) -> dict[str, Any]:
        return state.book.get_batch(batch_id).admin()

    @admin.get("/callbacks")
    async def callbacks() -> dict[str, Any]:
        return {"callbacks": [dict(d) for d in state.callbacks.deliveries]}

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

    return admin
