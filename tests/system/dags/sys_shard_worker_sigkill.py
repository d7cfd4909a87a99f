"""System S4: a sharded submit task waiting in the worker (5 shards, at most 2 unfinished at once).

Its task process is SIGKILLed while shards are still waiting to be created; the retry must
re-attach to the shards that exist and create only the missing ones.
"""

from datetime import timedelta

from _common import POLL, START, PidRecordingSubmitOperator
from _shards import LINES_PER_SHARD, REQUESTS
from airflow.sdk import DAG

MAX_ACTIVE_BATCHES = 2

with DAG("sys_shard_worker_sigkill", schedule=None, start_date=START, catchup=False):
    PidRecordingSubmitOperator(
        task_id="submit",
        requests=REQUESTS,
        max_lines_per_batch=LINES_PER_SHARD,
        max_active_batches=MAX_ACTIVE_BATCHES,
        deferrable=False,
        poll_interval=POLL,
        retries=1,
        retry_delay=timedelta(seconds=2),
    )
