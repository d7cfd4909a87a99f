"""One DashScope result line -> common.ai's ``RawResultItem``."""

from __future__ import annotations

from typing import Any, Literal

from airflow.providers.common.ai.batch.base import RawResultItem

from airflow_provider_qwenbatch.client.models import BatchResultLine
from airflow_provider_qwenbatch.client.results import error_code, unrun_cause


def _index(custom_id: str) -> int:
    """The request's position, from the ``<key16>-<index>`` custom_id the adapter wrote."""
    _, sep, tail = custom_id.rpartition("-")
    if not sep or not tail.isdigit():
        raise ValueError(f"custom_id {custom_id!r} is not one this adapter wrote (<key>-<index>)")
    return int(tail)


def parse_result_line(line: BatchResultLine) -> RawResultItem:
    """Translate one line of an output or error file.

    A non-200 line in the OUTPUT file is an error too (DashScope writes content-moderation
    refusals there), so the line's own status decides, not the file it came from.

    :param line: the parsed line.
    :raises ValueError: when the ``custom_id`` is not one the adapter wrote.
    """
    index = _index(line.custom_id)
    body: Any = line.response.body if line.response is not None else None
    body = body if isinstance(body, dict) else {}
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if not line.ok:
        code = error_code(line)
        status: Literal["errored", "expired", "cancelled"] = unrun_cause(code) or "errored"
        http = str(line.response.status_code) if line.response is not None else None
        return RawResultItem(
            custom_id=line.custom_id,
            index=index,
            provider_status=status,
            model=model,
            usage=None,
            finish_reason=None,
            error={
                "type": "provider_error" if status == "errored" else status,
                "message": line.describe_error() or "no error details in the result line",
                "provider_code": code if code is not None else http,
                "request_id": line.response.request_id if line.response is not None else None,
                "stage": "provider",
            },
            raw=None,
        )
    choices = body.get("choices")
    choice: dict[str, Any] = (
        choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    )
    message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    usage = line.usage
    return RawResultItem(
        custom_id=line.custom_id,
        index=index,
        provider_status="success",
        model=model,
        usage={"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
        if usage
        else None,
        finish_reason=choice.get("finish_reason"),
        error=None,
        raw=content if isinstance(content, str) else None,
    )
