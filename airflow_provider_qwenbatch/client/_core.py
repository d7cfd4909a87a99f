"""What the sync and async clients share: requests described as data, and answer parsing.

Each API call is a :class:`Call` (method, path, query, body, whether repeating it is
harmless, and how to parse the answer). :class:`~.sync.BatchClient` and
:class:`~.aio.AsyncBatchClient` only differ in how they send it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from airflow_provider_qwenbatch import __version__
from airflow_provider_qwenbatch.client.errors import (
    InvalidResponseError,
    QwenBatchConnectionError,
    QwenBatchError,
    error_from_response,
    request_id_of,
)
from airflow_provider_qwenbatch.client.models import (
    Batch,
    BatchCreateRequest,
    BatchList,
    FileDeleted,
    FileList,
    FileObject,
)
from airflow_provider_qwenbatch.client.regions import DEFAULT_BASE_URL
from airflow_provider_qwenbatch.client.status import BatchStatus

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
USER_AGENT = f"airflow-provider-qwenbatch/{__version__}"
# DashScope reads create_after / create_before as wall-clock time in UTC+8.
_UTC8 = timezone(timedelta(hours=8))
MAX_LIST_LIMIT = 100
MAX_FILE_LIST_LIMIT = 2000
MAX_INPUT_FILE_IDS = 20


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call, described as data.

    :param method: HTTP method.
    :param path: path below the base URL, e.g. ``/batches``.
    :param parse: turns the decoded JSON and the response into the result.
    :param params: query parameters.
    :param json_body: JSON body.
    :param idempotent: whether repeating the call is harmless (decides retries).
    :param timeout: overrides the client's timeout.
    :param max_retries: overrides the client's retry count (kill paths allow none).
    """

    method: str
    path: str
    parse: Callable[[Any, httpx.Response], T]
    params: Mapping[str, str] | None = None
    json_body: Any = None
    idempotent: bool = True
    timeout: httpx.Timeout | None = field(default=None)
    max_retries: int | None = None


def model_parser(model: type[M]) -> Callable[[Any, httpx.Response], M]:
    """Return a parser that validates a JSON answer into ``model``.

    :param model: the pydantic model of the answer.
    """

    def parse(data: Any, response: httpx.Response) -> M:
        try:
            obj = model.model_validate(data)
        except ValidationError as exc:
            raise InvalidResponseError(
                f"the server's answer is not a valid {model.__name__}: {_first_errors(exc)}",
                status_code=response.status_code,
                request_id=request_id_of(response, data),
                method=response.request.method,
                url=str(response.request.url),
            ) from None
        rid = request_id_of(response, data)
        if rid is not None and hasattr(obj, "_request_id"):
            obj._request_id = rid
        return obj

    return parse


def _first_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']} (got {str(err.get('input'))[:60]!r})")
    return "; ".join(parts)


def decode_json(response: httpx.Response) -> Any:
    """Decode a 2xx answer's JSON, turning a proxy's HTML page or a cut-off body into a clear error.

    :param response: a read response.
    """
    text = response.text
    try:
        # utf-8-sig: some gateways prefix a byte-order mark (seen in the recordings).
        return json.loads(text.lstrip("\ufeff"))
    except ValueError as exc:
        snippet = " ".join(text.split())[:120]
        what = "an HTML page" if snippet.lower().startswith(("<!doctype", "<html")) else "invalid JSON"
        raise InvalidResponseError(
            f"the server answered with {what} instead of JSON ({exc.__class__.__name__} at char "
            f"{getattr(exc, 'pos', '?')} of {len(text)}): {snippet!r}",
            status_code=response.status_code,
            request_id=request_id_of(response),
            method=response.request.method,
            url=str(response.request.url),
        ) from None


def transport_error(exc: httpx.TransportError, method: str, url: str) -> QwenBatchConnectionError:
    """Wrap an httpx transport failure (it carries no credentials) in the client's error type.

    :param exc: the httpx error.
    :param method: the call's method.
    :param url: the call's URL.
    """
    kind = exc.__class__.__name__
    detail = str(exc) or "no detail"
    return QwenBatchConnectionError(f"{kind}: {detail}", method=method, url=url)


def format_utc8(moment: datetime) -> str:
    """Format an aware datetime as DashScope's ``yyyyMMddHHmmss`` in UTC+8.

    :param moment: a timezone-aware datetime.
    :raises ValueError: for a naive datetime, whose zone would be a guess.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"create_after/create_before must be timezone-aware (got naive {moment.isoformat()}); "
            "DashScope reads them in UTC+8"
        )
    return moment.astimezone(_UTC8).strftime("%Y%m%d%H%M%S")


def normalise_base_url(base_url: str | None) -> str:
    """Strip a trailing slash; ``None`` gives the Beijing URL."""
    return (base_url or DEFAULT_BASE_URL).rstrip("/")


class ClientCore:
    """The transport-independent part of both clients: configuration and the calls.

    :param api_key: the DashScope API key; kept out of every repr, log and error.
    :param base_url: the OpenAI-compatible base URL (a region's, or the emulator's).
    :param timeout: default timeout of a call.
    :param retry: retry policy of safe calls.
    """

    def __init__(self, api_key: str, base_url: str | None, timeout: httpx.Timeout | float | None) -> None:
        if not api_key:
            raise QwenBatchError("no API key given: set it in the Connection or DASHSCOPE_API_KEY")
        self._api_key = api_key
        self.base_url = normalise_base_url(base_url)
        self.timeout = (
            timeout
            if isinstance(timeout, httpx.Timeout)
            else (DEFAULT_TIMEOUT if timeout is None else httpx.Timeout(timeout, connect=min(10.0, timeout)))
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key='***')"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}", "User-Agent": USER_AGENT}

    # ---- calls -------------------------------------------------------------------------

    @staticmethod
    def _create_batch_call(request: BatchCreateRequest) -> Call[Batch]:
        return Call(
            "POST",
            "/batches",
            model_parser(Batch),
            json_body=request.model_dump(exclude_none=True),
            idempotent=False,
        )

    @staticmethod
    def _retrieve_batch_call(batch_id: str, timeout: float | None, max_retries: int | None) -> Call[Batch]:
        return Call(
            "GET",
            f"/batches/{_path_id(batch_id)}",
            model_parser(Batch),
            timeout=httpx.Timeout(timeout) if timeout is not None else None,
            max_retries=max_retries,
        )

    @staticmethod
    def _cancel_batch_call(batch_id: str, timeout: float | None, max_retries: int | None) -> Call[Batch]:
        # Cancelling twice is harmless, so it is retried like a read.
        return Call(
            "POST",
            f"/batches/{_path_id(batch_id)}/cancel",
            model_parser(Batch),
            timeout=httpx.Timeout(timeout) if timeout is not None else None,
            max_retries=max_retries,
        )

    @staticmethod
    def _list_batches_call(
        *,
        after: str | None = None,
        limit: int | None = None,
        ds_name: str | None = None,
        status: Iterable[BatchStatus | str] | BatchStatus | str | None = None,
        input_file_ids: Iterable[str] | None = None,
        create_after: datetime | None = None,
        create_before: datetime | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> Call[BatchList]:
        params: dict[str, str] = {}
        if after:
            params["after"] = after
        if limit is not None:
            if not 1 <= limit <= MAX_LIST_LIMIT:
                raise ValueError(f"limit must be from 1 to {MAX_LIST_LIMIT}, got {limit}")
            params["limit"] = str(limit)
        if ds_name:
            params["ds_name"] = ds_name
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            params["status"] = ",".join(BatchStatus(s).value for s in statuses)
        if input_file_ids is not None:
            ids = list(input_file_ids)
            if len(ids) > MAX_INPUT_FILE_IDS:
                raise ValueError(f"input_file_ids takes at most {MAX_INPUT_FILE_IDS} ids, got {len(ids)}")
            if ids:
                params["input_file_ids"] = ",".join(ids)
        if create_after is not None:
            params["create_after"] = format_utc8(create_after)
        if create_before is not None:
            params["create_before"] = format_utc8(create_before)
        return Call(
            "GET",
            "/batches",
            model_parser(BatchList),
            params=params,
            timeout=httpx.Timeout(timeout) if timeout is not None else None,
            max_retries=max_retries,
        )

    @staticmethod
    def _retrieve_file_call(file_id: str) -> Call[FileObject]:
        return Call("GET", f"/files/{_path_id(file_id)}", model_parser(FileObject))

    @staticmethod
    def _list_files_call(
        *, after: str | None = None, limit: int | None = None, purpose: str | None = None
    ) -> Call[FileList]:
        params: dict[str, str] = {}
        if after:
            params["after"] = after
        if limit is not None:
            if not 1 <= limit <= MAX_FILE_LIST_LIMIT:
                raise ValueError(f"limit must be from 1 to {MAX_FILE_LIST_LIMIT}, got {limit}")
            params["limit"] = str(limit)
        if purpose:
            params["purpose"] = purpose
        return Call("GET", "/files", model_parser(FileList), params=params)

    @staticmethod
    def _delete_file_call(file_id: str) -> Call[FileDeleted]:
        return Call("DELETE", f"/files/{_path_id(file_id)}", model_parser(FileDeleted))


def _path_id(value: str) -> str:
    # An id is a single path segment; refuse anything that would change the URL's meaning.
    if not value or "/" in value or "?" in value or "#" in value or value in (".", ".."):
        raise ValueError(f"invalid id {value!r}")
    return value


def short_failure(exc: BaseException) -> str:
    """Describe a failure in a few words for a retry log line."""
    if isinstance(exc, QwenBatchError):
        return f"HTTP {exc.status_code} {exc.code or ''}".strip()
    return exc.__class__.__name__


def ensure_ok(response: httpx.Response) -> None:
    """Raise the typed error of an HTTP error answer (the response must be read)."""
    if response.is_error:
        raise error_from_response(response)
