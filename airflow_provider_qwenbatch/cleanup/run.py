"""Cancel every in-flight batch a DAG run started: what the failure callback and the listener call.

Batches are found by their run tag (see ``client.identity``). Both paths may act on one run
(the callback when a task fails, the listener when the run is marked failed): whichever comes
second finds the batches already ``cancelling`` in its list and sends nothing more for them.
"""

from __future__ import annotations

import logging

from airflow_provider_qwenbatch.client.cancel import (
    CancelOutcome,
    cancel_quietly,
    log_outcome,
    settled_outcome,
)
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

    A batch the list already shows as ``cancelling`` is left alone: another clean-up path got
    there first, and ``cancel_quietly`` would only read it again to find the same.

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
        # The list page is a fresh read: a batch already cancelling gets neither a read nor a cancel.
        settled = settled_outcome(batch.id, batch)
        if settled is not None:
            outcomes.append(log_outcome(logger, settled))
        else:
            outcomes.append(cancel_quietly(client, batch.id, budget=CLEANUP_CANCEL_BUDGET, logger=logger))
        logger.info("Clean-up of run %s: %d/%d batches handled", run_id, n, len(batches))
    return outcomes
