"""A local emulator of Qwen Cloud's (DashScope's) OpenAI-compatible batch API.

It speaks the same HTTP API under ``/compatible-mode/v1`` (files, batches, cancel, result
downloads, and real-time chat completions and embeddings), runs batches through the real
lifecycle with deterministic answers (structured when ``response_format`` asks), refuses
model names the live service does not know, POSTs ``ds_batch_finish_callback`` URLs, and
can inject faults; an admin API under ``/_emulator/`` shows every request, batch and
callback. It imports no Airflow. See :mod:`.api` for the choices made where the real
service is unconfirmed, and :mod:`.state` for where each behaviour lives.

Run ``python -m airflow_provider_qwenbatch.emulator --port 8000``, or in tests::

    with running_emulator(EmulatorConfig.fast()) as emu:
        client = OpenAI(api_key=emu.api_key, base_url=emu.base_url)
"""

from airflow_provider_qwenbatch.emulator.app import ADMIN_PREFIX, API_PREFIX, EmulatorASGI, create_app
from airflow_provider_qwenbatch.emulator.config import ENDPOINT_NAMES, EmulatorConfig, FaultSpec
from airflow_provider_qwenbatch.emulator.server import (
    READY_MARKER,
    EmulatorHandle,
    EmulatorProcess,
    running_emulator,
)

__all__ = [
    "ADMIN_PREFIX",
    "API_PREFIX",
    "ENDPOINT_NAMES",
    "READY_MARKER",
    "EmulatorASGI",
    "EmulatorConfig",
    "EmulatorHandle",
    "EmulatorProcess",
    "FaultSpec",
    "create_app",
    "running_emulator",
]
