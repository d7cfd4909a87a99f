"""Listener that cancels a failed DAG run's in-flight batches, even when nobody's callback runs.

A run marked failed in the UI or API runs no DAG ``on_failure_callback``, and may have no
live task to receive ``on_kill`` (a sensor between reschedule pokes, a submit task that did
not wait). ``on_dag_run_failed`` does fire, in the api-server or scheduler: the clean-up is
handed to a daemon thread there so neither is ever blocked by the metadata DB or the batch API.

It fires for every failed run of every DAG, so the thread first asks the metadata DB whether
the run used the provider (:mod:`.usage`: no API call, no Connection needed); a run that did
not is left alone with a debug line. When the failure callback already cancelled the run's
batches, the listener's pass is one list request that finds them ``cancelling`` (see
:mod:`.run`).

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


def _evidence(dag_id: str, run_id: str) -> str | None:
    try:
        from airflow_provider_qwenbatch.cleanup.usage import run_batch_evidence

        return run_batch_evidence(dag_id, run_id)
    except Exception:
        # Not knowing whether the run used the provider: look on the server rather than risk
        # leaving a batch running.
        log.warning("Could not read run %s of %s from the metadata DB", run_id, dag_id, exc_info=True)
        return "the metadata DB could not be read"


def _clean_up(dag_id: str, run_id: str, conn_id: str) -> None:
    evidence = _evidence(dag_id, run_id)
    if evidence is None:
        log.debug("Failed run %s of %s created no Qwen batch: nothing to clean up", run_id, dag_id)
        return
    log.info("Failed run %s of %s may have batches (%s): cancelling them", run_id, dag_id, evidence)
    try:
        from airflow_provider_qwenbatch.cleanup.run import cancel_run_batches
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
