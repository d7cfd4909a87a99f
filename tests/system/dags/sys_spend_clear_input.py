"""Spend safety 2: the submit task is cleared after its input changed (read from a Variable upstream).

The clear must create a new batch from the new input, not silently return the old batch's results.
"""

from typing import Any

from _common import DEFAULTS, POLL, START
from airflow.sdk import DAG, Variable, task

from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

PROMPT_VARIABLE = "qwenbatch_sys_prompt"

with DAG("sys_spend_clear_input", schedule=None, start_date=START, catchup=False, default_args=DEFAULTS):

    @task
    def build_requests() -> list[dict[str, Any]]:
        prompt = Variable.get(PROMPT_VARIABLE, default="unset")
        return [
            {
                "custom_id": f"r-{i}",
                "body": {"model": "qwen-plus", "messages": [{"role": "user", "content": f"{prompt} {i}"}]},
            }
            for i in range(3)
        ]

    SubmitBatchOperator(task_id="submit", requests=build_requests(), poll_interval=POLL)
