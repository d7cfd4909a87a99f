"""Connection handling shared by the operators and the sensor, including their kill path."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.exceptions import QwenBatchAirflowError
from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings, QwenBatchHook

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.client.cancel import CancelOutcome
    from airflow_provider_qwenbatch.client.sync import BatchClient


class QwenBatchConnectionMixin:
    """Resolves the ``qwen_batch`` Connection once per task and builds clients from it.

    The settings are kept so that ``on_kill`` never reads a Connection: it builds a fresh
    client from them (the task's own client may be in the middle of a request).
    """

    conn_id: str
    _settings: ConnectionSettings | None = None
    if TYPE_CHECKING:
        log: Any

    @cached_property
    def hook(self) -> QwenBatchHook:
        """The hook of ``conn_id``."""
        return QwenBatchHook(self.conn_id)

    def _resolve_settings(self) -> ConnectionSettings:
        if self._settings is None:
            try:
                self._settings = self.hook.settings
            except ValueError as exc:
                raise QwenBatchAirflowError(str(exc)) from None
        return self._settings

    def _client(self) -> BatchClient:
        return self._resolve_settings().sync_client(logger=self.log)

    def _cancel_on_kill(self, batch_id: str | None) -> CancelOutcome | None:
        """Cancel quietly from ``on_kill``: a fresh client, the kill-path budget, never raising."""
        if not batch_id or self._settings is None:
            self.log.info("on_kill: no batch to cancel")
            return None
        from airflow_provider_qwenbatch.client.cancel import DEFAULT_KILL_BUDGET, cancel_quietly

        with self._settings.sync_client(logger=self.log) as client:
            return cancel_quietly(client, batch_id, budget=DEFAULT_KILL_BUDGET, logger=self.log)
