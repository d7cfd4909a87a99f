"""Scenario 7b: Airflow's ``execution_timeout`` (no operator timeout), in the worker and while deferred."""

from datetime import timedelta

from _common import BIG_FILES, DEFAULTS, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

EXECUTION_TIMEOUT = timedelta(seconds=10)

with DAG("sys_s07b_execution_timeout", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    # In the worker: Airflow raises in execute() and calls on_kill().
    SubmitBatchOperator(
        task_id="submit_worker",
        input_path=BIG_FILES[2],
        deferrable=False,
        poll_interval=POLL,
        execution_timeout=EXECUTION_TIMEOUT,
    )
    # Deferred: the trigger times out, the task resumes with __fail__ and resume_execution() cancels.
    SubmitBatchOperator(
        task_id="submit_deferred",
        input_path=BIG_FILES[3],
        deferrable=True,
        poll_interval=POLL,
        execution_timeout=EXECUTION_TIMEOUT,
    )
