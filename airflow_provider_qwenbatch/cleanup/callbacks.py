"""``on_failure_callback`` that cancels every in-flight batch of the failed run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow_provider_qwenbatch.cleanup.run import cancel_run_batches
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook

log = logging.getLogger(__name__)


def make_cancel_batches_on_failure(conn_id: str = QwenBatchHook.default_conn_name) -> Callable[[Any], None]:
    """Build an ``on_failure_callback`` using a given Connection.

    :param conn_id: the ``qwen_batch`` Connection.
    """

    def callback(context: Any) -> None:
        cancel_batches_on_failure(context, conn_id=conn_id)

    return callback


def cancel_batches_on_failure(context: Any, conn_id: str = QwenBatchHook.default_conn_name) -> None:
    """Cancel every in-flight batch that the failed DAG run started; usable as DAG or task ``on_failure_callback``.

    Never raises: a callback that raises only hides the original failure.

    :param context: the Airflow callback context.
    :param conn_id: the ``qwen_batch`` Connection.
    """
    try:
        dag_run = context.get("dag_run")
        run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
        dag = context.get("dag")
        dag_id = getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None)
        if not dag_id or not run_id:
            log.warning("cancel_batches_on_failure: no dag_id/run_id in the context; nothing cancelled")
            return
        with QwenBatchHook(conn_id).get_conn() as client:
            cancel_run_batches(client, dag_id, run_id, logger=log)
    except Exception:
        log.exception("cancel_batches_on_failure could not finish; batches of the run may still be running")
