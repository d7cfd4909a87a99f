"""Scenarios 2, 3 and 10: a deferred submit task (the batch is watched by the triggerer)."""

from _common import BIG, DEFAULTS, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

with DAG("sys_s02_deferred", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator(task_id="submit", input_path=BIG, deferrable=True, poll_interval=POLL)
