"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_qwenbatch import __version__

DOCUMENTATION_URL = "https://pypi.org/project/airflow-provider-qwenbatch/"


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata: hooks, connection type and its UI fields, TaskFlow decorator, links, config."""
    return {
        "package-name": "airflow-provider-qwenbatch",
        "name": "Qwen Batch (DashScope)",
        "description": "Run Qwen Cloud (Alibaba DashScope / Model Studio) Batch jobs from Airflow, "
        "and cancel them when the DAG that started them is aborted or fails.",
        "versions": [__version__],
        # Airflow reads project.urls "Documentation" too; the README is the documentation, shown on PyPI.
        "documentation-url": DOCUMENTATION_URL,
        "integrations": [
            {
                "integration-name": "Qwen Batch (DashScope)",
                "external-doc-url": "https://www.alibabacloud.com/help/en/model-studio/batch-interfaces-compatible-with-openai",
                "tags": ["ai"],
            }
        ],
        "operators": [
            {
                "integration-name": "Qwen Batch (DashScope)",
                "python-modules": ["airflow_provider_qwenbatch.operators.batch"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Qwen Batch (DashScope)",
                "python-modules": ["airflow_provider_qwenbatch.sensors.batch"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Qwen Batch (DashScope)",
                "python-modules": [
                    "airflow_provider_qwenbatch.triggers.batch",
                    "airflow_provider_qwenbatch.triggers.batches",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "Qwen Batch (DashScope)",
                "python-modules": ["airflow_provider_qwenbatch.hooks.qwen_batch"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "qwen_batch",
                "hook-class-name": "airflow_provider_qwenbatch.hooks.qwen_batch.QwenBatchHook",
                "hook-name": "Qwen Batch (DashScope)",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "port", "schema", "extra"],
                    "relabeling": {"password": "API Key", "host": "Base URL override"},
                    "placeholders": {
                        "password": "sk-... (falls back to DASHSCOPE_API_KEY when empty)",
                        "host": "leave empty to use the region's URL; e.g. http://127.0.0.1:8000/compatible-mode/v1",
                    },
                },
                "conn-fields": {
                    "region": {
                        "label": "Region",
                        "schema": {
                            "type": ["string", "null"],
                            "default": "beijing",
                            "enum": ["beijing", "singapore", "us"],
                        },
                        "description": "Picks the base URL; an API key works only in its own region.",
                    },
                    "workspace_id": {
                        "label": "Workspace ID (Singapore)",
                        "schema": {
                            "type": ["string", "null"],
                            "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                        },
                        "description": "Uses the workspace's own domain "
                        "https://{workspace_id}.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1, which the "
                        "vendor recommends over dashscope-intl. Singapore only; leave empty otherwise.",
                    },
                    "timeout": {
                        "label": "Request timeout (s)",
                        "schema": {"type": ["number", "null"], "default": 60},
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "schema": {"type": ["number", "null"], "default": 10},
                    },
                    "max_retries": {
                        "label": "Retries of safe calls",
                        "schema": {"type": ["integer", "null"], "default": 5},
                    },
                },
            }
        ],
        # `from airflow.sdk import task; @task.qwen_batch` (ProvidersManager's taskflow decorators).
        "task-decorators": [
            {
                "name": "qwen_batch",
                "class-name": "airflow_provider_qwenbatch.decorators.qwen_batch.qwen_batch_task",
            }
        ],
        "extra-links": ["airflow_provider_qwenbatch.links.QwenBatchConsoleLink"],
        "plugins": [
            {
                "name": "qwenbatch_cleanup",
                "plugin-class": "airflow_provider_qwenbatch.cleanup.plugins.QwenBatchCleanupPlugin",
            }
        ],
        "config": {
            "qwenbatch": {
                "description": "Settings of the Qwen Batch provider.",
                "options": {
                    "cancel_on_dag_run_failed": {
                        "description": "When a DAG run fails (including a run marked failed in the UI or "
                        "API, which runs no DAG callback), cancel every in-flight batch the run started. "
                        "Done by a listener in the process that marks the run failed, on a background "
                        "thread so it never blocks the api-server or scheduler.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "trigger_list_pages_per_minute": {
                        "description": "Deferred batch tasks of one triggerer share their status reads: "
                        "pages of the in-flight batch list (100 batches per request) instead of one read "
                        "per batch per poll. This caps the list requests per minute of each triggerer and "
                        "Connection (the account's list quota is 100/min). 0 reads every batch on its own.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "30",
                        "default": "60",
                    },
                    "trigger_single_reads_per_minute": {
                        "description": "When the list does not answer for a batch (it ended, or listing "
                        "is paused after a failed or throttled list request), the triggers of one "
                        "triggerer and Connection read batches one by one, spaced to this many "
                        "GET /batches/{id} per minute (the account's retrieve quota is 1,000/min).",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "250",
                        "default": "500",
                    },
                    "trigger_freeze_startup_heap": {
                        "description": "Freeze the objects alive when the first batch trigger of a "
                        "triggerer starts (gc.freeze(): Airflow's modules and the triggerer's state), so "
                        "full garbage collections stop walking them: one such collection otherwise "
                        "stalls every trigger of the triggerer for ~100 ms or more. Also freezes the running "
                        "triggers' long-lived state as they grow by a tenth (from 500) and as they get their "
                        "first status, and collects once "
                        "what ended triggers left when a quarter of those frozen have ended.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "prices": {
                        "description": "Prices per model, as JSON, for cost figures: "
                        '{"qwen-plus": {"input": 0.0008, "output": 0.002, "unit": 1000, "currency": "CNY", '
                        '"batch_discount": 0.5}}. input/output are prices per unit tokens; batch_discount '
                        "multiplies them (0.5 with real-time prices, 1 with batch prices). Unset: no cost figures.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": '{"qwen-plus": {"input": 0.0008, "output": 0.002, "unit": 1000, "currency": "CNY", "batch_discount": 0.5}}',
                        "default": "",
                    },
                    "default_conn_id": {
                        "description": "Connection used by the failure listener to find and cancel batches.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "qwen_batch_default",
                        "default": "qwen_batch_default",
                    },
                },
            }
        },
    }
