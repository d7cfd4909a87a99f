"""Importing the provider (as a DAG file does at every parse) builds no HTTP client and reads no Connection."""

from __future__ import annotations

import json
import subprocess
import sys

# The same recorder the import_cost benchmark reports with.
from benchmarks.import_cost import RECORD as PROBE

MODULES = [
    "airflow_provider_qwenbatch.operators.batch",
    "airflow_provider_qwenbatch.sensors.batch",
    "airflow_provider_qwenbatch.triggers.batch",
    "airflow_provider_qwenbatch.hooks.qwen_batch",
    "airflow_provider_qwenbatch.callbacks",
    "airflow_provider_qwenbatch.links",
    "airflow_provider_qwenbatch.get_provider_info",
]


def test_import_builds_no_http_client_and_no_connection() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *MODULES], capture_output=True, text=True, timeout=180, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["at_import"] == []
    assert result["after_control"] == ["Client"]
