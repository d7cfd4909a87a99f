"""HA triggerers: a deferred submit task whose trigger moves to another triggerer (test_ha_triggerers.py)."""

from _common import DEFAULTS, MEDIUM, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

with DAG("sys_ha_deferred", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator(task_id="submit", input_path=MEDIUM, deferrable=True, poll_interval=POLL)
