"""Spend safety 1: a mapped, deferred submit task hits ``execution_timeout`` (the listener is off).

Airflow skips the trigger's ``on_kill`` on a deferral timeout; each map index resumes with
``__fail__`` and its own ``resume_execution`` must cancel its own batch (and no sibling's).
"""

from datetime import timedelta

from _common import BIG_FILES, DEFAULTS, POLL, START
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

EXECUTION_TIMEOUT = timedelta(seconds=10)

with DAG("sys_spend_mapped_timeout", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator.partial(
        task_id="submit", deferrable=True, poll_interval=POLL, execution_timeout=EXECUTION_TIMEOUT
    ).expand(input_path=BIG_FILES)
