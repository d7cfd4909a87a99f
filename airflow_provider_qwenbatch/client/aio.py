"""The asynchronous batch API client, for triggers and async code: it never blocks the event loop on I/O."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from airflow_provider_qwenbatch.client._core import (
    Call,
    ClientCore,
    _path_id,
    decode_json,
    ensure_ok,
    model_parser,
    short_failure,
    transport_error,
)
from airflow_provider_qwenbatch.client.errors import QwenBatchAPIError
from airflow_provider_qwenbatch.client.logs import LoggerLike
from airflow_provider_qwenbatch.client.models import (
    Batch,
    BatchCreateRequest,
    BatchList,
    FileDeleted,
    FileList,
    FileObject,
)
from airflow_provider_qwenbatch.client.retry import RetryPolicy
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.transfer import ProgressLog, atomic_destination, upload_fields

T = TypeVar("T")
log = logging.getLogger(__name__)


class AsyncBatchClient(ClientCore):
    """Asynchronous client of the DashScope Batch API (same calls as :class:`~.sync.BatchClient`).

    :param api_key: the DashScope API key (never logged nor shown in a repr).
    :param base_url: the region's base URL, or a local emulator's.
    :param timeout: default timeout of one request, seconds or an ``httpx.Timeout``.
    :param retry: retry policy (safe calls only).
    :param transport: an httpx async transport (tests pass an ``httpx.MockTransport``).
    :param logger: where retries and progress are logged.
    :param sleep: how to wait between retries.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        logger: LoggerLike | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limits: httpx.Limits | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout)
        self.retry = retry or RetryPolicy()
        self.log = logger or log
        self._sleep = sleep
        self._rng = random.Random()
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=self._headers(),
            timeout=self.timeout,
            transport=transport,
            follow_redirects=False,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncBatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _with_retries(
        self,
        what: str,
        idempotent: bool,
        attempt_fn: Callable[[], Awaitable[T]],
        max_retries: int | None = None,
    ) -> T:
        attempt = 0
        while True:
            try:
                return await attempt_fn()
            except (QwenBatchAPIError, httpx.TransportError) as exc:
                attempt += 1
                limit = self.retry.max_retries if max_retries is None else max_retries
                if attempt > limit or not self.retry.is_retryable(exc, idempotent=idempotent):
                    if isinstance(exc, httpx.TransportError):
                        raise transport_error(exc, *what.split(" ", 1)) from None
                    raise
                delay = self.retry.delay(attempt, exc, self._rng)
                rid = getattr(exc, "request_id", None)
                self.log.warning(
                    "%s failed (%s, x-request-id=%s); retry %d/%d in %.1fs",
                    what,
                    short_failure(exc),
                    rid or "none",
                    attempt,
                    limit,
                    delay,
                )
                await self._sleep(delay)

    async def _send(self, call: Call[T]) -> T:
        url = f"{self.base_url}{call.path}"

        async def attempt() -> T:
            response = await self._http.request(
                call.method,
                call.path.lstrip("/"),
                params=dict(call.params) if call.params else None,
                json=call.json_body,
                timeout=call.timeout or self.timeout,
            )
            ensure_ok(response)
            return call.parse(decode_json(response), response)

        return await self._with_retries(f"{call.method} {url}", call.idempotent, attempt, call.max_retries)

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
    ) -> Batch:
        """Create a batch; never retried blindly (see :meth:`.sync.BatchClient.create_batch`).

        :param input_file_id: an uploaded file id or OSS reference.
        :param endpoint: the batch endpoint.
        :param completion_window: ``24h`` to ``336h``.
        :param metadata: ``ds_name``, ``ds_description``, ``ds_batch_finish_callback``.
        """
        request = BatchCreateRequest(
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
        )
        return await self._send(self._create_batch_call(request))

    async def retrieve_batch(
        self, batch_id: str, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Batch:
        """Read a batch.

        :param batch_id: the batch id.
        :param timeout: timeout of this request in seconds.
        :param max_retries: retries of this call (default: the client's policy).
        """
        return await self._send(self._retrieve_batch_call(batch_id, timeout, max_retries))

    async def cancel_batch(
        self, batch_id: str, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Batch:
        """Ask the server to cancel a batch.

        :param batch_id: the batch id.
        :param timeout: timeout of this request in seconds.
        :param max_retries: retries of this call (default: the client's policy).
        """
        return await self._send(self._cancel_batch_call(batch_id, timeout, max_retries))

    async def list_batches(
        self,
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
    ) -> BatchList:
        """Read one page of batches, newest first (filters as in :meth:`.sync.BatchClient.list_batches`).

        :param after: cursor.
        :param limit: 1 to 100.
        :param ds_name: substring of ``metadata.ds_name``.
        :param status: one status or several.
        :param input_file_ids: at most 20 ids.
        :param create_after: aware datetime.
        :param create_before: aware datetime.
        :param timeout: timeout of this request in seconds (default: the client's).
        :param max_retries: retries of this call (default: the client's policy).
        """
        return await self._send(
            self._list_batches_call(
                after=after,
                limit=limit,
                ds_name=ds_name,
                status=status,
                input_file_ids=input_file_ids,
                create_after=create_after,
                create_before=create_before,
                timeout=timeout,
                max_retries=max_retries,
            )
        )

    async def iter_batches(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[Batch]:
        """Iterate over every batch matching the filters, across all pages.

        :param page_size: batches per request.
        :param filters: the filters of :meth:`list_batches`.
        """
        after: str | None = filters.pop("after", None)
        while True:
            page = await self.list_batches(after=after, limit=page_size, **filters)
            for batch in page.batches:
                yield batch
            if not page.has_more or not page.last_id or page.last_id == after:
                return
            after = page.last_id

    async def upload_file(self, path: str | os.PathLike[str], *, filename: str | None = None) -> FileObject:
        """Upload a JSONL file with ``purpose=batch``, streamed from disk.

        :param path: local file path.
        :param filename: name to give the file on the server.
        """
        p = Path(path)
        url = f"{self.base_url}/files"
        size = (await asyncio.to_thread(p.stat)).st_size
        progress = ProgressLog(self.log, f"upload {p.name}", size)
        parse = model_parser(FileObject)

        async def attempt() -> FileObject:
            # httpx reads the file in 64 KiB chunks as it sends; opening it is not worth a thread.
            with p.open("rb") as fh:  # noqa: ASYNC230
                files, data = upload_fields(fh, filename or p.name, progress)
                response = await self._http.post("files", files=files, data=data)
            ensure_ok(response)
            progress.done()
            return parse(decode_json(response), response)

        return await self._with_retries(f"POST {url}", True, attempt)

    async def retrieve_file(self, file_id: str) -> FileObject:
        """Read a file's metadata.

        :param file_id: the file id.
        """
        return await self._send(self._retrieve_file_call(file_id))

    async def list_files(
        self, *, after: str | None = None, limit: int | None = None, purpose: str | None = None
    ) -> FileList:
        """Read one page of files.

        :param after: cursor (last id of the previous page).
        :param limit: 1 to 2000.
        :param purpose: e.g. ``batch``.
        """
        return await self._send(self._list_files_call(after=after, limit=limit, purpose=purpose))

    async def delete_file(self, file_id: str) -> FileDeleted:
        """Delete a file.

        :param file_id: the file id.
        """
        return await self._send(self._delete_file_call(file_id))

    async def download_file(self, file_id: str, destination: str | os.PathLike[str]) -> int:
        """Stream a result file's content to a local path; returns the bytes written.

        :param file_id: a result file id.
        :param destination: local path (written beside, then renamed into place).
        """
        url = f"{self.base_url}/files/{file_id}/content"

        async def attempt() -> int:
            with atomic_destination(Path(destination)) as out:
                async with self._http.stream("GET", f"files/{_path_id(file_id)}/content") as response:
                    if response.is_error:
                        await response.aread()
                        ensure_ok(response)
                    length = response.headers.get("content-length")
                    progress = ProgressLog(self.log, f"download {file_id}", int(length) if length else None)
                    written = 0
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
                        written += len(chunk)
                        progress.advance(len(chunk))
                    progress.done()
                    return written

        return await self._with_retries(f"GET {url}", True, attempt)

    async def aiter_file_lines(self, file_id: str) -> AsyncIterator[str]:
        """Iterate over the lines of a result file as they stream in.

        :param file_id: a result file id.
        """
        async with self._http.stream("GET", f"files/{_path_id(file_id)}/content") as response:
            if response.is_error:
                await response.aread()
                ensure_ok(response)
            async for line in response.aiter_lines():
                if line.strip():
                    yield line
