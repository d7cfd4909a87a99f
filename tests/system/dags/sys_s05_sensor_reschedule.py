"""Scenario 5: a BatchStatusSensor in reschedule mode (no process exists between pokes)."""

from _common import BIG, DEFAULTS, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from airflow_provider_qwenbatch.sensors.batch import BatchStatusSensor

with DAG("sys_s05_sensor_reschedule", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    submit = SubmitBatchOperator(task_id="submit", input_path=BIG, wait_for_completion=False)
    wait = BatchStatusSensor(
        task_id="wait",
        batch_id="{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}",
        mode="reschedule",
        poke_interval=30,
        deferrable=False,
    )
    submit >> wait
