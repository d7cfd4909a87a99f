"""Hardening fixtures: an emulator subprocess (its own GIL and event loop) and the Connection env var."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, EmulatorProcess
from tests.hardening.helpers import conn_json

API_KEY = "sk-HARDENING-5f0a"


@pytest.fixture(scope="session")
def emulator_proc() -> Iterator[EmulatorHandle]:
    config = EmulatorConfig.fast(api_key=API_KEY, port=0, seed=7)
    with EmulatorProcess(config) as handle:
        yield handle


@pytest.fixture
def emulator(emulator_proc: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    """A clean emulator and the default Connection pointing at it."""
    emulator_proc.reset()
    emulator_proc.clear_faults()
    monkeypatch.setenv("AIRFLOW_CONN_QWEN_BATCH_DEFAULT", conn_json(emulator_proc))
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    return emulator_proc
