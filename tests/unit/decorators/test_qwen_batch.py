"""``@task.qwen_batch`` at DAG-parse time: registration with Airflow, the config default, refused arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

# The recorder of HTTP clients and Connections built at import that test_import_cost uses.
from benchmarks.import_cost import RECORD as PROBE


def test_refuses_an_input_argument_and_an_async_function() -> None:
    from airflow_provider_qwenbatch.decorators.qwen_batch import qwen_batch_task

    def f() -> list[dict[str, Any]]:
        return []

    async def g() -> list[dict[str, Any]]:
        return []

    with pytest.raises(TypeError, match="input_path cannot be given"):
        qwen_batch_task(input_path="/tmp/x.jsonl")(f)()
    with pytest.raises(TypeError, match="not an async one"):
        qwen_batch_task()(g)()
    with pytest.raises(ValueError, match="destination needs wait_for_completion=True"):
        qwen_batch_task(destination="/tmp/out", wait_for_completion=False)(f)()


def test_providers_manager_registers_task_qwen_batch_and_default_deferrable_follows_the_config() -> None:
    # A fresh interpreter: discovery is cached per process, and the config is read at import.
    code = textwrap.dedent(
        """
        import json
        from datetime import datetime
        from airflow.sdk import DAG, task
        from airflow_provider_qwenbatch.decorators.qwen_batch import qwen_batch_task

        with DAG("d", schedule=None, start_date=datetime(2026, 1, 1)):
            @task.qwen_batch(endpoint="/v1/embeddings")
            def emb():
                return []
            op = emb().operator
        print(json.dumps({"same": task.qwen_batch is qwen_batch_task, "deferrable": op.deferrable,
                          "type": type(op).__name__, "endpoint": op.endpoint}))
        """
    )
    for flag in ("True", "False"):
        env = dict(os.environ, AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=flag)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert out.returncode == 0, out.stderr[-3000:]
        data = json.loads(out.stdout.strip().splitlines()[-1])
        assert data == {
            "same": True,
            "deferrable": flag == "True",
            "type": "_QwenBatchDecoratedOperator",
            "endpoint": "/v1/embeddings",
        }


def test_importing_the_decorator_builds_no_http_client_and_no_connection() -> None:
    # ProvidersManager imports the module each time a DAG file reaches task.qwen_batch.
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "airflow_provider_qwenbatch.decorators.qwen_batch"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["at_import"] == []
    assert result["after_control"] == ["Client"]


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, r"one_request\(\) must return or yield request dicts, got None$"),
        ({"custom_id": "a", "body": {}}, r"got dict \(one request\? return a list of them, or yield each\)"),
        ("{}", r"got str$"),
    ],
)
def test_a_function_returning_no_requests_fails_clearly(returned: Any, message: str) -> None:
    from airflow_provider_qwenbatch.decorators.qwen_batch import qwen_batch_task
    from airflow_provider_qwenbatch.exceptions import BatchInputError

    def one_request() -> Any:
        return returned

    op = qwen_batch_task()(one_request)().operator
    with pytest.raises(BatchInputError, match=message):
        op._input_requests({})
