"""The batches of one emulator and the Batches API operations on them (create, read, cancel, list).

How a batch moves on by itself once created is in :mod:`.lifecycle`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from airflow_provider_qwenbatch.client.models import TEST_ENDPOINT, TEST_MODEL
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.window import parse_completion_window
from airflow_provider_qwenbatch.emulator.errors import ApiError
from airflow_provider_qwenbatch.emulator.files import FileStore
from airflow_provider_qwenbatch.emulator.records import BatchRecord
from airflow_provider_qwenbatch.emulator.validation import ScanResult


class BatchBook:
    """Every batch by id, the ids of those in flight, and their validation scans under way.

    :param files: the file store (input files are looked up there).
    :param on_change: called with ``now=True`` after every change (to persist it).
    """

    def __init__(self, files: FileStore, on_change: Callable[..., None]) -> None:
        self._files = files
        self._on_change = on_change
        self.batches: dict[str, BatchRecord] = {}
        self.active: dict[str, None] = {}  # insertion-ordered set of in-flight batch ids
        self.scans: dict[str, asyncio.Future[ScanResult]] = {}

    def paths_in_use(self) -> set[str]:
        """Input files that batches in flight still read."""
        return {self.batches[b].input_path for b in self.active}

    def clear(self) -> None:
        """Forget every batch (validation scans under way are cancelled)."""
        for scan in self.scans.values():
            scan.cancel()
        self.scans.clear()
        self.batches.clear()
        self.active.clear()

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, Any] | None,
        *,
        test_model_max_concurrent: int | None = None,
    ) -> BatchRecord:
        """Create a batch in ``validating`` (arguments already checked by the API layer).

        :param input_file_id: the uploaded input file.
        :param endpoint: the endpoint.
        :param completion_window: e.g. ``24h``.
        :param metadata: ``ds_name`` etc.
        :param test_model_max_concurrent: unfinished ``batch-test-model`` batches allowed
            (``None``: no limit); one more is refused with 429 and not created.
        """
        stored = self._files.files.get(input_file_id)
        if stored is None:
            raise ApiError(
                400,
                f"The input file '{input_file_id}' does not exist.",
                code="invalid_file",
                param="input_file_id",
            )
        if endpoint == TEST_ENDPOINT and test_model_max_concurrent is not None:
            self._check_test_model_limit(test_model_max_concurrent)
        now = time.time()
        rec = BatchRecord(
            id=f"batch_{uuid.uuid4()}",
            endpoint=endpoint,
            input_file_id=input_file_id,
            input_path=stored.path,
            completion_window=completion_window,
            window_seconds=parse_completion_window(completion_window).total_seconds(),
            metadata=metadata,
            status=BatchStatus.VALIDATING.value,
            created_wall=now,
            phase_wall=now,
            created_at=int(now),
            last_wall=now,
        )
        self.batches[rec.id] = rec
        self.active[rec.id] = None
        self._on_change(now=True)
        return rec

    def _check_test_model_limit(self, limit: int) -> None:
        # The endpoint tells the test model at create time: /v1/chat/ds-test takes nothing else.
        unfinished = sum(1 for b in self.active if self.batches[b].endpoint == TEST_ENDPOINT)
        if unfinished >= limit:
            raise ApiError(
                429,
                f"At most {limit} batches with the test model '{TEST_MODEL}' may be unfinished at "
                f"once; {unfinished} are. Wait for one to end, then create the batch again.",
                code="Throttling.ConcurrencyQuota",
                type_="rate_limit_error",
                headers={"retry-after": "1"},
            )

    def get_batch(self, batch_id: str) -> BatchRecord:
        """A batch, or 404.

        :param batch_id: its id.
        """
        rec = self.batches.get(batch_id)
        if rec is None:
            raise ApiError(
                404, f"The batch '{batch_id}' does not exist.", code="batch_not_found", param="batch_id"
            )
        return rec

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Start cancelling; return the reply (with ``cancelling_at`` still null).

        A ``cancelling`` batch is returned unchanged; a terminal one gives 400
        ``invalid_batch_status``.

        :param batch_id: its id.
        """
        rec = self.get_batch(batch_id)
        status = BatchStatus(rec.status)
        if status is BatchStatus.CANCELLING:
            return rec.public()
        if status.is_terminal:
            raise ApiError(
                400,
                f"The batch '{batch_id}' is {status.value} and can no longer be cancelled.",
                code="invalid_batch_status",
                param="batch_id",
            )
        now = time.time()
        rec.status = BatchStatus.CANCELLING.value
        rec.cancel_wall = now
        rec.cancelling_at = int(now)
        scan = self.scans.pop(rec.id, None)
        if scan is not None:
            scan.cancel()
        self._on_change(now=True)
        return rec.public()

    def list_batches(
        self,
        *,
        after: str | None,
        limit: int,
        ds_name: str | None,
        statuses: set[str] | None,
        input_file_ids: set[str] | None,
        create_after: int | None,
        create_before: int | None,
    ) -> tuple[list[BatchRecord], bool]:
        """A page of batches, newest first; ``after`` may be any batch id, as on the real service.

        :param after: cursor.
        :param limit: page size.
        :param ds_name: substring of ``metadata.ds_name``.
        :param statuses: only these statuses.
        :param input_file_ids: only these input files.
        :param create_after: only created at or after (Unix seconds).
        :param create_before: only created at or before (Unix seconds).
        """
        ordered = list(reversed(self.batches.values()))
        if after is not None:
            if after not in self.batches:
                raise ApiError(
                    400, f"The cursor '{after}' is not a known batch id.", code="invalid_value", param="after"
                )
            ordered = ordered[[b.id for b in ordered].index(after) + 1 :]

        def keep(b: BatchRecord) -> bool:
            if ds_name is not None:
                name = (b.metadata or {}).get("ds_name")
                if not isinstance(name, str) or ds_name not in name:
                    return False
            return (
                (statuses is None or b.status in statuses)
                and (input_file_ids is None or b.input_file_id in input_file_ids)
                and (create_after is None or b.created_at >= create_after)
                and (create_before is None or b.created_at <= create_before)
            )

        page: list[BatchRecord] = []
        has_more = False
        for b in ordered:
            if keep(b):
                if len(page) == limit:
                    has_more = True
                    break
                page.append(b)
        return page, has_more
