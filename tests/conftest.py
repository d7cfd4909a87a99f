"""
Test-session environment, set before anything imports Airflow.

Each session gets its own AIRFLOW_HOME (SQLite DB, logs) under the system temp folder, the
example DAGs as dags folder, and no example DAGs of Airflow's own. Nothing here reads
``../shared``: the recordings the tests need are copied into ``tests/fixtures``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="qwenbatch-tests-airflow-"))

os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
# A real key in the environment must never leak into tests.
os.environ.pop("DASHSCOPE_API_KEY", None)
