"""The error answer of the API, and the parsing of list query times that raises it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

_UTC8 = timezone(timedelta(hours=8))


class ApiError(Exception):
    """An error answer: ``{"error": {message, type, param, code}}`` with an HTTP status.

    :param status: HTTP status.
    :param message: the message.
    :param code: the error code.
    :param param: the parameter concerned.
    :param type_: the error type.
    :param headers: extra response headers (e.g. ``retry-after``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def parse_list_time(value: str, param: str) -> int:
    """Parse ``yyyyMMddHHmmss`` (or ``yyyyMMdd``) as UTC+8 wall-clock time into Unix seconds.

    :param value: the query value.
    :param param: its name, for the error.
    """
    for fmt in ("%Y%m%d%H%M%S", "%Y%m%d"):
        try:
            return int(datetime.strptime(value, fmt).replace(tzinfo=_UTC8).timestamp())
        except ValueError:
            continue
    raise ApiError(
        400, f"'{value}' is not a valid {param}; use yyyyMMddHHmmss.", code="invalid_value", param=param
    )
