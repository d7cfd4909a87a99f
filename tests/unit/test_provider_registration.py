"""The package registers with Airflow 3 the way a user's `airflow providers list` sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import jsonschema

from airflow_provider_qwenbatch.compat import AIRFLOW_V_3_2_PLUS
from airflow_provider_qwenbatch.get_provider_info import get_provider_info


def test_entry_point_resolves_to_provider_info() -> None:
    eps = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_qwenbatch")
    ]
    assert len(eps) == 1
    info = eps[0].load()()
    assert info["package-name"] == "airflow-provider-qwenbatch"


def test_provider_info_matches_airflow_schema() -> None:
    import airflow

    schema_path = airflow.__path__[0] + "/provider_info.schema.json"
    with open(schema_path) as fh:
        schema = json.load(fh)
    jsonschema.validate(get_provider_info(), schema)


def test_providers_manager_knows_hook_connection_type_and_fields() -> None:
    # A fresh interpreter: ProvidersManager caches discovery per process.
    code = (
        "import json\n"
        "from airflow.providers_manager import ProvidersManager\n"
        "pm = ProvidersManager()\n"
        "hook = pm.hooks['qwen_batch']\n"
        "widgets = sorted(k for k in pm.connection_form_widgets if k.startswith('extra__qwen_batch__'))\n"
        "beh = pm.field_behaviours.get('qwen_batch')\n"
        "print(json.dumps({'providers': sorted(pm.providers), 'hook': hook.hook_class_name, 'conn_id_attr':"
        " hook.connection_id_attribute_name, 'widgets': widgets, 'behaviour': beh,"
        " 'links': sorted(pm.extra_links_class_names), 'plugins': [p.name for p in pm.plugins]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert "airflow-provider-qwenbatch" in data["providers"]
    assert data["hook"] == "airflow_provider_qwenbatch.hooks.qwen_batch.QwenBatchHook"
    assert data["conn_id_attr"] == "qwen_batch_conn_id"
    if AIRFLOW_V_3_2_PLUS:
        assert data["widgets"] == [
            "extra__qwen_batch__connect_timeout",
            "extra__qwen_batch__max_retries",
            "extra__qwen_batch__region",
            "extra__qwen_batch__timeout",
            "extra__qwen_batch__workspace_id",
        ]
    else:
        # Airflow 3.0/3.1 build form widgets only from a hook's wtforms get_connection_form_widgets();
        # the provider's "conn-fields" (3.2+) are ignored there: the fields go in the extra JSON.
        assert data["widgets"] == []
    if AIRFLOW_V_3_2_PLUS:
        assert data["behaviour"]["relabeling"]["password"] == "API Key"
        assert "password" not in data["behaviour"]["hidden_fields"]
    else:
        # Measured on 3.1.8: ProvidersManager reports no field behaviour for the type (known gap,
        # README "Compatibility"): the form shows the standard fields, the key goes in Password.
        assert data["behaviour"] is None
    assert "airflow_provider_qwenbatch.links.QwenBatchConsoleLink" in data["links"]
    assert "qwenbatch_cleanup" in data["plugins"]


def test_airflow_cli_lists_the_provider() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    )
    names = [p["package_name"] for p in json.loads(out.stdout[out.stdout.index("[") :])]
    assert "airflow-provider-qwenbatch" in names


def test_cleanup_listener_is_registered_with_default_settings() -> None:
    # Default [core] lazy_discover_providers=True: provider-info plugins are not loaded, the
    # airflow.plugins entry point is; either way the listener module is registered once.
    code = (
        "from airflow.listeners.listener import get_listener_manager\n"
        "from airflow_provider_qwenbatch.compat import loaded_plugin_errors\n"
        "errors = loaded_plugin_errors()\n"
        "names = [getattr(p, '__name__', '') for p in get_listener_manager().pm.get_plugins()]\n"
        # Only our plugins' errors: other installed providers (common.ai, openlineage) declare
        # theirs both ways and Airflow reports those as "already registered".
        "errors = [k for k in errors if 'qwenbatch' in k]\n"
        "print(names.count('airflow_provider_qwenbatch.cleanup.listener'), len(errors))\n"
    )
    for lazy in ("True", "False"):
        env = dict(os.environ, AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS=lazy)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=env
        )
        assert out.stdout.split()[-2:] == ["1", "0"], (lazy, out.stdout, out.stderr[-2000:])
