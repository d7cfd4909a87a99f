"""
Example 4: a job of any size with the TaskFlow decorator.

``@task.qwen_batch`` streams the requests the function yields (never all in memory) into
shards of at most ``max_lines_per_batch`` lines, one batch each, and waits for all of them
(deferred by default when ``[operators] default_deferrable`` is set). Requests that fail for
a retryable reason are sent again once (``resubmit_failed=1``). The download merges every
shard into one ``output.jsonl`` and one ``errors.jsonl``, in input order.

In production the source would be a table of millions of rows and the default 50,000 lines
per batch; the demo keeps it small.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from airflow.sdk import dag, task

from airflow_provider_qwenbatch.callbacks import cancel_batches_on_failure

POLL_INTERVAL = float(os.environ.get("QWENBATCH_POLL_INTERVAL", "60"))
RESULTS_DIR = os.environ.get("QWENBATCH_RESULTS_DIR", "/tmp/qwenbatch-results")
MODEL = os.environ.get("QWENBATCH_MODEL", "qwen-flash")
ROWS = int(os.environ.get("QWENBATCH_EXAMPLE_ROWS", "250"))


@dag(
    dag_id="example_qwenbatch_large",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["qwenbatch", "example"],
    on_failure_callback=cancel_batches_on_failure,
)
def example_qwenbatch_large() -> None:
    @task.qwen_batch(  # type: ignore[attr-defined]
        endpoint="/v1/chat/completions",
        max_lines_per_batch=100,
        max_active_batches=2,
        resubmit_failed=1,
        poll_interval=POLL_INTERVAL,
        destination=f"{RESULTS_DIR}/large",
        metadata={"ds_name": "ticket-triage"},
    )
    def triage_tickets(rows: int = ROWS) -> Iterator[dict[str, Any]]:
        """One request per ticket, yielded: the input is streamed to shards as it is produced."""
        for n in range(rows):
            yield {
                "custom_id": f"ticket-{n:06d}",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Route ticket {n} to billing, tech or sales."}],
                    "max_completion_tokens": 16,
                },
            }

    triage_tickets()


example_qwenbatch_large()
