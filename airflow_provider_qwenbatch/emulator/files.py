"""The file store: the bytes of uploads and results on disk, and the Files API operations on them.

A deleted file disappears from the API at once, but its bytes stay on disk until no batch in
flight reads them any more (a batch keeps running after its input file is deleted, as on
the real service).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from airflow_provider_qwenbatch.emulator.errors import ApiError
from airflow_provider_qwenbatch.emulator.records import StoredFile

_COPY_CHUNK = 1024 * 1024


def copy_upload(src: IO[bytes], dest: str) -> tuple[int, int, int]:
    """Copy an upload to disk in chunks, counting bytes, lines and the longest line.

    Runs in a worker thread; memory holds one chunk whatever the file's size.

    :param src: the uploaded bytes.
    :param dest: where to write them.
    :return: ``(bytes, lines, longest line)``.
    """
    size = lines = longest = current = 0
    last = b""
    with open(dest, "wb") as out:
        while True:
            chunk = src.read(_COPY_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            size += len(chunk)
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    current += len(chunk) - start
                    break
                current += nl - start
                longest = max(longest, current)
                current = 0
                lines += 1
                start = nl + 1
            last = chunk[-1:]
    if size and last != b"\n":
        lines += 1
        longest = max(longest, current)
    return size, lines, longest


class FileStore:
    """The files of one emulator, by id, with their bytes under ``files_dir``.

    :param files_dir: where the bytes live.
    :param on_change: called with ``now=True`` after every change (to persist it).
    """

    def __init__(self, files_dir: Path, on_change: Callable[..., None]) -> None:
        self.files_dir = files_dir
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, StoredFile] = {}
        self._on_change = on_change
        self._doomed_paths: set[str] = set()

    def add_file(
        self, file_id: str, filename: str, purpose: str, path: str, stats: tuple[int, int, int]
    ) -> StoredFile:
        """Register a file whose bytes are already at ``path``.

        :param file_id: its id.
        :param filename: its name.
        :param purpose: its purpose.
        :param path: where its bytes are.
        :param stats: ``(bytes, lines, longest line)``.
        """
        size, lines, longest = stats
        stored = StoredFile(file_id, filename, purpose, size, int(time.time()), path, lines, longest)
        self.files[file_id] = stored
        self._on_change(now=True)
        return stored

    def get_file(self, file_id: str) -> StoredFile:
        """A file, or 404.

        :param file_id: its id.
        """
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(
                404, f"The file '{file_id}' does not exist.", code="file_not_found", param="file_id"
            )
        return stored

    def delete_file(self, file_id: str, in_use: Iterable[str]) -> None:
        """Delete a file; its bytes stay until no running batch reads them.

        :param file_id: its id.
        :param in_use: paths that batches in flight still read.
        """
        stored = self.get_file(file_id)
        del self.files[file_id]
        self._doomed_paths.add(stored.path)
        self.unlink_unused(in_use)
        self._on_change(now=True)

    def unlink_unused(self, in_use: Iterable[str]) -> None:
        """Remove the bytes of deleted files that no batch reads any more.

        :param in_use: paths that batches in flight still read.
        """
        busy = set(in_use)
        for path in list(self._doomed_paths):
            if path not in busy:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                self._doomed_paths.discard(path)

    def list_files(
        self,
        *,
        after: str | None,
        limit: int,
        purpose: str | None,
        create_after: int | None,
        create_before: int | None,
    ) -> tuple[list[StoredFile], bool]:
        """A page of files, newest first.

        :param after: cursor (a file id).
        :param limit: page size.
        :param purpose: only this purpose.
        :param create_after: only created at or after (Unix seconds).
        :param create_before: only created at or before (Unix seconds).
        """
        ordered = list(reversed(self.files.values()))
        if after is not None:
            ids = [f.id for f in ordered]
            if after not in ids:
                raise ApiError(
                    400, f"The cursor '{after}' is not a known file id.", code="invalid_value", param="after"
                )
            ordered = ordered[ids.index(after) + 1 :]
        selected = [
            f
            for f in ordered
            if (purpose is None or f.purpose == purpose)
            and (create_after is None or f.created_at >= create_after)
            and (create_before is None or f.created_at <= create_before)
        ]
        return selected[:limit], len(selected) > limit

    def clear(self) -> None:
        """Forget every file and remove every byte."""
        self.files.clear()
        self._doomed_paths.clear()
        shutil.rmtree(self.files_dir, ignore_errors=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)
