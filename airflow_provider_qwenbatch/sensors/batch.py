"""BatchStatusSensor: wait for a batch in poke, reschedule or deferrable mode."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_qwenbatch.compat import conf
from airflow_provider_qwenbatch.exceptions import BatchFailedError, QwenBatchAirflowError, as_airflow_errors
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.summary import ProgressReporter, batch_summary, describe_end
from airflow_provider_qwenbatch.task_connection import QwenBatchConnectionMixin

# The trigger and the cancel policy are imported where used, to keep DAG parsing cheap.

if TYPE_CHECKING:
    from airflow.sdk import Context


class BatchStatusSensor(QwenBatchConnectionMixin, BaseSensorOperator):
    """Wait until a batch is terminal: succeed on ``completed``, fail on ``failed``/``expired``/``cancelled``.

    The failure carries the server's error details; with ``soft_fail`` it becomes a skip.
    Progress is logged as ``completed/total (pct%)`` when it changes. Returns the batch summary.

    :param batch_id: the batch (templated), e.g. ``{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}``.
    :param conn_id: the ``qwen_batch`` Connection.
    :param deferrable: wait in the triggerer.
    :param cancel_on_kill: cancel the batch when this task is killed (default True).
    :param poke_interval: seconds between reads (default 60).
    """

    template_fields: Sequence[str] = ("batch_id",)

    def __init__(
        self,
        *,
        batch_id: str,
        conn_id: str = QwenBatchHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        cancel_on_kill: bool = True,
        poke_interval: float | timedelta = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.deferrable = deferrable
        self.cancel_on_kill = cancel_on_kill
        self._settings = None

    @cached_property
    def _progress(self) -> ProgressReporter:
        return ProgressReporter(self.log)

    def poke(self, context: Context) -> PokeReturnValue | bool:
        """Read the batch once; raise :class:`BatchFailedError` if it ended badly."""
        with self._client() as client, as_airflow_errors():
            batch = client.retrieve_batch(self.batch_id)
        self._progress.update(batch)
        if not batch.status.is_terminal:
            return False
        if not batch.status.is_success:
            raise BatchFailedError(describe_end(batch), batch.id, batch.status.value)
        self.log.info(describe_end(batch))
        return PokeReturnValue(is_done=True, xcom_value=batch_summary(batch))

    def execute(self, context: Context) -> Any:
        """Poke/reschedule as usual, or defer to :class:`BatchStatusTrigger` when ``deferrable``."""
        # Resolved before the first poke, so on_kill can cancel even before anything was read.
        self._resolve_settings()
        if not self.deferrable:
            return super().execute(context)
        result = self.poke(context)
        if result:
            return result.xcom_value if isinstance(result, PokeReturnValue) else None
        from airflow_provider_qwenbatch.triggers.batch import BatchStatusTrigger

        self.defer(
            trigger=BatchStatusTrigger(
                batch_id=self.batch_id,
                conn_id=self.conn_id,
                poll_interval=float(self.poke_interval),
                cancel_on_kill=self.cancel_on_kill,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger: succeed, or fail with the server's details (``soft_fail`` skips)."""
        from airflow_provider_qwenbatch.triggers.batch import parse_event

        payload = parse_event(event)
        if payload.status == "success":
            return payload.batch
        if payload.status == "error":
            raise QwenBatchAirflowError(payload.message)
        exc = BatchFailedError(payload.message, payload.batch_id, payload.batch_status or "unknown")
        if self.soft_fail:
            from airflow_provider_qwenbatch.compat import AirflowSkipException

            raise AirflowSkipException(f"soft_fail: {payload.message}") from exc
        raise exc

    def on_kill(self) -> None:
        """Cancel the watched batch quietly, if ``cancel_on_kill``."""
        if self.cancel_on_kill:
            self._cancel_on_kill(self.batch_id)
