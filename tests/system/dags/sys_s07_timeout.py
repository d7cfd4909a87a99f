"""Scenario 7: the operator's ``timeout`` is reached, in the worker and in the triggerer."""

from _common import BIG_FILES, DEFAULTS, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

TIMEOUT = 6

with DAG("sys_s07_timeout", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator(
        task_id="submit_worker",
        input_path=BIG_FILES[0],
        deferrable=False,
        poll_interval=POLL,
        timeout=TIMEOUT,
    )
    SubmitBatchOperator(
        task_id="submit_deferred",
        input_path=BIG_FILES[1],
        deferrable=True,
        poll_interval=POLL,
        timeout=TIMEOUT,
    )
