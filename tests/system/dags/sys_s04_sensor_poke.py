"""Scenario 4: a BatchStatusSensor in poke mode watching the batch of an upstream submit task."""

from _common import BIG, DEFAULTS, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from airflow_provider_qwenbatch.sensors.batch import BatchStatusSensor

with DAG("sys_s04_sensor_poke", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    submit = SubmitBatchOperator(task_id="submit", input_path=BIG, wait_for_completion=False)
    wait = BatchStatusSensor(
        task_id="wait",
        batch_id="{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}",
        mode="poke",
        poke_interval=POLL,
        deferrable=False,
    )
    submit >> wait
