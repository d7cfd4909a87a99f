"""The request log: every API request, numbered from 1, for tests and the admin API."""

from __future__ import annotations

from collections import deque
from typing import Any


class RequestLog:
    """The last ``size`` API requests, oldest first.

    Entries are appended when a request arrives and completed in place (status, fault, ids),
    so a reader right after an answer sees it.

    :param size: entries kept.
    """

    def __init__(self, size: int) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)
        self.seq = 0

    def append(self, entry: dict[str, Any]) -> None:
        """Append one request (it gets the next ``seq``).

        :param entry: the fields of the entry.
        """
        self.seq += 1
        entry["seq"] = self.seq
        self.entries.append(entry)

    def select(
        self, *, since: int = 0, endpoint: str | None = None, batch_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the entries after ``since``, optionally of one endpoint or batch.

        :param since: only entries with a greater ``seq``.
        :param endpoint: only this endpoint name.
        :param batch_id: only requests about this batch.
        """
        return [
            dict(e)
            for e in self.entries
            if e["seq"] > since
            and (not endpoint or e["endpoint"] == endpoint)
            and (not batch_id or e["batch_id"] == batch_id)
        ]

    def clear(self) -> None:
        """Forget every entry (the numbering goes on)."""
        self.entries.clear()
