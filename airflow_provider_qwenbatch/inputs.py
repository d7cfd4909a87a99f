"""Turning what a user gives as batch input into a validated local JSONL file.

Accepted: a list of request dicts (e.g. from XCom), a local path, a ``file://`` URI, or any
Airflow ``ObjectStoragePath`` URI (``s3://``, ``oss://``, ``gs://``...). Remote files are
streamed to a local temporary file first: validation and upload both need to read it, and
nothing may be uploaded before the whole file was checked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow_provider_qwenbatch.client.identity import InputFingerprint
from airflow_provider_qwenbatch.client.jsonl import InputSummary, validate_jsonl_file, write_jsonl

_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PreparedInput:
    """A validated local input file.

    :param path: the local file to upload.
    :param summary: lines, bytes and model.
    :param temporary: whether the provider created it (and removes it after upload).
    """

    path: Path
    summary: InputSummary
    temporary: bool

    def fingerprint(self, completion_window: str) -> InputFingerprint:
        """What a batch created from this file is created from (content hash taken while validating).

        :param completion_window: the batch's completion window.
        """
        return InputFingerprint.of_content(
            self.summary.sha256,
            endpoint=self.summary.endpoint,
            completion_window=completion_window,
            model=self.summary.model,
        )

    def discard(self) -> None:
        """Remove the file if the provider made it; a user's own file is never touched."""
        if self.temporary:
            shutil.rmtree(self.path.parent, ignore_errors=True)


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names object storage rather than a local file.

    :param uri: a path or URI.
    """
    scheme = urlparse(uri).scheme
    return bool(scheme) and scheme != "file" and len(scheme) > 1  # "C:" is a drive, not a scheme


def prepare_requests(requests: Iterable[Mapping[str, Any]], endpoint: str) -> PreparedInput:
    """Write request dicts to a temporary JSONL file, validating each one.

    :param requests: request dicts; ``method``/``url`` default to POST and the endpoint.
    :param endpoint: the batch endpoint.
    """
    folder = Path(tempfile.mkdtemp(prefix="qwenbatch-"))
    try:
        summary = write_jsonl(
            requests, folder / "requests.jsonl", endpoint, source="requests (list given to the operator)"
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return PreparedInput(folder / "requests.jsonl", summary, temporary=True)


def prepare_path(uri: str, endpoint: str, conn_id: str | None = None) -> PreparedInput:
    """Validate a local JSONL file, or stream a remote one to a temporary file and validate that.

    :param uri: local path, ``file://`` URI or ObjectStoragePath URI.
    :param endpoint: the batch endpoint.
    :param conn_id: Airflow Connection of the object store, if it needs one.
    """
    if not is_remote(uri):
        local = Path(urlparse(uri).path if uri.startswith("file://") else uri).expanduser()
        return PreparedInput(local, validate_jsonl_file(local, endpoint), temporary=False)
    local = copy_remote(uri, conn_id)
    try:
        # Errors name the user's URI, not the temporary copy.
        summary = validate_jsonl_file(local, endpoint, source=uri)
    except BaseException:
        shutil.rmtree(local.parent, ignore_errors=True)
        raise
    return PreparedInput(local, summary, temporary=True)


def copy_remote(uri: str, conn_id: str | None = None) -> Path:
    """Stream an object-storage file to a new private temporary folder; return the local copy.

    The caller removes the folder (``path.parent``) when done.

    :param uri: an ObjectStoragePath URI.
    :param conn_id: Airflow Connection of the object store, if it needs one.
    """
    from airflow.sdk import ObjectStoragePath

    remote = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
    folder = Path(tempfile.mkdtemp(prefix="qwenbatch-"))
    local = folder / (remote.name or "requests.jsonl")
    try:
        with remote.open("rb") as src, local.open("wb") as dst:  # type: ignore[no-untyped-call]
            shutil.copyfileobj(src, dst, _COPY_CHUNK)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return local


def store_file(local: Path, destination: str, conn_id: str | None = None) -> str:
    """Copy a local file to a destination folder (local or ObjectStoragePath URI); return its final location.

    :param local: the local file.
    :param destination: a folder path or URI.
    :param conn_id: Airflow Connection of the object store, if it needs one.
    """
    if not is_remote(destination):
        folder = Path(urlparse(destination).path if destination.startswith("file://") else destination)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / local.name
        if local.resolve() != target.resolve():
            shutil.move(os.fspath(local), target)
        return os.fspath(target)
    from airflow.sdk import ObjectStoragePath

    base = ObjectStoragePath(destination, conn_id=conn_id) if conn_id else ObjectStoragePath(destination)
    target_remote = base / local.name
    with local.open("rb") as src, target_remote.open("wb") as dst:  # type: ignore[no-untyped-call]
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
    return str(target_remote)
