"""Airflow plugins registering the failure clean-up listener.

The plugin is declared in the provider info (``plugins``), which Airflow 3 loads only when
``[core] lazy_discover_providers`` is False; the ``airflow.plugins`` entry point loads the
same listener with default settings. When both load, the listener module is registered once
(Airflow's listener manager ignores a module it already has), so batches are cancelled once.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_qwenbatch.cleanup import listener


class QwenBatchCleanupPlugin(AirflowPlugin):
    """Registers :mod:`airflow_provider_qwenbatch.cleanup.listener` (``on_dag_run_failed`` clean-up)."""

    name = "qwenbatch_cleanup"
    listeners = [listener]


class QwenBatchCleanupEntryPointPlugin(QwenBatchCleanupPlugin):
    """The same listener through the ``airflow.plugins`` entry point (its own name: plugin names must differ)."""

    name = "qwenbatch_cleanup_entrypoint"
