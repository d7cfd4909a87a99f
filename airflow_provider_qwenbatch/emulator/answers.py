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


def line_outcome(seed: int, custom_id: str, error_rate: float, soft_error_rate: float) -> Outcome:
    """Decide how one line ends, from the seed and its ``custom_id`` only.

    :param seed: the emulator's seed.
    :param custom_id: the line's ``custom_id``.
    :param error_rate: fraction that fails into the error file.
    :param soft_error_rate: fraction answered non-200 inside the output file.
    """
    r = _fraction(_digest(str(seed), "outcome", custom_id))
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


def _chat_body(request_id: str, body: dict[str, Any], endpoint: str, seed: int, now: int) -> dict[str, Any]:
    model = str(body.get("model"))
    prompt = _prompt_text(body)
    if endpoint == TEST_ENDPOINT:
        content = TEST_ANSWER
    else:
        d = _digest(str(seed), "chat", json.dumps(body, ensure_ascii=False, sort_keys=True))
        words = " ".join(_WORDS[b % len(_WORDS)] for b in d[:8])
        content = f"Emulated answer {d.hex()[:12]}: {words}."
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
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"role": "assistant", "content": content},
            }
        ],
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


def _embedding_body(request_id: str, body: dict[str, Any], seed: int, dims: int) -> dict[str, Any]:
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
        answer = _embedding_body(request_id, body, seed, embedding_dimensions)
    else:
        answer = _chat_body(request_id, body, endpoint, seed, now)
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
