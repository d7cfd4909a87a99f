"""A file written and SHA-256-hashed in a worker thread, from the very bytes written, in order.

Writing a chunk and hashing it both release the GIL, so a split's validating loop (pure
Python) and the I/O and hashing of the shard it fills run on two cores at once: on a large
input the hash alone is a tenth of the work. The queue between them is short, so memory holds a
few chunks, whatever the file's size; an error of the worker (disk full...) is raised in the
caller's thread at the next :meth:`HashedFile.write` or at :meth:`HashedFile.close`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path

# Chunks waiting for the worker: enough to keep it busy, few enough to keep memory flat.
_QUEUED = 2


class HashedFile:
    """A new file written chunk by chunk, with the SHA-256 of what was written.

    :param path: the file to create (truncated if it exists).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | bytearray | None] = queue.Queue(maxsize=_QUEUED)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"qwenbatch-write-{path.name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            if self._error is not None:
                continue  # keep draining, so the caller never blocks on a full queue
            try:
                self._fh.write(chunk)
                self._digest.update(chunk)
            except BaseException as exc:
                self._error = exc

    def write(self, chunk: bytes | bytearray) -> None:
        """Queue one chunk (the caller must not change it afterwards).

        :param chunk: the bytes to append.
        """
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def close(self) -> str:
        """Wait for every chunk, close the file and return its hex SHA-256."""
        self._stop()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()

    def abort(self) -> None:
        """Stop and close the file without raising (the caller removes it)."""
        self._stop()

    def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._fh.close()
