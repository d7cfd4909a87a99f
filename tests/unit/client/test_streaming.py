"""Uploads and downloads stream: memory stays bounded whatever the file size, and a failed
download never leaves a file where a complete one is expected.

``httpx.MockTransport`` calls ``request.read()`` before its handler, which would itself hold a
whole upload in memory; :class:`StreamingMockTransport` is the same mock without that read, so
the handler consumes the request stream chunk by chunk as a real server would.
"""

from __future__ import annotations

import hashlib
import inspect
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.client import (
    AsyncBatchClient,
    BatchClient,
    NotFoundError,
    QwenBatchConnectionError,
    RetryPolicy,
    ServerError,
)
from tests.recordings import load

from .conftest import API_KEY, BASE_URL, SleepRecorder, api_path

MiB = 1024 * 1024
BIG = 200 * MiB
SMALL = 20 * MiB
LINE = 256


class StreamingMockTransport(httpx.MockTransport):
    """``httpx.MockTransport`` that hands the handler the request with its body still unread."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)  # type: ignore[return-value]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = self.handler(request)
        if inspect.isawaitable(response):
            response = await response
        return response


class UploadSink:
    """A server end that reads an upload chunk by chunk and keeps only counters."""

    def __init__(self) -> None:
        self.chunks = 0
        self.total = 0
        self.max_chunk = 0
        self.newlines = 0
        self.head = b""
        self.content_length: int | None = None
        self.paths: list[str] = []

    def _consume(self, chunk: bytes) -> None:
        self.chunks += 1
        self.total += len(chunk)
        self.max_chunk = max(self.max_chunk, len(chunk))
        self.newlines += chunk.count(b"\n")
        if len(self.head) < 1024:
            self.head += chunk[: 1024 - len(self.head)]

    def _start(self, request: httpx.Request) -> None:
        self.paths.append(api_path(request))
        self.content_length = int(request.headers["content-length"])

    def handler(self, request: httpx.Request) -> httpx.Response:
        self._start(request)
        assert isinstance(request.stream, httpx.SyncByteStream)
        for chunk in request.stream:
            self._consume(chunk)
        return load("upload-file").response(request)

    async def ahandler(self, request: httpx.Request) -> httpx.Response:
        self._start(request)
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            self._consume(chunk)
        return load("upload-file").response(request)


def write_jsonl_of_size(path: Path, size: int) -> int:
    """Write ``size`` bytes of fixed-length JSONL lines in 1 MiB blocks; return the line count."""
    assert size % MiB == 0
    lines_per_block = MiB // LINE
    with path.open("wb") as out:
        for block_no in range(size // MiB):
            parts = []
            for i in range(lines_per_block):
                head = (
                    b'{"custom_id":"%010d","method":"POST","url":"/v1/chat/completions","body":{"model":"qwen-flash","input":"'
                    % (block_no * lines_per_block + i)
                )
                parts.append(head + b"x" * (LINE - len(head) - 4) + b'"}}\n')
            out.write(b"".join(parts))
    return (size // MiB) * lines_per_block


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    path = tmp_path_factory.mktemp("big") / "requests.jsonl"
    lines = write_jsonl_of_size(path, BIG)
    yield path, lines
    path.unlink()


def peak_during(fn: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


async def apeak_during(coro: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = await coro
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# ---- upload -------------------------------------------------------------------------------


def _multipart_overhead(tmp_path: Path, filename: str) -> int:
    """Bytes the multipart framing adds for this file name, measured on a tiny upload."""
    small = tmp_path / filename
    small.write_bytes(b"{}\n")
    sink = UploadSink()
    with BatchClient(API_KEY, BASE_URL, transport=StreamingMockTransport(sink.handler)) as client:
        client.upload_file(small)
    small.unlink()
    assert sink.content_length == sink.total
    return sink.total - 3


def test_upload_200mb_streams_in_bounded_chunks_and_memory(
    big_file: tuple[Path, int], tmp_path: Path
) -> None:
    path, lines = big_file
    size = path.stat().st_size
    assert size == BIG
    overhead = _multipart_overhead(tmp_path, path.name)
    sink = UploadSink()
    with BatchClient(API_KEY, BASE_URL, transport=StreamingMockTransport(sink.handler)) as client:
        f, peak = peak_during(lambda: client.upload_file(path))
    assert f.id == load("upload-file").json()["id"]
    assert sink.paths == ["/files"]
    assert sink.chunks >= 200
    assert sink.max_chunk <= MiB
    assert sink.total == size + overhead
    assert sink.content_length == sink.total
    assert 0 < overhead < 1024
    # Every line of the file crossed the wire (plus the framing's own line breaks).
    assert sink.newlines >= lines
    assert sink.newlines - lines < 16
    assert b'name="purpose"' in sink.head
    assert b'filename="requests.jsonl"' in sink.head
    assert peak < 32 * MiB, f"upload of {size} bytes peaked at {peak} bytes of Python memory"


async def test_async_upload_20mb_streams_in_bounded_chunks_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    lines = write_jsonl_of_size(path, SMALL)
    sink = UploadSink()
    async with AsyncBatchClient(API_KEY, BASE_URL, transport=StreamingMockTransport(sink.ahandler)) as client:
        f, peak = await apeak_during(client.upload_file(path))
    assert f.id == load("upload-file").json()["id"]
    assert sink.chunks >= 20
    assert sink.max_chunk <= MiB
    assert sink.content_length == sink.total
    assert 0 < sink.total - SMALL < 1024
    assert lines <= sink.newlines < lines + 16
    assert b'name="purpose"' in sink.head
    assert peak < 8 * MiB, f"async upload peaked at {peak} bytes"


# ---- download -----------------------------------------------------------------------------


class GeneratedBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body produced chunk by chunk; optionally breaks after ``fail_after`` bytes."""

    def __init__(self, total: int, *, chunk: int = MiB, fail_after: int | None = None) -> None:
        self.total = total
        self.chunk = chunk
        self.fail_after = fail_after
        line = b'{"custom_id":"x","response":{"status_code":200,"body":{}},"error":null}'
        line += b" " * (LINE - len(line) - 1) + b"\n"
        self.block = line * (chunk // LINE)
        assert len(self.block) == chunk

    def _chunks(self) -> Iterator[bytes]:
        sent = 0
        while sent < self.total:
            if self.fail_after is not None and sent >= self.fail_after:
                raise httpx.ReadError("connection reset by peer")
            n = min(self.chunk, self.total - sent)
            yield self.block if n == self.chunk else self.block[:n]
            sent += n

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks():
            yield chunk

    def digest(self) -> str:
        h = hashlib.sha256()
        for chunk in GeneratedBody(self.total, chunk=self.chunk)._chunks():
            h.update(chunk)
        return h.hexdigest()


def body_handler(
    *bodies: Callable[[], httpx.Response],
) -> tuple[Callable[[httpx.Request], httpx.Response], list[str]]:
    """Serve each body factory in turn (the last repeats); record the paths asked for."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(api_path(request))
        factory = bodies[min(len(seen) - 1, len(bodies) - 1)]
        return factory()

    return handler, seen


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(MiB):
            h.update(block)
    return h.hexdigest()


def test_download_200mb_streams_to_disk_in_bounded_memory(tmp_path: Path) -> None:
    handler, seen = body_handler(
        lambda: httpx.Response(200, stream=GeneratedBody(BIG), headers={"content-length": str(BIG)})
    )
    dest = tmp_path / "results.jsonl"
    with BatchClient(API_KEY, BASE_URL, transport=httpx.MockTransport(handler)) as client:
        written, peak = peak_during(lambda: client.download_file("file-batch_output-big", dest))
    try:
        assert seen == ["/files/file-batch_output-big/content"]
        assert written == BIG
        assert dest.stat().st_size == BIG
        assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
        assert peak < 32 * MiB, f"download of {BIG} bytes peaked at {peak} bytes"
    finally:
        dest.unlink()


async def test_async_download_20mb_streams_to_disk_in_bounded_memory(tmp_path: Path) -> None:
    body = GeneratedBody(SMALL)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=GeneratedBody(SMALL))

    dest = tmp_path / "results.jsonl"
    async with AsyncBatchClient(API_KEY, BASE_URL, transport=httpx.MockTransport(handler)) as client:
        written, peak = await apeak_during(client.download_file("file-batch_output-x", dest))
    assert written == SMALL
    assert dest.stat().st_size == SMALL
    assert file_digest(dest) == body.digest()
    assert peak < 8 * MiB, f"async download peaked at {peak} bytes"


def _download(kind: str, handler: Callable[[httpx.Request], httpx.Response], dest: Path, retries: int) -> Any:
    sleep = SleepRecorder()
    if kind == "sync":
        with BatchClient(
            API_KEY,
            BASE_URL,
            transport=httpx.MockTransport(handler),
            retry=RetryPolicy(max_retries=retries),
            sleep=sleep,
        ) as client:
            return client.download_file("file-batch_output-x", dest)

    import asyncio

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return handler(request)

    async def run() -> int:
        async with AsyncBatchClient(
            API_KEY,
            BASE_URL,
            transport=httpx.MockTransport(ahandler),
            retry=RetryPolicy(max_retries=retries),
            sleep=sleep.asleep,
        ) as client:
            return await client.download_file("file-batch_output-x", dest)

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_download_broken_mid_stream_leaves_no_file(tmp_path: Path, kind: str) -> None:
    handler, seen = body_handler(
        lambda: httpx.Response(200, stream=GeneratedBody(8 * MiB, fail_after=3 * MiB))
    )
    dest = tmp_path / "results.jsonl"
    with pytest.raises(QwenBatchConnectionError, match="ReadError"):
        _download(kind, handler, dest, retries=2)
    assert len(seen) == 3  # a download is safe to repeat
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == [], "a partial file was left behind"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_download_retried_after_a_break_is_complete_not_appended(tmp_path: Path, kind: str) -> None:
    handler, _ = body_handler(
        lambda: httpx.Response(200, stream=GeneratedBody(8 * MiB, fail_after=3 * MiB)),
        lambda: httpx.Response(200, stream=GeneratedBody(8 * MiB)),
    )
    dest = tmp_path / "results.jsonl"
    written = _download(kind, handler, dest, retries=2)
    assert written == 8 * MiB
    assert dest.stat().st_size == 8 * MiB
    assert file_digest(dest) == GeneratedBody(8 * MiB).digest()
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFoundError), (500, ServerError)],
)
def test_download_http_error_leaves_no_file(
    tmp_path: Path, kind: str, status: int, error: type[Exception]
) -> None:
    handler, _ = body_handler(
        lambda: httpx.Response(status, json={"code": "x", "message": "nope", "request_id": "rid-dl"})
    )
    dest = tmp_path / "deep" / "results.jsonl"
    with pytest.raises(error, match="rid-dl"):
        _download(kind, handler, dest, retries=1)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_failed_download_keeps_an_earlier_file_intact(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "results.jsonl"
    dest.write_bytes(b"earlier complete results\n")
    handler, _ = body_handler(lambda: httpx.Response(200, stream=GeneratedBody(4 * MiB, fail_after=MiB)))
    with pytest.raises(QwenBatchConnectionError):
        _download(kind, handler, dest, retries=0)
    assert dest.read_bytes() == b"earlier complete results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.jsonl"]


def test_iter_file_lines_streams_a_large_file(tmp_path: Path) -> None:
    total = 16 * MiB

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=GeneratedBody(total))

    with BatchClient(API_KEY, BASE_URL, transport=httpx.MockTransport(handler)) as client:

        def count() -> int:
            n = 0
            for line in client.iter_file_lines("file-batch_output-x"):
                assert line.startswith('{"custom_id":"x"')
                n += 1
            return n

        n, peak = peak_during(count)
    assert n == total // LINE
    assert peak < 8 * MiB
