"""Deterministic answers to batch request lines, in the shape of the real output file.

A line's outcome (answered, non-200 inside the output file, or failed into the error file)
and its answer depend only on the seed, the ``custom_id`` and the request body, so a rerun
of the same file gives the same results.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from typing import Any, Literal

from airflow_provider_qwenbatch.client.models import TEST_ENDPOINT
from airflow_provider_qwenbatch.emulator.structured import json_object_answer, request_tag, value_for_schema

TEST_ANSWER = "This is a test result."
Outcome = Literal["ok", "soft_error", "error"]

_WORDS = (
    "batch",
    "answer",
    "emulated",
    "qwen",
    "result",
    "token",
    "request",
    "offline",
    "deterministic",
    "reply",
    "cloud",
    "model",
)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()


def _fraction(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "big") / 2**64


def line_outcome(
    seed: int, custom_id: str, error_rate: float, soft_error_rate: float, batch_id: str | None = None
) -> Outcome:
    """Decide how one line ends, from the seed and its ``custom_id`` (and the batch, when given).

    :param seed: the emulator's seed.
    :param custom_id: the line's ``custom_id``.
    :param error_rate: fraction that fails into the error file.
    :param soft_error_rate: fraction answered non-200 inside the output file.
    :param batch_id: the batch the line is in (``transient_line_errors``): sent again in
        another batch, a request draws its outcome again.
    """
    r = _fraction(_digest(str(seed), "outcome", custom_id, *((batch_id,) if batch_id else ())))
    if r < error_rate:
        return "error"
    if r < error_rate + soft_error_rate:
        return "soft_error"
    return "ok"


def _tokens(text: str) -> int:
    # About four characters a token, never zero: plausible enough for billing arithmetic.
    return max(1, (len(text) + 3) // 4)


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else m
            parts.append(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
        return "\n".join(parts)
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


_TRANSPORT_KEYS = frozenset({"stream", "stream_options"})


def _text_content(body: dict[str, Any], endpoint: str, seed: int) -> str:
    if endpoint == TEST_ENDPOINT:
        return TEST_ANSWER
    # How the answer travels (streamed or not) does not change it.
    asked = {k: v for k, v in body.items() if k not in _TRANSPORT_KEYS}
    d = _digest(str(seed), "chat", json.dumps(asked, ensure_ascii=False, sort_keys=True))
    words = " ".join(_WORDS[b % len(_WORDS)] for b in d[:8])
    return f"Emulated answer {d.hex()[:12]}: {words}."


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _structured_content(body: dict[str, Any], seed: int) -> str | None:
    """The JSON text asked for by ``response_format``, or ``None`` for plain text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    tag = request_tag(seed, _dumps(body.get("messages")))
    if fmt.get("type") == "json_object":
        return _dumps(json_object_answer(tag))
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
        return _dumps(value_for_schema(schema, tag))
    return None


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function tool the emulated model calls, or ``None`` to answer in text.

    A tool named by ``tool_choice`` is called; otherwise, unless ``tool_choice`` is ``none``,
    a ``final_result*`` tool (pydantic-ai's structured output) is called, else the first tool
    is called until the conversation holds a tool result, then the answer is text.
    """
    tools: list[dict[str, Any]] = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")
    ]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["name"] == wanted), None)
    final = next((t for t in tools if str(t["name"]).startswith("final_result")), None)
    if final is not None:
        return final
    messages = body.get("messages") or []
    last_role = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else None
    return None if last_role == "tool" else tools[0]


def chat_message(body: dict[str, Any], endpoint: str, seed: int) -> tuple[dict[str, Any], str]:
    """The assistant message answering a chat request, and its ``finish_reason``.

    Text by default; JSON when ``response_format`` asks for it (see :mod:`.structured`); a
    tool call when the request offers function tools (see :func:`_chosen_tool`).

    :param body: the request body.
    :param endpoint: the batch endpoint (``/v1/chat/ds-test`` answers a fixed text).
    :param seed: the emulator's seed.
    """
    if endpoint != TEST_ENDPOINT:
        tool = _chosen_tool(body)
        if tool is not None:
            tag = request_tag(seed, _dumps(body.get("messages")))
            arguments = value_for_schema(tool.get("parameters") or {"type": "object"}, tag)
            call = {
                "id": f"call_{tag}{_digest(str(tool['name'])).hex()[:16]}",
                "type": "function",
                "function": {"name": tool["name"], "arguments": _dumps(arguments)},
            }
            return {"role": "assistant", "content": "", "tool_calls": [call]}, "tool_calls"
        structured = _structured_content(body, seed)
        if structured is not None:
            return {"role": "assistant", "content": structured}, "stop"
    return {"role": "assistant", "content": _text_content(body, endpoint, seed)}, "stop"


def chat_body(request_id: str, body: dict[str, Any], endpoint: str, seed: int, now: int) -> dict[str, Any]:
    """A ``chat.completion`` object answering ``body`` (the same in batch and real time).

    :param request_id: goes into ``id``.
    :param body: the request body.
    :param endpoint: the endpoint.
    :param seed: the emulator's seed.
    :param now: Unix seconds for ``created``.
    """
    model = str(body.get("model"))
    prompt = _prompt_text(body)
    message, finish_reason = chat_message(body, endpoint, seed)
    content = message["content"] or _dumps(message.get("tool_calls"))
    prompt_tokens, completion_tokens = _tokens(prompt), _tokens(content)
    return {
        "created": now,
        "usage": {
            "completion_tokens": completion_tokens,
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "model": model,
        "id": f"chatcmpl-{request_id}",
        "choices": [{"finish_reason": finish_reason, "index": 0, "message": message}],
        "object": "chat.completion",
    }


def _vector(seed: int, text: str, dims: int) -> list[float]:
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        d = _digest(str(seed), "embedding", text, str(counter))
        counter += 1
        for (value,) in struct.iter_unpack(">I", d):
            out.append(round(value / 2**31 - 1.0, 6))
    return out[:dims]


def embedding_body(request_id: str, body: dict[str, Any], seed: int, dims: int) -> dict[str, Any]:
    """A ``list`` of embeddings answering ``body`` (the same in batch and real time).

    :param request_id: goes into ``id``.
    :param body: the request body.
    :param seed: the emulator's seed.
    :param dims: vector size unless the request says ``dimensions``.
    """
    raw = body.get("input")
    inputs = raw if isinstance(raw, list) else [raw]
    texts = [x if isinstance(x, str) else json.dumps(x) for x in inputs]
    requested = body.get("dimensions")
    size = requested if isinstance(requested, int) and 0 < requested <= 4096 else dims
    tokens = sum(_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(seed, t, size)}
            for i, t in enumerate(texts)
        ],
        "model": str(body.get("model")),
        "id": request_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def answer_line(
    *,
    custom_id: str,
    body: dict[str, Any],
    endpoint: str,
    outcome: Outcome,
    seed: int,
    now: int,
    embedding_dimensions: int,
) -> dict[str, Any]:
    """Build one result line ``{id, custom_id, response: {status_code, request_id, body}, error}``.

    :param custom_id: the line's ``custom_id``.
    :param body: the request body.
    :param endpoint: the batch endpoint.
    :param outcome: from :func:`line_outcome`.
    :param seed: the emulator's seed.
    :param now: Unix seconds for ``created``.
    :param embedding_dimensions: default vector size.
    """
    request_id = str(uuid.uuid4())
    if outcome == "soft_error":
        # A content-moderation refusal: a non-200 answer that still sits in the OUTPUT file.
        return {
            "id": request_id,
            "custom_id": custom_id,
            "response": {
                "status_code": 400,
                "request_id": request_id,
                "body": {
                    "error": {
                        "code": "data_inspection_failed",
                        "message": "Input data may contain inappropriate content.",
                        "type": "data_inspection_failed",
                        "param": None,
                    },
                    "request_id": request_id,
                },
            },
            "error": None,
        }
    if outcome == "error":
        return {
            "id": request_id,
            "custom_id": custom_id,
            "response": {
                "status_code": 500,
                "request_id": request_id,
                "body": {
                    "error": {
                        "code": "internal_error",
                        "message": "An internal error has occured, please try again later.",
                        "type": "internal_error",
                        "param": None,
                    },
                    "request_id": request_id,
                },
            },
            "error": {
                "code": "internal_error",
                "message": "An internal error has occured, please try again later.",
            },
        }
    if endpoint == "/v1/embeddings":
        answer = embedding_body(request_id, body, seed, embedding_dimensions)
    else:
        answer = chat_body(request_id, body, endpoint, seed, now)
    return {
        "id": request_id,
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": answer},
        "error": None,
    }


def unfinished_line(custom_id: str, code: Literal["batch_cancelled", "batch_expired"]) -> dict[str, Any]:
    """An error-file line for a request that never ran (cancelled or expired batch).

    :param custom_id: the line's ``custom_id``.
    :param code: why it did not run.
    """
    message = (
        "This request was not executed because the batch was cancelled."
        if code == "batch_cancelled"
        else "This request could not be executed before the completion window expired."
    )
    return {
        "id": str(uuid.uuid4()),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
