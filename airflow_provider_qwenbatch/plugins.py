"""Airflow plugin registering the failure clean-up listener (declared in the provider info)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_qwenbatch import listener


class QwenBatchCleanupPlugin(AirflowPlugin):
    """Registers :mod:`airflow_provider_qwenbatch.listener` (``on_dag_run_failed`` clean-up)."""

    name = "qwenbatch_cleanup"
    listeners = [listener]
