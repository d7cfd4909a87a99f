"""What the emulator stores: a file of the Files API and a batch, with their public shapes."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_qwenbatch.client.status import BatchStatus


def new_hex() -> str:
    """24 random hex digits, as in the recorded ids ``file-batch-<hex>``."""
    return uuid.uuid4().hex[:24]


@dataclass
class StoredFile:
    """A file of the Files API and where its bytes are.

    :param id: ``file-batch-<hex>`` (uploads) or ``file-batch_output-<hex>`` (results).
    :param filename: the name given at upload.
    :param purpose: ``batch`` for uploads, ``batch_output`` for results.
    :param bytes: size.
    :param created_at: Unix seconds.
    :param path: the bytes on disk.
    :param lines: lines counted while streaming in.
    :param max_line_bytes: longest line counted while streaming in.
    """

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: str
    lines: int = 0
    max_line_bytes: int = 0

    def public(self) -> dict[str, Any]:
        """The file object as the API shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "created_at": self.created_at,
        }

    @property
    def downloadable(self) -> bool:
        """Only result files can be downloaded, as on the real service."""
        return self.id.startswith("file-batch_output-")


@dataclass
class BatchRecord:
    """Everything about one batch: its public fields and the emulator's bookkeeping."""

    id: str
    endpoint: str
    input_file_id: str
    input_path: str
    completion_window: str
    window_seconds: float
    metadata: dict[str, Any] | None
    status: str
    created_wall: float
    phase_wall: float
    created_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    cancel_wall: float | None = None
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    processed: int = 0
    validated: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    out_bytes: int = 0
    err_bytes: int = 0
    # [1-based input line, custom_id, outcome, status_code or None, "output"|"error"]
    results: list[list[Any]] = field(default_factory=list)
    # Not persisted: rebuilt from the input file after a restart.
    offsets: list[int] = field(default_factory=list, repr=False)
    custom_ids: list[str] = field(default_factory=list, repr=False)
    progress: float = 0.0
    last_wall: float = 0.0

    _TRANSIENT = ("offsets", "custom_ids", "progress", "last_wall")

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""
        data = asdict(self)
        for key in self._TRANSIENT:
            data.pop(key, None)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRecord:
        """Rebuild from :meth:`to_json`.

        :param data: the persisted form.
        """
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """The batch object as the API shows it, with the keys of the recordings in their order."""
        # While cancelling, cancelling_at stays null as on the real service; it shows once cancelled.
        cancelling_at = self.cancelling_at if self.status == BatchStatus.CANCELLED.value else None
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": list(self.errors)} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": None,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": dict(self.metadata) if self.metadata is not None else None,
        }

    def admin(self, *, lines: bool = True) -> dict[str, Any]:
        """The full state for ``GET /_emulator/batches``.

        :param lines: include the per-line results.
        """
        out: dict[str, Any] = {
            "batch": self.public(),
            "input_lines": self.total if self.validated else None,
            "processed": self.processed,
            "validated": self.validated,
            "cancel_requested_at": self.cancelling_at,
        }
        if lines:
            out["results"] = [
                {"line": r[0], "custom_id": r[1], "outcome": r[2], "status_code": r[3], "file": r[4]}
                for r in self.results
            ]
        return out
