"""Typed errors of the batch API client. No Airflow import here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

REQUEST_ID_HEADER = "x-request-id"


class QwenBatchError(Exception):
    """Base class of every error raised by the batch client.

    :param message: what went wrong, for a person.
    :param status_code: the HTTP status of the server's answer, if there was one.
    :param code: the server's error code (``Throttling.RateQuota``, ``invalid_api_key``...).
    :param request_id: the server's ``x-request-id`` (or body ``request_id``), to quote to support.
    :param method: HTTP method of the failed call.
    :param url: URL of the failed call (never carries credentials).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.method = method
        self.url = url
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        where = " ".join(p for p in (self.method, self.url) if p)
        details = []
        if where:
            details.append(where)
        if self.status_code is not None:
            details.append(f"HTTP {self.status_code}")
        if self.code:
            details.append(f"code={self.code}")
        details.append(f"x-request-id={self.request_id or 'none'}")
        parts.append(f"({', '.join(details)})")
        return " ".join(parts)


class QwenBatchConnectionError(QwenBatchError):
    """The server could not be reached, or the connection broke before an answer."""


class QwenBatchAPIError(QwenBatchError):
    """The server answered with an HTTP error status."""


class BadRequestError(QwenBatchAPIError):
    """HTTP 400/409/422: the request was refused as invalid."""


class AuthenticationError(QwenBatchAPIError):
    """HTTP 401/403: the API key is missing, wrong, or for another region."""


class NotFoundError(QwenBatchAPIError):
    """HTTP 404: no such batch or file (batches are only kept 30 days)."""


class RateLimitError(QwenBatchAPIError):
    """HTTP 429: throttled (``Throttling.RateQuota``); retryable."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class ServerError(QwenBatchAPIError):
    """HTTP 5xx: the server failed; retryable for safe calls."""


class InvalidResponseError(QwenBatchError):
    """The server answered 2xx but with a body that is not what the API promises."""


@dataclass(frozen=True)
class ValidationProblem:
    """One rule broken by one line of a batch input file.

    :param line: 1-based line number, or ``None`` for a whole-file rule.
    :param rule: short code of the broken rule (mirrors the server's codes where one exists).
    :param message: what is wrong, for a person.
    :param field: the JSON field concerned, if any.
    """

    line: int | None
    rule: str
    message: str
    field: str | None = None

    def render(self, source: str, unit: str = "line") -> str:
        """Render as ``source:line: [rule] field: message`` (``source: request 5 (index 4): ...`` for a list).

        :param source: the file or input named in the message.
        :param unit: ``line`` for a file; ``request`` for a list of request dicts, whose
            positions a user looks up by 0-based index.
        """
        if self.line is None:
            where = source
        elif unit == "request":
            where = f"{source}: {position(self.line, unit)}"
        else:
            where = f"{source}:{self.line}"
        field = f" field '{self.field}':" if self.field else ""
        return f"{where}: [{self.rule}]{field} {self.message}"


def position(n: int, unit: str) -> str:
    """Name the 1-based position ``n`` of an input: ``line 5``, or ``request 5 (index 4)`` in a list.

    :param n: 1-based position.
    :param unit: ``line`` or ``request``.
    """
    return f"request {n} (index {n - 1})" if unit == "request" else f"line {n}"


class InputValidationError(QwenBatchError):
    """A batch input (JSONL file or request list) breaks the API's rules; nothing was uploaded.

    :param source: the file path or a description of the input.
    :param problems: every problem found (the first ones, if there were very many).
    :param truncated: whether more problems were found than are listed.
    :param unit: ``line`` (a file) or ``request`` (a list of request dicts).
    """

    def __init__(
        self, source: str, problems: list[ValidationProblem], *, truncated: bool = False, unit: str = "line"
    ) -> None:
        self.source = source
        self.problems = problems
        self.truncated = truncated
        self.unit = unit
        super().__init__(self._summary())

    def _summary(self) -> str:
        lines = [p.render(self.source, self.unit) for p in self.problems]
        more = "\n  ... and more problems not listed" if self.truncated else ""
        n = len(self.problems)
        head = f"Invalid batch input {self.source}: {n} problem{'s' if n != 1 else ''}; nothing was uploaded"
        return head + ":\n  " + "\n  ".join(lines) + more

    def _render(self) -> str:
        return self.message

    @property
    def first(self) -> ValidationProblem:
        """The first problem found."""
        return self.problems[0]


def request_id_of(response: httpx.Response, body: Any = None) -> str | None:
    """Return the server's request id: the ``x-request-id`` header, else a body ``request_id``."""
    rid: str | None = response.headers.get(REQUEST_ID_HEADER)
    if rid:
        return rid
    if isinstance(body, dict):
        value = body.get("request_id")
        if isinstance(value, str):
            return str(value)
    return None


def parse_retry_after(response: httpx.Response) -> float | None:
    """Return the ``Retry-After`` delay in seconds, if the header is a number of seconds."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> QwenBatchAPIError:
    """Map an HTTP error answer to a typed error.

    Both error shapes the service sends are parsed: ``{"error": {"message", "type", "code"}}``
    (OpenAI-compatible) and ``{"code", "message", "request_id"}`` (DashScope native). A body
    that is not JSON (an HTML 502 page from a proxy) gives its first characters instead.

    :param response: the HTTP response, already read.
    """
    body: Any = None
    text = response.text if response.is_stream_consumed or not response.is_closed else ""
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    code: str | None = None
    message: str | None = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = _str_or_none(err.get("code")) or _str_or_none(err.get("type"))
            message = _str_or_none(err.get("message"))
        else:
            code = _str_or_none(body.get("code"))
            message = _str_or_none(body.get("message"))
    if message is None:
        snippet = " ".join(text.split())[:200]
        kind = "non-JSON" if body is None and text else "unexpected"
        message = f"{kind} error body: {snippet!r}" if snippet else "empty error body"
    status = response.status_code
    cls: type[QwenBatchAPIError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        return RateLimitError(
            message,
            retry_after=parse_retry_after(response),
            status_code=status,
            code=code,
            request_id=request_id_of(response, body),
            method=response.request.method,
            url=str(response.request.url),
        )
    elif status >= 500:
        cls = ServerError
    else:
        cls = BadRequestError
    return cls(
        message,
        status_code=status,
        code=code,
        request_id=request_id_of(response, body),
        method=response.request.method,
        url=str(response.request.url),
    )


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)
