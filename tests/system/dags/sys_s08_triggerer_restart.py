"""Scenario 8: the triggerer restarts while the submit task is deferred: the batch must keep running."""

from _common import DEFAULTS, MEDIUM, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

with DAG("sys_s08_triggerer_restart", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator(task_id="submit", input_path=MEDIUM, deferrable=True, poll_interval=POLL)
