"""HashedFile: chunks written and hashed in a worker thread, in order; its errors reach the caller."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from airflow_provider_qwenbatch.client.hashed_file import HashedFile


def test_chunks_are_written_in_order_and_hashed_from_what_was_written(tmp_path: Path) -> None:
    chunks = [bytes([i % 256]) * (1000 + i) for i in range(300)]
    out = HashedFile(tmp_path / "f.jsonl")
    for chunk in chunks:
        out.write(bytearray(chunk))
    digest = out.close()
    data = (tmp_path / "f.jsonl").read_bytes()
    assert data == b"".join(chunks)
    assert digest == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_write_error_of_the_worker_is_raised_in_the_callers_thread() -> None:
    out = HashedFile(Path("/dev/full"))  # every write fails: no space left on device

    def write_all() -> None:
        for _ in range(100):  # the caller is never blocked by the failed worker
            out.write(b"x" * 100_000)
        out.close()

    with pytest.raises(OSError):
        write_all()
    out.abort()  # after the error: closes quietly, once


def test_abort_stops_the_worker(tmp_path: Path) -> None:
    before = threading.active_count()
    out = HashedFile(tmp_path / "f.jsonl")
    out.write(b"abc")
    out.abort()
    assert threading.active_count() == before
    assert (tmp_path / "f.jsonl").read_bytes() == b"abc"
