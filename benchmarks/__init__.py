"""Benchmarks of the provider against the alternatives; one command each, see BENCHMARKS.md."""

from __future__ import annotations

import os
from pathlib import Path

# Benchmarks never touch a user's ~/airflow: Airflow gets its own home under .tmp/.
_HOME = Path(__file__).resolve().parent.parent / ".tmp" / "bench-airflow"
_HOME.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
