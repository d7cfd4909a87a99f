"""Scenario 1: a submit task waiting in the worker (not deferrable)."""

from _common import BIG, DEFAULTS, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

with DAG("sys_s01_worker_wait", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator(task_id="submit", input_path=BIG, deferrable=False, poll_interval=POLL)
