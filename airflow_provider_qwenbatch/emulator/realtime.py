"""Real-time calls: ``POST /chat/completions`` and ``POST /embeddings`` (OpenAI-compatible shapes).

They answer at once with the same deterministic answers a batch line gets (see
:mod:`.answers`), so ``@task.llm`` with pydantic-ai's ``alibaba:`` provider, the ``openai`` SDK
or a user's own real-time code runs offline. The gateway in front checks the API key and
injects faults (endpoint names ``chat_completions`` and ``embeddings``); the model check is
the batch one, answered as the live service does: 404 ``model_not_found``.

``stream: true`` is answered as server-sent events: one chunk with the whole content (or
tool call), one with the ``finish_reason``, a usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from airflow_provider_qwenbatch.client.models import TEST_MODEL
from airflow_provider_qwenbatch.emulator.answers import chat_body, embedding_body
from airflow_provider_qwenbatch.emulator.errors import ApiError
from airflow_provider_qwenbatch.emulator.models import model_not_found_message
from airflow_provider_qwenbatch.emulator.state import EmulatorState

CHAT_ENDPOINT = "/v1/chat/completions"


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_request") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_request")
    return body


def check_model(state: EmulatorState, body: dict[str, Any]) -> str:
    """The request's model, or the error the live service gives for it.

    :param state: the emulator's state (its model list).
    :param body: the request body.
    :raises ApiError: 400 when ``model`` is missing, 404 ``model_not_found`` when unknown.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400, "Missing required parameter: 'model'.", code="missing_required_parameter", param="model"
        )
    known = state.config.accept_any_model or model in state.config.models
    # batch-test-model only exists inside the Batch API.
    if not known or model == TEST_MODEL:
        raise ApiError(404, model_not_found_message(model), code="model_not_found", param="model")
    return model


def _request_id(request: Request) -> str:
    entry = request.scope.get("qwenbatch_emulator")
    if isinstance(entry, dict) and isinstance(entry.get("request_id"), str):
        return str(entry["request_id"])
    return str(uuid.uuid4())


def _sse(completion: dict[str, Any], include_usage: bool) -> Iterator[bytes]:
    choice = completion["choices"][0]
    message = dict(choice["message"])
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
    }
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        delta["tool_calls"] = [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    for chunk in chunks:
        yield b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def realtime_router(state: EmulatorState) -> APIRouter:
    """The real-time routes, bound to one state (mounted under ``/compatible-mode/v1``).

    :param state: the emulator's state.
    """
    router = APIRouter()

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _json_body(request)
        check_model(state, body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(
                400, "'messages' must be a non-empty list.", code="invalid_value", param="messages"
            )
        completion = chat_body(_request_id(request), body, CHAT_ENDPOINT, state.config.seed, int(time.time()))
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return StreamingResponse(_sse(completion, include_usage), media_type="text/event-stream")
        return JSONResponse(completion)

    @router.post("/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        body = await _json_body(request)
        check_model(state, body)
        raw = body.get("input")
        texts = raw if isinstance(raw, list) else [raw]
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ApiError(
                400,
                "'input' must be a non-empty string or a list of non-empty strings.",
                code="invalid_value",
                param="input",
            )
        c = state.config
        return JSONResponse(embedding_body(_request_id(request), body, c.seed, c.embedding_dimensions))

    return router
