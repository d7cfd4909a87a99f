"""Reusable pytest fixtures as plain functions (this module does not import pytest).

In a ``conftest.py``::

    import pytest
    from airflow_provider_qwenbatch.emulator.testing import emulator_fixture, emulator_process_fixture

    qwenbatch_emulator = pytest.fixture(emulator_fixture)
    qwenbatch_emulator_process = pytest.fixture(scope="session")(emulator_process_fixture)

or call :func:`emulator_fixture` with overrides from your own fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, EmulatorProcess, running_emulator


def fast_config(**overrides: Any) -> EmulatorConfig:
    """A config where batches finish within a fraction of a second.

    :param overrides: fields to set on top.
    """
    return EmulatorConfig.fast(**overrides)


def emulator_fixture(**overrides: Any) -> Iterator[EmulatorHandle]:
    """Yield an in-process emulator (background thread) with :func:`fast_config`.

    :param overrides: config fields.
    """
    with running_emulator(fast_config(**overrides)) as handle:
        yield handle


def emulator_process_fixture(**overrides: Any) -> Iterator[EmulatorHandle]:
    """Yield an emulator running as a subprocess (for tests with real Airflow processes).

    :param overrides: config fields.
    """
    with EmulatorProcess(fast_config(**overrides)) as handle:
        yield handle
