"""CancelBatchOperator: cancel one or many batches, idempotently."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.exceptions import QwenBatchAirflowError, as_airflow_errors
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.operators._base import CANCEL_BUDGET, QwenBatchBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwenbatch.client.sync import BatchClient


class CancelBatchOperator(QwenBatchBaseOperator):
    """Cancel one or many batches; idempotent (a batch already ended is reported, not an error).

    Returns ``{batch_id: final status}``.

    :param batch_ids: a batch id or a list of them (templated).
    :param conn_id: the ``qwen_batch`` Connection.
    :param wait_for_termination: wait until each batch is terminal (``cancelled`` follows ``cancelling`` in tens of seconds).
    :param poll_interval: seconds between reads while waiting.
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
        poll_interval: float = 10.0,
        wait_timeout: float | None = 600.0,
        fail_on_error: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.batch_ids = batch_ids
        self.wait_for_termination = wait_for_termination
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.fail_on_error = fail_on_error

    def _ids(self) -> list[str]:
        raw = self.batch_ids
        ids = [raw] if isinstance(raw, str) else list(raw or [])
        return [i for i in (str(x).strip() for x in ids) if i]

    def execute(self, context: Context) -> dict[str, str | None]:
        """Cancel each batch quietly, then optionally wait for each to be terminal."""
        from airflow_provider_qwenbatch.client.cancel import cancel_quietly

        ids = self._ids()
        client = self._client()
        results: dict[str, str | None] = {}
        failures: list[str] = []
        failed_ids: set[str] = set()
        with client, as_airflow_errors():
            for n, batch_id in enumerate(ids, start=1):
                outcome = cancel_quietly(client, batch_id, budget=CANCEL_BUDGET, logger=self.log)
                results[batch_id] = outcome.status.value if outcome.status else None
                if not outcome.ok:
                    failures.append(f"{batch_id}: {outcome.detail}")
                    failed_ids.add(batch_id)
                self.log.info(
                    "Cancel requested for %d/%d batches (%d%%)", n, len(ids), 100 * n // max(1, len(ids))
                )
            if self.wait_for_termination:
                results.update(self._wait_all([i for i in ids if i not in failed_ids], client))
        if failures and self.fail_on_error:
            raise QwenBatchAirflowError(f"{self.task_id}: could not cancel: " + "; ".join(failures))
        return results

    def _wait_all(self, ids: list[str], client: BatchClient) -> dict[str, str | None]:
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        pending = set(ids)
        final: dict[str, str | None] = {}
        while pending:
            for batch_id in sorted(pending):
                batch = client.retrieve_batch(batch_id)
                final[batch_id] = batch.status.value
                if batch.status.is_terminal:
                    pending.discard(batch_id)
            if not pending:
                break
            self.log.info(
                "%d of %d batches terminal; waiting for %d", len(ids) - len(pending), len(ids), len(pending)
            )
            if deadline is not None and time.monotonic() >= deadline:
                self.log.warning(
                    "Stopped waiting after %.0fs; still not terminal: %s", self.wait_timeout, sorted(pending)
                )
                break
            time.sleep(self.poll_interval)
        return final
