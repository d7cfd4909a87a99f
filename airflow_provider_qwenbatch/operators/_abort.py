"""What the submit operator does when it is stopped: a kill, a deferral timeout, a kill during creation.

One task may own one batch or, for a split input, many (``BATCH_IDS_XCOM_KEY``); every path
here cancels all of them that are unfinished, and none when the stop is not an abort (a
trigger that crashed or could not be loaded: a retry re-attaches instead of paying again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.exceptions import QwenBatchAirflowError
from airflow_provider_qwenbatch.operators._base import (
    BATCH_ID_XCOM_KEY,
    BATCH_IDS_XCOM_KEY,
    TRIGGER_FAIL_REPR,
    TRIGGER_TIMEOUT,
    tag_of,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwenbatch.client.cancel import CancelOutcome
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings


class SubmitAbortPaths:
    """The submit operator's kill, deferral-timeout and killed-while-creating paths (a mixin)."""

    task_id: str
    cancel_on_kill: bool
    batch_id: str | None
    _killed: bool
    _job_batch_ids: list[str]
    _settings: ConnectionSettings | None
    if TYPE_CHECKING:
        log: Any

        def _client(self) -> BatchClient: ...

        def _cancel_on_kill(self, batch_id: str | None) -> CancelOutcome | None: ...

    def _cancel(self, client: BatchClient, batch_id: str) -> CancelOutcome:
        """Cancel from a timeout or deadline path: no SIGKILL clock, so a longer budget and retries."""
        from airflow_provider_qwenbatch.client.cancel import (
            UNHURRIED_BUDGET,
            UNHURRIED_RETRIES,
            cancel_quietly,
        )

        return cancel_quietly(
            client, batch_id, budget=UNHURRIED_BUDGET, retries=UNHURRIED_RETRIES, logger=self.log
        )

    def _check_killed(self, uploaded_file_id: str | None, client: BatchClient) -> None:
        if not self._killed:
            return
        if uploaded_file_id is not None:
            try:  # the quota holds 10,000 files and they never expire
                client.delete_file(uploaded_file_id)
                self.log.info("Killed: deleted the uploaded input file %s", uploaded_file_id)
            except Exception as exc:
                self.log.warning("Killed: could not delete input file %s: %s", uploaded_file_id, exc)
        raise QwenBatchAirflowError(f"{self.task_id}: killed before the batch was created; no batch created")

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """After a deferral timeout (``execution_timeout`` while deferred), cancel the batches first.

        Airflow skips the trigger's ``on_kill`` on a deferral timeout, so this is the only place
        that can. A trigger that crashed or could not be loaded (``Trigger failure``) is not an
        abort: the batches are left running and a retry re-attaches to them instead of paying again.

        :param next_method: the method Airflow resumes with.
        :param next_kwargs: its keyword arguments.
        :param context: the task context.
        """
        if next_method == TRIGGER_FAIL_REPR and self.cancel_on_kill:
            error = (next_kwargs or {}).get("error")
            if error == TRIGGER_TIMEOUT:
                self._cancel_own_batches(context)
            else:
                self.log.warning(
                    "The trigger failed (%s); the batch is left running: a retry re-attaches to it", error
                )
        return super().resume_execution(next_method, next_kwargs, context)  # type: ignore[misc]

    def _cancel_own_batches(self, context: Context) -> None:
        ti = context["ti"]
        # map_indexes: without it a mapped task's pull returns every map index's batch ids.
        map_index = ti.map_index if ti.map_index is not None else -1
        ids = ti.xcom_pull(task_ids=ti.task_id, key=BATCH_IDS_XCOM_KEY, map_indexes=map_index)
        batch_id = ti.xcom_pull(task_ids=ti.task_id, key=BATCH_ID_XCOM_KEY, map_indexes=map_index)
        client = self._client()
        with client:
            if isinstance(ids, list) and ids:
                from airflow_provider_qwenbatch.client.cancel import (
                    UNHURRIED_BUDGET,
                    UNHURRIED_RETRIES,
                    cancel_many,
                )

                cancel_many(
                    client,
                    [str(i) for i in ids],
                    budget=UNHURRIED_BUDGET,
                    retries=UNHURRIED_RETRIES,
                    logger=self.log,
                )
                return
            if isinstance(batch_id, str):
                self._cancel(client, batch_id)
                return
            # No XCom (e.g. cleared meanwhile): the tag names this task instance's own batches only.
            from airflow_provider_qwenbatch.client.lookup import find_batch_for_task

            try:
                running = find_batch_for_task(client, tag_of(ti), None).to_cancel
            except (
                Exception
            ) as exc:  # the task fails with the timeout either way; say why nothing was cancelled
                self.log.warning("Could not look up this task's batch to cancel it: %s", exc)
                return
            if not running:
                self.log.info("Deferral timed out; no running batch of this task instance to cancel")
            for batch in running:
                self._cancel(client, batch.id)

    def on_kill(self) -> None:
        """Cancel the batch (or every batch of a split input, concurrently) quietly, well under the 5 s before SIGKILL.

        Killed while a batch was being created: nothing is known yet to cancel, so the flag set
        here makes ``execute`` cancel it as soon as the create call returns.
        """
        self._killed = True
        if not self.cancel_on_kill:
            return
        if not self._job_batch_ids:
            self._cancel_on_kill(self.batch_id)
            return
        if self._settings is None:
            self.log.info("on_kill: no Connection resolved, no batch to cancel")
            return
        from airflow_provider_qwenbatch.client.cancel import DEFAULT_KILL_BUDGET, cancel_many

        with self._settings.sync_client(logger=self.log) as client:
            cancel_many(client, list(self._job_batch_ids), budget=DEFAULT_KILL_BUDGET, logger=self.log)
