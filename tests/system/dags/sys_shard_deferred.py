"""System S3: a sharded, deferred submit task (5 shards of 20 lines); its run is marked failed.

The triggerer watches all 5 batches in one trigger; the abort must cancel every one of them.
"""

from _common import DEFAULTS, POLL, START
from _shards import LINES_PER_SHARD, REQUESTS
from airflow.sdk import DAG

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

with DAG("sys_shard_deferred", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):
    SubmitBatchOperator(
        task_id="submit",
        requests=REQUESTS,
        max_lines_per_batch=LINES_PER_SHARD,
        deferrable=True,
        poll_interval=POLL,
    )
