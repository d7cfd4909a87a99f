"""
Example 2: submit without waiting, then a BatchStatusSensor in reschedule mode, then download.

Between pokes no worker slot is used and no task is alive: if the run is marked failed then,
the provider's listener (``[qwenbatch] cancel_on_dag_run_failed``) cancels the batch.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag

from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator, SubmitBatchOperator
from airflow_provider_qwenbatch.sensors.batch import BatchStatusSensor

# Poll about once a minute in production; the local demo sets QWENBATCH_POLL_INTERVAL=1.
POLL_INTERVAL = float(os.environ.get("QWENBATCH_POLL_INTERVAL", "60"))
RESULTS_DIR = os.environ.get("QWENBATCH_RESULTS_DIR", "/tmp/qwenbatch-results")

EMBED_TEXTS = ["red apples", "green pears", "yellow bananas", "purple grapes"]


@dag(
    dag_id="example_qwenbatch_sensor",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["qwenbatch", "example"],
)
def example_qwenbatch_sensor() -> None:
    submit = SubmitBatchOperator(
        task_id="submit",
        endpoint="/v1/embeddings",
        requests=[
            {"custom_id": f"text-{i}", "body": {"model": "text-embedding-v4", "input": text}}
            for i, text in enumerate(EMBED_TEXTS)
        ],
        wait_for_completion=False,
    )

    wait = BatchStatusSensor(
        task_id="wait",
        batch_id="{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}",
        mode="reschedule",
        poke_interval=POLL_INTERVAL,
        timeout=6 * 3600,
    )

    download = DownloadBatchResultsOperator(
        task_id="download",
        batch_id="{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}",
        destination=RESULTS_DIR,
    )

    submit >> wait >> download


example_qwenbatch_sensor()
