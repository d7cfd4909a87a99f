"""
Example 1: a data-platform pipeline.

build requests from a small dataset -> submit (deferrable: no worker slot held while the
batch runs) -> download results -> summarise. If the run is aborted while the batch runs,
the trigger cancels the batch; if any task fails, the callback cancels what is still running.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from airflow.sdk import dag, task

from airflow_provider_qwenbatch.callbacks import cancel_batches_on_failure
from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator, SubmitBatchOperator

# Poll about once a minute in production; the local demo sets QWENBATCH_POLL_INTERVAL=1.
POLL_INTERVAL = float(os.environ.get("QWENBATCH_POLL_INTERVAL", "60"))
RESULTS_DIR = os.environ.get("QWENBATCH_RESULTS_DIR", "/tmp/qwenbatch-results")
MODEL = os.environ.get("QWENBATCH_MODEL", "qwen-flash")

REVIEWS = [
    ("r-001", "The blender is loud but it crushes ice in seconds."),
    ("r-002", "Arrived broken, support never answered. Never again."),
    ("r-003", "Exactly as described; battery lasts two full days."),
    ("r-004", "Okay for the price. The manual is useless."),
    ("r-005", "Best purchase this year, my kids love it."),
]


@dag(
    dag_id="example_qwenbatch_pipeline",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["qwenbatch", "example"],
    on_failure_callback=cancel_batches_on_failure,
)
def example_qwenbatch_pipeline() -> None:
    @task
    def build_requests() -> list[dict[str, Any]]:
        """One chat request per review; only small JSON crosses XCom."""
        return [
            {
                "custom_id": review_id,
                "body": {
                    "model": MODEL,
                    "messages": [
                        {"role": "system", "content": "Label the review: positive, negative or mixed."},
                        {"role": "user", "content": text},
                    ],
                },
            }
            for review_id, text in REVIEWS
        ]

    submit = SubmitBatchOperator(
        task_id="submit",
        requests=build_requests(),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"ds_name": "review-labelling", "ds_description": "example pipeline"},
        deferrable=True,
        poll_interval=POLL_INTERVAL,
    )

    download = DownloadBatchResultsOperator(
        task_id="download",
        batch_id="{{ ti.xcom_pull(task_ids='submit', key='batch_id') }}",
        destination=RESULTS_DIR,
        max_failed_ratio=0.5,
        delete_remote_files=True,
    )

    @task
    def summarise(results: dict[str, Any]) -> dict[str, Any]:
        """Read the downloaded answers and report one label per review."""
        labels = {}
        if results.get("output_path"):
            with open(results["output_path"], encoding="utf-8") as fh:
                for raw in fh:
                    line = json.loads(raw)
                    body = (line.get("response") or {}).get("body") or {}
                    choices = body.get("choices") or [{}]
                    labels[line["custom_id"]] = (choices[0].get("message") or {}).get("content", "")[:60]
        for review_id in sorted(labels):
            print(f"{review_id}: {labels[review_id]}")
        return {
            "labelled": len(labels),
            "failed": results["failed"],
            "total_tokens": results["tokens"]["total"],
        }

    submit >> download
    summarise(download.output)


example_qwenbatch_pipeline()
