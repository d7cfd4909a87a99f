"""Settings of the emulator: timing, rates, limits, and fault injection per endpoint.

Every field of :class:`EmulatorConfig` is also a CLI flag (``--field-name``) of
``python -m airflow_provider_qwenbatch.emulator``; the runtime ones can be changed while it
runs through ``PUT /_emulator/config`` and ``PUT /_emulator/faults``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_qwenbatch.client.jsonl import (
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    MAX_LINES,
    TEST_MAX_FILE_BYTES,
    TEST_MAX_LINES,
)
from airflow_provider_qwenbatch.emulator.models import DEFAULT_MODELS

ENDPOINT_NAMES: tuple[str, ...] = (
    "create_batch",
    "get_batch",
    "list_batches",
    "cancel_batch",
    "upload_file",
    "get_file",
    "list_files",
    "delete_file",
    "get_file_content",
    "chat_completions",
    "embeddings",
)
"""Names under which faults are configured; ``*`` matches every endpoint."""

FaultKind = Literal["429", "500", "502", "503", "drop", "drop_after"]
FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "drop", "drop_after")


class FaultSpec(BaseModel):
    """Faults injected into one endpoint, before the request reaches the handler.

    Probabilities are independent slices of one uniform draw per request (so their sum must
    stay <= 1); the draw comes from a RNG seeded by :attr:`EmulatorConfig.seed`.

    :param p_429: probability of ``429`` with ``Retry-After`` and a ``Throttling.RateQuota`` body.
    :param p_500: probability of ``500`` (JSON error body).
    :param p_502: probability of ``502`` with an HTML page, as a gateway sends it.
    :param p_503: probability of ``503`` (JSON error body).
    :param p_drop: probability that the connection is closed without any answer (the request
        is not processed).
    :param p_drop_after: probability that the request IS processed but the connection is then
        closed without the answer (a lost reply: the case where a blind retry of
        ``create_batch`` starts a second batch).
    :param latency_ms: fixed latency added before answering.
    :param latency_jitter_ms: extra random latency, uniform in ``[0, latency_jitter_ms]``.
    :param retry_after: the ``Retry-After`` header of a 429, in seconds.
    :param fail_next: faults applied, in order, to the next requests of this endpoint
        (one each, before the probabilities); deterministic scripting for tests.
    """

    model_config = ConfigDict(extra="forbid")

    p_429: float = Field(0.0, ge=0.0, le=1.0)
    p_500: float = Field(0.0, ge=0.0, le=1.0)
    p_502: float = Field(0.0, ge=0.0, le=1.0)
    p_503: float = Field(0.0, ge=0.0, le=1.0)
    p_drop: float = Field(0.0, ge=0.0, le=1.0)
    p_drop_after: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(0.0, ge=0.0)
    latency_jitter_ms: float = Field(0.0, ge=0.0)
    retry_after: int = Field(1, ge=0)
    fail_next: list[FaultKind] = Field(default_factory=list)


class EmulatorConfig(BaseModel):
    """Everything the emulator can be told. Defaults feel like the real service, only faster.

    Durations are real seconds; :attr:`time_scale` only speeds up ``completion_window`` (so
    expiry can be tested) and leaves the other delays alone. Timestamps in answers are real
    Unix seconds.

    :param host: address to bind (loopback by default).
    :param port: port to bind; ``0`` picks a free one (printed in the READY line).
    :param api_key: the only accepted ``Authorization: Bearer`` key.
    :param time_scale: how many emulated seconds of ``completion_window`` pass per real second.
    :param validation_delay: seconds a batch stays ``validating``.
    :param lines_per_second: lines processed per second for each ``in_progress`` batch.
    :param finalize_delay: seconds a batch stays ``finalizing``.
    :param cancel_delay: seconds from ``cancelling`` to ``cancelled``.
    :param line_error_rate: fraction of lines that fail into the error file (counted failed).
    :param line_soft_error_rate: fraction of lines answered with a non-200 status INSIDE the
        output file while ``request_counts.failed`` stays 0, as the real service does.
    :param transient_line_errors: a line's outcome also depends on the batch it is in, so a
        request that failed with a server error may succeed when sent again in another batch
        (as a transient error does); off: the same ``custom_id`` always ends the same way.
    :param seed: seeds the fault RNG and the per-line outcomes and answers.
    :param state_dir: where files and ``state.json`` live; kept across restarts. A temporary
        directory (removed on exit) when unset.
    :param tick_interval: seconds between two passes of the one loop that advances all batches.
    :param max_lines_per_tick: lines processed in one pass over all batches, so the event loop
        keeps answering requests under load.
    :param shuffle_output: write each processed chunk in a shuffled order (the real output
        order is not guaranteed either).
    :param embedding_dimensions: vector size of emulated embeddings unless the request says
        ``dimensions``.
    :param max_file_bytes: input limit per file.
    :param max_lines: input limit of lines per file.
    :param max_line_bytes: input limit per line.
    :param test_model_max_bytes: input limit per file for ``batch-test-model``.
    :param test_model_max_lines: input limit of lines for ``batch-test-model``.
    :param models: model names that exist (default: the real DashScope names of
        :mod:`.models`); any other fails with ``model_not_found`` (a batch in validation, a
        real-time call with 404). On the command line a comma list; starting it with ``+``
        adds to the defaults (``--models +my-finetune``).
    :param accept_any_model: accept every model name (no ``model_not_found``).
    :param test_model_max_concurrent: unfinished ``batch-test-model`` batches allowed at once;
        creating one more answers 429 (nothing is created, so a retry is safe).
    :param callback_timeout: seconds one ``ds_batch_finish_callback`` POST may take.
    :param request_log_size: entries kept in the request log.
    :param faults: fault injection per endpoint name (see :data:`ENDPOINT_NAMES`) or ``*``.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str = "sk-emulator"
    time_scale: float = Field(1.0, gt=0.0)
    validation_delay: float = Field(1.0, ge=0.0)
    lines_per_second: float = Field(300.0, gt=0.0)
    finalize_delay: float = Field(0.3, ge=0.0)
    cancel_delay: float = Field(2.0, ge=0.0)
    line_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    line_soft_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    transient_line_errors: bool = False
    seed: int = 0
    state_dir: str | None = None
    tick_interval: float = Field(0.05, gt=0.0)
    max_lines_per_tick: int = Field(20_000, ge=1)
    shuffle_output: bool = True
    embedding_dimensions: int = Field(16, ge=1)
    max_file_bytes: int = Field(MAX_FILE_BYTES, ge=1)
    max_lines: int = Field(MAX_LINES, ge=1)
    max_line_bytes: int = Field(MAX_LINE_BYTES, ge=1)
    test_model_max_bytes: int = Field(TEST_MAX_FILE_BYTES, ge=1)
    test_model_max_lines: int = Field(TEST_MAX_LINES, ge=1)
    models: list[str] = Field(default_factory=lambda: sorted(DEFAULT_MODELS))
    accept_any_model: bool = False
    test_model_max_concurrent: int = Field(2, ge=1)
    callback_timeout: float = Field(10.0, gt=0.0)
    request_log_size: int = Field(100_000, ge=1)
    faults: dict[str, FaultSpec] = Field(default_factory=dict)

    @classmethod
    def fast(cls, **overrides: object) -> EmulatorConfig:
        """A config for tests: everything happens within a fraction of a second.

        :param overrides: fields to set on top.
        """
        values: dict[str, object] = {
            "validation_delay": 0.05,
            "lines_per_second": 2000.0,
            "finalize_delay": 0.05,
            "cancel_delay": 0.1,
            "tick_interval": 0.02,
        }
        values.update(overrides)
        return cls.model_validate(values)


RUNTIME_FIELDS: frozenset[str] = frozenset(
    {
        "api_key",
        "time_scale",
        "validation_delay",
        "lines_per_second",
        "finalize_delay",
        "cancel_delay",
        "line_error_rate",
        "line_soft_error_rate",
        "transient_line_errors",
        "seed",
        "tick_interval",
        "max_lines_per_tick",
        "shuffle_output",
        "embedding_dimensions",
        "max_file_bytes",
        "max_lines",
        "max_line_bytes",
        "test_model_max_bytes",
        "test_model_max_lines",
        "models",
        "accept_any_model",
        "test_model_max_concurrent",
        "callback_timeout",
    }
)
"""Fields ``PUT /_emulator/config`` may change while the emulator runs."""


def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """The ``:param name: text`` entries of a model's docstring, as one line each.

    The docstring is the one description of every setting: ``--help`` is built from it, and a
    test checks that every field has an entry, so the two cannot drift apart.

    :param model: :class:`EmulatorConfig` or :class:`FaultSpec`.
    """
    docs: dict[str, str] = {}
    current: str | None = None
    for raw in (model.__doc__ or "").splitlines():
        line = raw.strip()
        match = re.match(r":param (\w+):\s*(.*)", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current is not None and line and not re.match(r":(param|return|raises)\b", line):
            docs[current] += " " + line
        else:
            current = None
    return {name: _plain(text) for name, text in docs.items()}


def _plain(text: str) -> str:
    # reST to terminal text: ``x`` -> x, :mod:`.models` -> models.
    text = re.sub(r":\w+:`[.~]?([^`]+)`", r"\1", text).replace("``", "")
    return " ".join(text.split())
