"""Listener that cancels a failed DAG run's in-flight batches, even when nobody's callback runs.

A run marked failed in the UI or API runs no DAG ``on_failure_callback``, and may have no
live task to receive ``on_kill`` (a sensor between reschedule pokes, a submit task that did
not wait). ``on_dag_run_failed`` does fire, in the api-server or scheduler: the clean-up is
handed to a daemon thread there so neither is ever blocked by the batch API.

Switched by ``[qwenbatch] cancel_on_dag_run_failed`` (default ``True``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)
_THREADS: set[threading.Thread] = set()


def _enabled() -> tuple[bool, str]:
    from airflow_provider_qwenbatch.compat import conf

    enabled = conf.getboolean("qwenbatch", "cancel_on_dag_run_failed", fallback=True)
    conn_id = conf.get("qwenbatch", "default_conn_id", fallback="qwen_batch_default")
    return enabled, conn_id


def _clean_up(dag_id: str, run_id: str, conn_id: str) -> None:
    try:
        from airflow_provider_qwenbatch.cleanup import cancel_run_batches
        from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook

        with QwenBatchHook(conn_id).get_conn() as client:
            cancel_run_batches(client, dag_id, run_id, logger=log)
    except Exception:
        log.exception("Qwen batch clean-up of failed run %s of %s could not finish", run_id, dag_id)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    """Start the clean-up of the failed run in the background.

    :param dag_run: the DAG run that failed.
    :param msg: why.
    """
    try:
        enabled, conn_id = _enabled()
        if not enabled:
            return
        dag_id, run_id = dag_run.dag_id, dag_run.run_id
    except Exception:
        log.exception("Qwen batch clean-up listener could not read the failed run")
        return
    thread = threading.Thread(
        target=_run_and_forget,
        args=(dag_id, run_id, conn_id),
        name=f"qwenbatch-cleanup-{run_id}",
        daemon=True,
    )
    _THREADS.add(thread)
    thread.start()


def _run_and_forget(dag_id: str, run_id: str, conn_id: str) -> None:
    try:
        _clean_up(dag_id, run_id, conn_id)
    finally:
        _THREADS.discard(threading.current_thread())


def wait_for_cleanups(timeout: float = 30.0) -> None:
    """Wait for clean-up threads still running (tests and orderly shutdowns).

    :param timeout: seconds to wait for each thread.
    """
    for thread in list(_THREADS):
        thread.join(timeout)
