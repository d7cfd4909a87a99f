"""Streaming helpers shared by both clients: progress logging, upload fields, atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from airflow_provider_qwenbatch.client.logs import LoggerLike

# Log a progress line at most every this many percent (or bytes, when the size is unknown).
_PCT_STEP = 10
_BYTES_STEP = 64 * 1024 * 1024


class ProgressLog:
    """Logs ``what: done/total (pct%)`` at each 10 % step of a transfer.

    :param logger: where to log.
    :param what: what is being transferred, e.g. ``upload requests.jsonl``.
    :param total: size in bytes, if known.
    """

    def __init__(self, logger: LoggerLike, what: str, total: int | None) -> None:
        self.logger = logger
        self.what = what
        self.total = total
        self.count = 0
        self._next = _PCT_STEP if total else _BYTES_STEP

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes and log when a step is crossed."""
        self.count += n
        if self.total:
            pct = 100 * self.count // self.total
            if pct >= self._next and pct < 100:
                self.logger.info("%s: %s/%s bytes (%d%%)", self.what, self.count, self.total, pct)
                self._next = (pct // _PCT_STEP + 1) * _PCT_STEP
        elif self.count >= self._next:
            self.logger.info("%s: %s bytes so far", self.what, self.count)
            self._next += _BYTES_STEP

    def done(self) -> None:
        """Log the end of the transfer."""
        total = f"/{self.total}" if self.total else ""
        self.logger.info("%s: %s%s bytes (100%%), done", self.what, self.count, total)


class _CountingReader:
    """A file wrapper that reports each chunk read, so uploads log progress as they stream.

    It shows httpx the file from the position it had when wrapped: httpx rewinds to 0 and
    measures the length by seeking to the end, and both must mean "from here".
    """

    def __init__(self, fh: IO[bytes], progress: ProgressLog) -> None:
        self._fh = fh
        self._progress = progress
        self._start = fh.tell()

    def read(self, n: int = -1) -> bytes:
        chunk = self._fh.read(n)
        self._progress.advance(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            offset += self._start
            if offset == self._start:
                self._progress.count = 0
        return self._fh.seek(offset, whence) - self._start

    def tell(self) -> int:
        return self._fh.tell() - self._start


def upload_fields(
    fh: IO[bytes], filename: str, progress: ProgressLog
) -> tuple[dict[str, Any], dict[str, str]]:
    """Multipart fields of ``POST /files``: the file, streamed in 64 KiB chunks, and ``purpose=batch``.

    :param fh: the open file.
    :param filename: the name the server records.
    :param progress: progress to advance as chunks are read.
    """
    files = {"file": (filename, _CountingReader(fh, progress), "application/jsonl")}
    return files, {"purpose": "batch"}


@contextmanager
def atomic_destination(destination: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``destination``; rename it into place only on success.

    A failed or interrupted download never leaves a half file where a complete one is expected.

    :param destination: the final path; its folder is created if needed.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
