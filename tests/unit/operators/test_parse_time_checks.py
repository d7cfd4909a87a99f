"""Mistakes the submit operator refuses when the DAG file is parsed, before any run (or bill) starts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from airflow.models import DagBag

from airflow_provider_qwenbatch.exceptions import BatchInputError
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator


def _parse(tmp_path: Path, operator_args: str) -> str:
    """Parse a one-task DAG file with Airflow's own DagBag; return its import error (or '')."""
    dag_file = tmp_path / "user_dag.py"
    dag_file.write_text(
        textwrap.dedent(
            f"""
            from airflow.sdk import DAG
            from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

            with DAG("user_dag", schedule=None):
                SubmitBatchOperator(task_id="submit", input_file_id="file-1", {operator_args})
            """
        )
    )
    bag = DagBag(dag_folder=str(dag_file))
    return "\n".join(str(e) for e in bag.import_errors.values())


def test_an_unknown_endpoint_is_an_import_error_naming_task_and_endpoint(tmp_path: Path) -> None:
    error = _parse(tmp_path, 'endpoint="/v1/chat/completion"')
    assert "submit: endpoint '/v1/chat/completion' is not one of /v1/chat/completions" in error


def test_a_known_endpoint_parses(tmp_path: Path) -> None:
    assert _parse(tmp_path, 'endpoint="/v1/embeddings"') == ""


def test_a_templated_endpoint_is_checked_at_run_time_not_parse_time() -> None:
    op = SubmitBatchOperator(task_id="t", input_file_id="file-1", endpoint="{{ params.endpoint }}")
    assert op.endpoint == "{{ params.endpoint }}"


def test_unknown_endpoint_is_a_batch_input_error() -> None:
    with pytest.raises(BatchInputError, match="t: endpoint '/v1/completions' is not one of"):
        SubmitBatchOperator(task_id="t", input_file_id="file-1", endpoint="/v1/completions")


def test_delete_input_file_without_waiting_is_refused_with_the_reason(tmp_path: Path) -> None:
    error = _parse(tmp_path, "delete_input_file=True, wait_for_completion=False")
    assert "submit: delete_input_file=True needs wait_for_completion=True" in error
    assert _parse(tmp_path, "delete_input_file=True, wait_for_completion=True") == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("max_lines_per_batch=0", "max_lines_per_batch must be an integer between 1 and 50000, got 0"),
        (
            "max_lines_per_batch=50001",
            "max_lines_per_batch must be an integer between 1 and 50000, got 50001",
        ),
        ("max_active_batches=0", "max_active_batches must be an integer between 1 and 1000, got 0"),
        ("max_active_batches=2000", "max_active_batches must be an integer between 1 and 1000, got 2000"),
        ("resubmit_failed=-1", "resubmit_failed must be an integer at least 0, got -1"),
        ("max_input_tokens=True", "max_input_tokens must be an integer at least 1, got True"),
    ],
)
def test_a_count_out_of_range_is_an_import_error_naming_task_argument_and_range(
    tmp_path: Path, args: str, message: str
) -> None:
    dag_file = tmp_path / "user_dag.py"
    dag_file.write_text(
        textwrap.dedent(
            f"""
            from airflow.sdk import DAG
            from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

            with DAG("user_dag", schedule=None):
                SubmitBatchOperator(task_id="submit", input_path="/data/in.jsonl", {args})
            """
        )
    )
    errors = "\n".join(str(e) for e in DagBag(dag_folder=str(dag_file)).import_errors.values())
    assert f"submit: {message}" in errors


def test_sharding_arguments_need_the_input_itself_not_a_file_id(tmp_path: Path) -> None:
    error = _parse(tmp_path, "max_lines_per_batch=100")
    assert "max_lines_per_batch, resubmit_failed and max_input_tokens need the input itself" in error


def test_resubmit_failed_without_waiting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resubmit_failed needs wait_for_completion=True"):
        SubmitBatchOperator(task_id="t", input_path="/x.jsonl", resubmit_failed=1, wait_for_completion=False)
