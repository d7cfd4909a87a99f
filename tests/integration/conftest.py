"""Integration fixtures: the real emulator over loopback, a migrated Airflow DB, the Connection."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, running_emulator
from scripts.airflow_env import migrated_db

# Realistic but quick: a 5-line batch completes within a second or two, a 2,000-line one
# runs for several seconds, so tests can act on it while it is in progress.
FAST = {
    "validation_delay": 0.2,
    "lines_per_second": 200.0,
    "finalize_delay": 0.1,
    "cancel_delay": 0.3,
    "tick_interval": 0.02,
}
API_KEY = "sk-INTEGRATION-7c1e5d"


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[EmulatorHandle]:
    with running_emulator(EmulatorConfig(port=0, api_key=API_KEY, **FAST)) as handle:  # type: ignore[arg-type]
        yield handle


@pytest.fixture
def emulator(emulator_session: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    """A clean emulator for each test, and the default Connection pointing at it."""
    return _fresh(emulator_session, monkeypatch)


def _fresh(handle: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    """Forget every batch, fault and changed setting; point the default Connection at ``handle``."""
    handle.reset()
    handle.clear_faults()
    handle.set_config(
        line_error_rate=0.0, line_soft_error_rate=0.0, transient_line_errors=False, time_scale=1.0, **FAST
    )
    monkeypatch.setenv("AIRFLOW_CONN_QWEN_BATCH_DEFAULT", conn_json(handle))
    return handle


@pytest.fixture(scope="session")
def stored_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorHandle, Path]]:
    """An emulator whose uploaded files can be read back from its ``state_dir`` (input files cannot be downloaded)."""
    state = tmp_path_factory.mktemp("emulator-state")
    config = EmulatorConfig(port=0, api_key=API_KEY, state_dir=str(state), **FAST)  # type: ignore[arg-type]
    with running_emulator(config) as handle:
        yield handle, state / "files"


@pytest.fixture
def emu(stored_emulator: tuple[EmulatorHandle, Path], monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    """The stored-files emulator, clean for each test, and the default Connection pointing at it."""
    return _fresh(stored_emulator[0], monkeypatch)


def conn_json(handle: EmulatorHandle, **extra: Any) -> str:
    """The ``qwen_batch`` Connection of an emulator, as Airflow reads it from an env var."""
    return json.dumps(
        {
            "conn_type": "qwen_batch",
            "password": handle.api_key,
            "host": handle.base_url,
            "extra": {"max_retries": 3, **extra},
        }
    )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata DB at the session's AIRFLOW_HOME (see tests/conftest.py)."""
    db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    migrated_db(db)
    from airflow import settings

    settings.configure_orm()
    return db
