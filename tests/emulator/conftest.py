"""Fixtures of the emulator tests: an in-process emulator with fast timings and small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from emulator_helpers import chat_lines, create, jsonl, run_batch, upload, wait_for, wait_status

from airflow_provider_qwenbatch.emulator import EmulatorConfig, EmulatorHandle, running_emulator
from airflow_provider_qwenbatch.emulator.testing import emulator_fixture

# The reusable fixture of the package, registered under the name other suites use too.
qwenbatch_emulator = pytest.fixture(emulator_fixture)


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    with running_emulator(EmulatorConfig.fast()) as handle:
        yield handle


@pytest.fixture
def http(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=30.0
    ) as client:
        yield client


@pytest.fixture
def helpers() -> Any:
    class H:
        chat_lines = staticmethod(chat_lines)
        upload = staticmethod(upload)
        create = staticmethod(create)
        wait_for = staticmethod(wait_for)
        wait_status = staticmethod(wait_status)
        run_batch = staticmethod(run_batch)
        jsonl = staticmethod(jsonl)

    return H
