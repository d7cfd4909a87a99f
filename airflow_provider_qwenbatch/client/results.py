"""Reading result files: per-line success, failures and token usage, in one streaming pass."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic_core import from_json

from airflow_provider_qwenbatch.client.models import BatchResultLine


@dataclass
class ResultCounts:
    """What a result file holds, judged line by line (not from ``request_counts``).

    :param lines: result lines read.
    :param succeeded: lines with HTTP 200 and no error.
    :param failed: lines with an error or a non-200 status (even inside the output file).
    :param unreadable: lines that are not valid result JSON (counted as failed too).
    :param prompt_tokens: summed over successful lines.
    :param completion_tokens: summed over successful lines.
    :param total_tokens: summed over successful lines.
    :param failed_examples: the first few failures (custom_id and error), for the log.
    """

    lines: int = 0
    succeeded: int = 0
    failed: int = 0
    unreadable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    failed_examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, other: ResultCounts) -> None:
        """Add another file's counts to these."""
        for name in (
            "lines",
            "succeeded",
            "failed",
            "unreadable",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed_examples.extend(other.failed_examples[: max(0, 5 - len(self.failed_examples))])

    def record(self, outcome: LineOutcome, n: int, *, examples: int = 5) -> None:
        """Count one judged line.

        :param outcome: from :func:`classify_line`.
        :param n: the line's 1-based number in its file (named when the line is unreadable).
        :param examples: how many failures to keep as examples.
        """
        self.lines += 1
        if outcome.ok:
            self.succeeded += 1
            self.prompt_tokens += outcome.usage[0]
            self.completion_tokens += outcome.usage[1]
            self.total_tokens += outcome.usage[2]
            return
        self.failed += 1
        if outcome.custom_id is None:
            self.unreadable += 1
        if len(self.failed_examples) < examples:
            self.failed_examples.append(
                {"custom_id": outcome.custom_id or f"<line {n}>", "error": outcome.error[:200]}
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for XCom."""
        return asdict(self)


# Why a request failed decides whether sending it again can help. Per API-FACTS, OpenAI writes
# ``batch_expired`` / ``batch_cancelled`` for requests an expired or cancelled batch never ran;
# DashScope's codes for those are UNCONFIRMED, so any code naming the cause (or a timeout, an
# internal error, throttling) counts, and a line with an HTTP status is judged by the status.
_EXPIRED_HINTS = ("expire",)
_CANCELLED_HINTS = ("cancel",)
_TRANSIENT_HINTS = (
    "timeout",
    "timed_out",
    "internal",
    "server_error",
    "unavailable",
    "throttl",
    "rate_limit",
)
_RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True)
class LineOutcome:
    """What one result line says about its request.

    :param custom_id: the request's ``custom_id`` (``None`` when the line is unreadable).
    :param ok: HTTP 200 and no error.
    :param retryable: failed for a reason another try can fix (5xx, 408/429, timeout, never run
        by an expired batch, or by a cancelled one when cancelled requests are retried).
    :param error: the failure, for logs (empty when ok).
    :param usage: prompt, completion and total tokens of a successful answer.
    """

    custom_id: str | None
    ok: bool
    retryable: bool = False
    error: str = ""
    usage: tuple[int, int, int] = (0, 0, 0)


def error_code(line: BatchResultLine) -> str | None:
    """The error code of a result line: its own ``error.code``, else the response body's ``error.code``.

    :param line: the parsed result line.
    """
    body = line.response.body if line.response is not None else None
    body_error = body.get("error") if isinstance(body, dict) else None
    code = (line.error.code if line.error is not None else None) or (
        body_error.get("code") if isinstance(body_error, dict) else None
    )
    return str(code) if code is not None else None


def unrun_cause(code: str | None) -> Literal["expired", "cancelled"] | None:
    """Whether an error code says the request never ran because its batch expired or was cancelled.

    Matched by what the code names (``batch_expired``, ``batch_cancelled`` as OpenAI writes them):
    DashScope's own codes for these lines are UNCONFIRMED.

    :param code: the line's error code (see :func:`error_code`).
    """
    low = (code or "").lower()
    if any(h in low for h in _EXPIRED_HINTS):
        return "expired"
    if any(h in low for h in _CANCELLED_HINTS):
        return "cancelled"
    return None


def is_retryable(line: BatchResultLine, *, retry_cancelled: bool = True) -> bool:
    """Whether a failed result line is worth sending again; content and validation errors (4xx) are not.

    :param line: the parsed result line.
    :param retry_cancelled: count requests a cancelled batch never ran as retryable (yes when the
        batch was cancelled by a timeout; no when a person cancelled it on purpose).
    """
    if line.ok:
        return False
    status = line.response.status_code if line.response is not None else None
    if status is not None and status != 200:
        return status >= 500 or status in _RETRYABLE_STATUS
    code = error_code(line)
    cause = unrun_cause(code)
    if cause == "expired" or any(h in (code or "").lower() for h in _TRANSIENT_HINTS):
        return True
    return retry_cancelled and cause == "cancelled"


def _parse(raw: bytes | str) -> Any:
    """The line's JSON value, or None when it is not JSON.

    pydantic-core's ``from_json`` (Rust) reads a result line about 5x faster than :mod:`json`;
    what it refuses (a lone surrogate escape, nesting over 200 levels, a BOM, UTF-16...) is read
    by :mod:`json` as before, so the value, and the judgement, are the same either way.
    """
    try:
        # Keys only: caching values would keep thousands of (unique) ids alive, and be slower.
        return from_json(raw, cache_strings="keys")
    except ValueError:
        pass
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _plain_success(raw: bytes | str) -> LineOutcome | None:
    """The common case, judged without building the pydantic model: HTTP 200, no error, plain usage.

    Anything else (or anything unusual) returns None and goes through :class:`BatchResultLine`,
    so the rule stays the model's ``ok``; this only skips building it for ordinary successes.
    """
    d = _parse(raw)
    if type(d) is not dict or d.get("error") is not None:
        return None
    cid, response = d.get("custom_id"), d.get("response")
    if type(cid) is not str or type(response) is not dict or type(response.get("status_code")) is not int:
        return None
    if response["status_code"] != 200:
        return None
    body = response.get("body")
    usage = body.get("usage") if type(body) is dict else None
    if usage is None:
        return LineOutcome(cid, True)
    if type(usage) is not dict:
        return LineOutcome(cid, True)  # the model's ``usage`` ignores a usage that is not an object
    p, c, t = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), usage.get("total_tokens", 0)
    if type(p) is not int or type(c) is not int or type(t) is not int:
        return None
    return LineOutcome(cid, True, usage=(p, c, t))


def classify_line(raw: bytes | str, *, retry_cancelled: bool = True) -> LineOutcome:
    """Judge one line of an output or error file; the one rule every counter and merger uses.

    :param raw: the line as read.
    :param retry_cancelled: see :func:`is_retryable`.
    """
    fast = _plain_success(raw)
    if fast is not None:
        return fast
    try:
        line = BatchResultLine.model_validate_json(raw)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError, bad JSON included
        return LineOutcome(None, False, False, f"unreadable: {exc}"[:200])
    if line.ok:
        usage = line.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) if usage else (0, 0, 0)
        return LineOutcome(line.custom_id, True, usage=tokens)
    return LineOutcome(
        line.custom_id, False, is_retryable(line, retry_cancelled=retry_cancelled), line.describe_error()
    )


def count_results(path: str | os.PathLike[str], *, examples: int = 5) -> ResultCounts:
    """Count successes, failures and tokens of a downloaded result file.

    :param path: a JSONL result file (output or error file).
    :param examples: how many failures to keep as examples.
    """
    counts = ResultCounts()
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            counts.record(classify_line(raw), n, examples=examples)
    return counts
