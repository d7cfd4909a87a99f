"""Failure clean-up: cancel every in-flight batch a DAG run started.

Used by :func:`airflow_provider_qwenbatch.callbacks.cancel_batches_on_failure` (a DAG or task
``on_failure_callback``) and by the listener plugin (a run marked failed in the UI or API
runs no DAG callback). Batches are found by their run tag (see ``client.identity``).
"""

from __future__ import annotations

import logging

from airflow_provider_qwenbatch.client.cancel import CancelOutcome, cancel_quietly
from airflow_provider_qwenbatch.client.logs import LoggerLike
from airflow_provider_qwenbatch.client.lookup import find_run_batches
from airflow_provider_qwenbatch.client.sync import BatchClient

log = logging.getLogger(__name__)
# Per batch; clean-up runs outside any kill deadline, so a slow server gets time.
CLEANUP_CANCEL_BUDGET = 15.0


def cancel_run_batches(
    client: BatchClient, dag_id: str, run_id: str, *, logger: LoggerLike | None = None
) -> list[CancelOutcome]:
    """Cancel quietly every in-flight batch tagged to ``(dag_id, run_id)``; never raises for one batch.

    :param client: a sync client.
    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    :param logger: where to log.
    """
    logger = logger or log
    batches = find_run_batches(client, dag_id, run_id)
    logger.info("Run %s of %s: %d in-flight batch(es) to cancel", run_id, dag_id, len(batches))
    outcomes = []
    for n, batch in enumerate(batches, start=1):
        outcomes.append(cancel_quietly(client, batch.id, budget=CLEANUP_CANCEL_BUDGET, logger=logger))
        logger.info("Clean-up of run %s: %d/%d batches handled", run_id, n, len(batches))
    return outcomes
