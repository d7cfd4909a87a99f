"""The synchronous batch API client, for operators, scripts and notebooks."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

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


class BatchClient(ClientCore):
    """Synchronous client of the DashScope (Qwen Cloud) OpenAI-compatible Batch API.

    Usable without Airflow::

        with BatchClient(api_key, base_url=Region.SINGAPORE.base_url) as client:
            f = client.upload_file("requests.jsonl")
            batch = client.create_batch(f.id, "/v1/chat/completions")

    :param api_key: the DashScope API key (never logged nor shown in a repr).
    :param base_url: the region's base URL, or a local emulator's.
    :param timeout: default timeout of one request, seconds or an ``httpx.Timeout``.
    :param retry: retry policy (safe calls only; see :mod:`.retry`).
    :param transport: an httpx transport (tests pass an ``httpx.MockTransport``).
    :param logger: where retries and progress are logged.
    :param sleep: how to wait between retries (tests pass a recorder).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        logger: LoggerLike | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(api_key, base_url, timeout)
        self.retry = retry or RetryPolicy()
        self.log = logger or log
        self._sleep = sleep
        self._rng = random.Random()
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            headers=self._headers(),
            timeout=self.timeout,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing -------------------------------------------------------------------------

    def _with_retries(
        self, what: str, idempotent: bool, attempt_fn: Callable[[], T], max_retries: int | None = None
    ) -> T:
        attempt = 0
        while True:
            try:
                return attempt_fn()
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
                self._sleep(delay)

    def _send(self, call: Call[T]) -> T:
        url = f"{self.base_url}{call.path}"

        def attempt() -> T:
            response = self._http.request(
                call.method,
                call.path.lstrip("/"),
                params=dict(call.params) if call.params else None,
                json=call.json_body,
                timeout=call.timeout or self.timeout,
            )
            ensure_ok(response)
            return call.parse(decode_json(response), response)

        return self._with_retries(f"{call.method} {url}", call.idempotent, attempt, call.max_retries)

    # ---- batches --------------------------------------------------------------------------

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
    ) -> Batch:
        """Create a batch (``POST /batches``). Never retried blindly: a retry could start a second paid batch.

        :param input_file_id: an uploaded file id, an OSS presigned URL or ``oss:{region}:{bucket}/{path}``.
        :param endpoint: ``/v1/chat/completions``, ``/v1/embeddings`` or ``/v1/chat/ds-test``.
        :param completion_window: ``24h`` to ``336h`` (or ``1d`` to ``14d``).
        :param metadata: ``ds_name`` (<= 100 chars), ``ds_description`` (<= 200), ``ds_batch_finish_callback``.
        """
        request = BatchCreateRequest(
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
        )
        return self._send(self._create_batch_call(request))

    def retrieve_batch(
        self, batch_id: str, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Batch:
        """Read a batch (``GET /batches/{id}``; the server keeps 30 days).

        :param batch_id: the batch id.
        :param timeout: timeout of this request in seconds.
        :param max_retries: retries of this call (default: the client's policy).
        """
        return self._send(self._retrieve_batch_call(batch_id, timeout, max_retries))

    def cancel_batch(
        self, batch_id: str, *, timeout: float | None = None, max_retries: int | None = None
    ) -> Batch:
        """Ask the server to cancel a batch; it answers ``cancelling``, ``cancelled`` follows later.

        :param batch_id: the batch id.
        :param timeout: timeout of this request in seconds (kill paths use a short one).
        :param max_retries: retries of this call (default: the client's policy).
        """
        return self._send(self._cancel_batch_call(batch_id, timeout, max_retries))

    def list_batches(
        self,
        *,
        after: str | None = None,
        limit: int | None = None,
        ds_name: str | None = None,
        status: Iterable[BatchStatus | str] | BatchStatus | str | None = None,
        input_file_ids: Iterable[str] | None = None,
        create_after: datetime | None = None,
        create_before: datetime | None = None,
    ) -> BatchList:
        """Read one page of batches, newest first.

        :param after: cursor: the ``last_id`` of the previous page.
        :param limit: page size, 1 to 100 (server default 20).
        :param ds_name: substring of ``metadata.ds_name``.
        :param status: one status or several.
        :param input_file_ids: at most 20 input file ids.
        :param create_after: aware datetime; sent in UTC+8 as the API expects.
        :param create_before: aware datetime; sent in UTC+8.
        """
        return self._send(
            self._list_batches_call(
                after=after,
                limit=limit,
                ds_name=ds_name,
                status=status,
                input_file_ids=input_file_ids,
                create_after=create_after,
                create_before=create_before,
            )
        )

    def iter_batches(self, *, page_size: int = 100, **filters: Any) -> Iterator[Batch]:
        """Iterate over every batch matching the filters, across all pages.

        :param page_size: batches per request (1 to 100).
        :param filters: the filters of :meth:`list_batches`.
        """
        after: str | None = filters.pop("after", None)
        while True:
            page = self.list_batches(after=after, limit=page_size, **filters)
            yield from page.batches
            if not page.has_more or not page.last_id or page.last_id == after:
                return
            after = page.last_id

    # ---- files ----------------------------------------------------------------------------

    def upload_file(self, path: str | os.PathLike[str], *, filename: str | None = None) -> FileObject:
        """Upload a JSONL file with ``purpose=batch``, streamed from disk (memory does not grow with size).

        Validate it first with :func:`~.jsonl.validate_jsonl_file`; the operators do.

        :param path: local file path.
        :param filename: name to give the file on the server (default: the path's name).
        """
        p = Path(path)
        with p.open("rb") as fh:
            return self.upload_fileobj(fh, filename=filename or p.name, size=p.stat().st_size)

    def upload_fileobj(self, fh: IO[bytes], *, filename: str, size: int | None = None) -> FileObject:
        """Upload from an open binary file object, streamed in chunks.

        :param fh: a seekable binary file object (rewound on retry).
        :param filename: name to give the file on the server.
        :param size: its size in bytes, for progress logging.
        """
        url = f"{self.base_url}/files"
        progress = ProgressLog(self.log, f"upload {filename}", size)
        start = fh.tell()
        parse = model_parser(FileObject)

        def attempt() -> FileObject:
            fh.seek(start)
            files, data = upload_fields(fh, filename, progress)
            response = self._http.post("files", files=files, data=data)
            ensure_ok(response)
            progress.done()
            return parse(decode_json(response), response)

        return self._with_retries(f"POST {url}", True, attempt)

    def retrieve_file(self, file_id: str) -> FileObject:
        """Read a file's metadata.

        :param file_id: the file id.
        """
        return self._send(self._retrieve_file_call(file_id))

    def list_files(
        self, *, after: str | None = None, limit: int | None = None, purpose: str | None = None
    ) -> FileList:
        """Read one page of files.

        :param after: cursor (last id of the previous page).
        :param limit: 1 to 2000.
        :param purpose: e.g. ``batch``.
        """
        return self._send(self._list_files_call(after=after, limit=limit, purpose=purpose))

    def delete_file(self, file_id: str) -> FileDeleted:
        """Delete a file (the account keeps at most 10,000 files and they never expire).

        :param file_id: the file id.
        """
        return self._send(self._delete_file_call(file_id))

    def download_file(self, file_id: str, destination: str | os.PathLike[str]) -> int:
        """Stream a result file's content to a local path; returns the bytes written.

        The file appears at ``destination`` only once complete (written beside it, then renamed).
        Only result files can be downloaded; input files cannot.

        :param file_id: a result file id (``output_file_id`` or ``error_file_id``).
        :param destination: local path to write.
        """
        url = f"{self.base_url}/files/{file_id}/content"

        def attempt() -> int:
            with (
                atomic_destination(Path(destination)) as out,
                self._http.stream("GET", f"files/{_path_id(file_id)}/content") as response,
            ):
                if response.is_error:
                    response.read()
                    ensure_ok(response)
                progress = ProgressLog(self.log, f"download {file_id}", _length(response))
                written = 0
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
                    progress.advance(len(chunk))
                progress.done()
                return written

        return self._with_retries(f"GET {url}", True, attempt)

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """Iterate over the lines of a result file as they stream in (no retry once lines were yielded).

        :param file_id: a result file id.
        """
        with self._http.stream("GET", f"files/{_path_id(file_id)}/content") as response:
            if response.is_error:
                response.read()
                ensure_ok(response)
            for line in response.iter_lines():
                if line.strip():
                    yield line

    def wait_for_batch(
        self,
        batch_id: str,
        *,
        poll_interval: float = 60.0,
        timeout: float | None = None,
        on_poll: Callable[[Batch], None] | None = None,
    ) -> Batch:
        """Poll until the batch is terminal and return it.

        :param batch_id: the batch id.
        :param poll_interval: seconds between reads (the API's own guidance: about once a minute).
        :param timeout: give up after this many seconds (raises ``TimeoutError``; the batch keeps running).
        :param on_poll: called with every batch read, e.g. to log progress.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.retrieve_batch(batch_id)
            if on_poll is not None:
                on_poll(batch)
            if batch.status.is_terminal:
                return batch
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout:.0f}s")
            self._sleep(poll_interval)


def _length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None
