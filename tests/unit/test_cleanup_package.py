"""The clean-up paths live in ``airflow_provider_qwenbatch.cleanup``; the documented imports still work."""

from __future__ import annotations

import json
import subprocess
import sys


def test_documented_callback_import_path_still_works() -> None:
    from airflow_provider_qwenbatch import callbacks
    from airflow_provider_qwenbatch.cleanup import callbacks as moved

    assert callbacks.cancel_batches_on_failure is moved.cancel_batches_on_failure
    assert callbacks.make_cancel_batches_on_failure is moved.make_cancel_batches_on_failure


def test_cancel_run_batches_importable_from_the_package() -> None:
    from airflow_provider_qwenbatch.cleanup import CLEANUP_CANCEL_BUDGET, cancel_run_batches, run

    assert cancel_run_batches is run.cancel_run_batches
    assert CLEANUP_CANCEL_BUDGET == run.CLEANUP_CANCEL_BUDGET


def test_loading_the_listener_plugin_imports_no_batch_client() -> None:
    # Every Airflow process loads the plugin; the HTTP client waits until a run fails.
    code = (
        "import json, sys\n"
        "import airflow_provider_qwenbatch.cleanup.plugins\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('airflow_provider_qwenbatch'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "airflow_provider_qwenbatch.cleanup.listener" in loaded
    assert not [m for m in loaded if m.startswith("airflow_provider_qwenbatch.client")], loaded


def test_batch_creating_operator_names_are_what_airflow_stores() -> None:
    # The listener matches task_instance.operator, which Airflow fills from task_type.
    from airflow_provider_qwenbatch.cleanup.usage import BATCH_CREATING_OPERATORS
    from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator

    op = SubmitBatchOperator(task_id="submit", input_file_id="file-x")
    assert op.task_type in BATCH_CREATING_OPERATORS
    assert {SubmitBatchOperator.__name__} == BATCH_CREATING_OPERATORS
