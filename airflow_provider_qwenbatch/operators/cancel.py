"""CancelBatchOperator: cancel one or many batches, idempotently."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.exceptions import BatchNotFoundError, QwenBatchAirflowError, as_airflow_errors
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.operators._base import QwenBatchBaseOperator

# ``cancelled`` follows ``cancelling`` within a second or two on the emulator and tens of seconds
# live: poll often at first, then back off to a rate the live service's guidance is happy with.
FIRST_POLL = 2.0
MAX_POLL = 15.0

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwenbatch.client.sync import BatchClient


class CancelBatchOperator(QwenBatchBaseOperator):
    """Cancel one or many batches; idempotent (a batch already ended, or being cancelled, is reported, not an error).

    Returns ``{batch_id: final status}``. An id that names no batch fails the task
    (:class:`~airflow_provider_qwenbatch.exceptions.BatchNotFoundError`, after the other ids
    were handled): a typo must not pass as a successful cancel.

    :param batch_ids: a batch id or a list of them (templated).
    :param conn_id: the ``qwen_batch`` Connection.
    :param wait_for_termination: wait until each batch is terminal (``cancelled`` follows ``cancelling`` in tens of seconds).
    :param poll_interval: seconds between reads while waiting; default: 2 s, doubling up to 15 s.
    :param wait_timeout: give up waiting after this many seconds (the cancel stays requested).
    :param fail_on_error: fail the task when a cancel request could not be sent.
    """

    template_fields: Sequence[str] = ("batch_ids",)

    def __init__(
        self,
        *,
        batch_ids: str | Sequence[str],
        conn_id: str = QwenBatchHook.default_conn_name,
        wait_for_termination: bool = False,
        poll_interval: float | None = None,
        wait_timeout: float | None = 600.0,
        fail_on_error: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.batch_ids = batch_ids
        self.wait_for_termination = wait_for_termination
        if poll_interval is not None and poll_interval <= 0:
            raise ValueError(f"{self.task_id}: poll_interval must be positive, got {poll_interval}")
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.fail_on_error = fail_on_error

    def _ids(self) -> list[str]:
        raw = self.batch_ids
        ids = [raw] if isinstance(raw, str) else list(raw or [])
        return [i for i in (str(x).strip() for x in ids) if i]

    def execute(self, context: Context) -> dict[str, str | None]:
        """Cancel each batch quietly, then optionally wait for each to be terminal."""
        from airflow_provider_qwenbatch.client.cancel import (
            UNHURRIED_BUDGET,
            UNHURRIED_RETRIES,
            CancelAction,
            cancel_quietly,
        )

        ids = self._ids()
        client = self._client()
        results: dict[str, str | None] = {}
        failures: list[str] = []
        missing: list[str] = []
        unsettled: set[str] = set()
        with client, as_airflow_errors():
            for n, batch_id in enumerate(ids, start=1):
                outcome = cancel_quietly(
                    client, batch_id, budget=UNHURRIED_BUDGET, retries=UNHURRIED_RETRIES, logger=self.log
                )
                results[batch_id] = outcome.status.value if outcome.status else None
                if outcome.action is CancelAction.NOT_FOUND:
                    missing.append(f"{batch_id} (x-request-id={outcome.request_id or 'none'})")
                    unsettled.add(batch_id)
                elif not outcome.ok:
                    failures.append(f"{batch_id}: {outcome.detail}")
                    unsettled.add(batch_id)
                self.log.info(
                    "Cancel requested for %d/%d batches (%d%%)", n, len(ids), 100 * n // max(1, len(ids))
                )
            if self.wait_for_termination:
                # Only batches known to be stopping: a failed or missing one would be waited on in vain.
                stopping = [i for i in ids if i not in unsettled]
                results.update(self._wait_all(stopping, client))
        if missing:
            raise BatchNotFoundError(
                f"{self.task_id}: no such batch: {', '.join(missing)}; check the id (and the Connection's region)"
            )
        if failures and self.fail_on_error:
            raise QwenBatchAirflowError(f"{self.task_id}: could not cancel: " + "; ".join(failures))
        return results

    def _wait_all(self, ids: list[str], client: BatchClient) -> dict[str, str | None]:
        started = time.monotonic()
        deadline = None if self.wait_timeout is None else started + self.wait_timeout
        pending = set(ids)
        final: dict[str, str | None] = {}
        wait = self.poll_interval or FIRST_POLL
        while pending:
            progress = []
            for batch_id in sorted(pending):
                batch = client.retrieve_batch(batch_id)
                final[batch_id] = batch.status.value
                if batch.status.is_terminal:
                    pending.discard(batch_id)
                else:
                    counts = batch.request_counts
                    done = (
                        f", {counts.completed}/{counts.total} requests done"
                        if counts and counts.total
                        else ""
                    )
                    progress.append(f"{batch_id} {batch.status.value}{done}")
            if not pending:
                break
            self.log.info(
                "%d of %d batches terminal after %.0fs; waiting for %d: %s",
                len(ids) - len(pending),
                len(ids),
                time.monotonic() - started,
                len(pending),
                "; ".join(progress[:10]) + (f"; and {len(progress) - 10} more" if len(progress) > 10 else ""),
            )
            if deadline is not None and time.monotonic() >= deadline:
                self.log.warning(
                    "Stopped waiting after %.0fs; still not terminal: %s", self.wait_timeout, sorted(pending)
                )
                break
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)
            if self.poll_interval is None:
                wait = min(MAX_POLL, wait * 2)
        return final
