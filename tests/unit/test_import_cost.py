"""Importing the provider (as a DAG file does at every parse) builds no HTTP client and reads no Connection."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, sys, importlib
import httpx
built = []
def recorder(cls):
    original = cls.__init__
    def init(self, *a, **k):
        built.append(cls.__name__)
        original(self, *a, **k)
    cls.__init__ = init
recorder(httpx.Client)
recorder(httpx.AsyncClient)
from airflow.sdk import BaseHook, Connection
recorder(Connection)
original_get = BaseHook.get_connection.__func__
def get_connection(cls, conn_id):
    built.append("get_connection")
    return original_get(cls, conn_id)
BaseHook.get_connection = classmethod(get_connection)
for name in sys.argv[1:]:
    importlib.import_module(name)
at_import = list(built)
# Control: the recorder does see a client being built.
from airflow_provider_qwenbatch.client.sync import BatchClient
BatchClient("sk-control", "http://127.0.0.1:9").close()
print(json.dumps({"at_import": at_import, "after_control": built}))
"""

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
