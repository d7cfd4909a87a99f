"""The submit operator's single-batch path: an input of one shard (or a file id) is one batch.

Re-attach to an earlier try's batch of the same input, upload and create (never after a kill),
and wait in the worker. The many-batch path is :mod:`._sharded`; both share the operator's
create request, publishing and kill flag.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.exceptions import BatchTimeoutError
from airflow_provider_qwenbatch.summary import ProgressReporter, describe_timeout

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.client.cancel import CancelOutcome
    from airflow_provider_qwenbatch.client.identity import BatchTag, InputFingerprint
    from airflow_provider_qwenbatch.client.models import Batch, BatchCreateRequest
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings
    from airflow_provider_qwenbatch.inputs import PreparedInput


class SingleBatchPath:
    """Re-attach, create and wait for the one batch of a one-shard input (a mixin of the submit operator)."""

    task_id: str
    reattach: bool
    input_file_id: str | None
    poll_interval: float
    timeout: float | None
    if TYPE_CHECKING:
        log: Any

        def _cancel(self, client: BatchClient, batch_id: str) -> CancelOutcome: ...

        def _check_killed(self, uploaded_file_id: str | None, client: BatchClient) -> None: ...

        def _resolve_settings(self) -> ConnectionSettings: ...

        def _create_request(
            self, tag: BatchTag, input_file_id: str, fingerprint: InputFingerprint | None = None
        ) -> BatchCreateRequest: ...

    def _find_earlier(
        self, client: BatchClient, tag: BatchTag, try_number: int | None, fingerprint: InputFingerprint
    ) -> Batch | None:
        # Try 1 of a task instance has no earlier try (a clear increments try_number in Airflow 3).
        if not self.reattach or (try_number or 1) <= 1:
            return None
        from airflow_provider_qwenbatch.client.lookup import find_batch_for_task

        earlier = find_batch_for_task(client, tag, fingerprint)
        for stale in earlier.to_cancel:
            # Still billing for input that is no longer this task's: nobody will read its results.
            self.log.warning(
                "Try %s: batch %s (%s) of an earlier try was created from other input; cancelling it",
                try_number,
                stale.id,
                stale.status.value,
            )
            self._cancel(client, stale.id)
        batch = earlier.reattach
        if batch is not None:
            self.log.info(
                "Try %s re-attaches to batch %s (%s) created by an earlier try from the same input; "
                "no new batch is created",
                try_number,
                batch.id,
                batch.status.value,
            )
        return batch

    def _submit(
        self,
        client: BatchClient,
        tag: BatchTag,
        prepared: PreparedInput | None,
        fingerprint: InputFingerprint,
    ) -> Batch:
        self._check_killed(None, client)
        uploaded_id: str | None = None
        if prepared is not None:
            s = prepared.summary
            self.log.info(
                "Input valid: %d requests, %d bytes, model %s; uploading", s.lines, s.bytes, s.model or "?"
            )
            from airflow_provider_qwenbatch.client.jsonl import warn_if_model_not_in_region

            warn_if_model_not_in_region(s, self._resolve_settings().base_url, self.log)
            uploaded = client.upload_file(prepared.path)
            uploaded_id = input_file_id = uploaded.id
            self.log.info("Uploaded input file %s (x-request-id=%s)", input_file_id, uploaded.x_request_id)
        else:
            assert self.input_file_id is not None
            input_file_id = self.input_file_id
        # Killed during the upload: on_kill had no batch to cancel, so none may be created now.
        self._check_killed(uploaded_id, client)
        request = self._create_request(tag, input_file_id, fingerprint)
        batch = client.create_batch(
            request.input_file_id, request.endpoint, request.completion_window, request.metadata
        )
        self.log.info(
            "Created batch %s (%s, tag %s, input %s, x-request-id=%s)",
            batch.id,
            batch.status.value,
            tag.value,
            fingerprint.value,
            batch.x_request_id,
        )
        return batch

    def _wait(self, client: BatchClient, batch: Batch, deadline: float | None) -> Batch:
        progress = ProgressReporter(self.log)
        progress.update(batch)
        while not batch.status.is_terminal:
            wait = self.poll_interval
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0:
                    outcome = self._cancel(client, batch.id)
                    raise BatchTimeoutError(
                        f"{self.task_id}: {describe_timeout(batch, self.timeout, outcome)}"
                    )
                wait = min(wait, left)
            time.sleep(wait)
            batch = client.retrieve_batch(batch.id)
            progress.update(batch)
        return batch
