"""Scenario 11: a mapped submit task (5 batches), deferred."""

from _common import BIG_FILES, DEFAULTS, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

with DAG("sys_s11_mapped", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator.partial(task_id="submit", deferrable=True, poll_interval=POLL).expand(
        input_path=BIG_FILES
    )
