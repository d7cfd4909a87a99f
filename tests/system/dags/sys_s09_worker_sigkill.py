"""Scenario 9: the worker process is SIGKILLed while waiting; the retry re-attaches to the same batch."""

from datetime import timedelta

from _common import MEDIUM, POLL, START, PidRecordingSubmitOperator
from airflow.sdk import DAG

with DAG("sys_s09_worker_sigkill", schedule=None, start_date=START, catchup=False):
    PidRecordingSubmitOperator(
        task_id="submit",
        input_path=MEDIUM,
        deferrable=False,
        poll_interval=POLL,
        retries=1,
        retry_delay=timedelta(seconds=2),
    )
