"""Settings of the emulator: timing, rates, limits, and fault injection per endpoint.

Every field of :class:`EmulatorConfig` is also a CLI flag (``--field-name``) of
``python -m airflow_provider_qwenbatch.emulator``; the runtime ones can be changed while it
runs through ``PUT /_emulator/config`` and ``PUT /_emulator/faults``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_qwenbatch.client.jsonl import (
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    MAX_LINES,
    TEST_MAX_FILE_BYTES,
    TEST_MAX_LINES,
)

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
)
"""Names under which faults are configured; ``*`` matches every endpoint."""

FaultKind = Literal["429", "500", "502", "503", "drop", "drop_after"]
FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "drop", "drop_after")

# Model families the emulator knows; a model outside them fails validation with
# ``model_not_found`` like an unknown model does on the real service.
DEFAULT_MODEL_PREFIXES: tuple[str, ...] = (
    "qwen",
    "qwq",
    "qvq",
    "text-embedding",
    "batch-test-model",
    "deepseek",
    "kimi",
    "glm",
    "moonshot",
)


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
    :param known_model_prefixes: model name prefixes that exist; others fail ``model_not_found``.
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
    known_model_prefixes: list[str] = Field(default_factory=lambda: list(DEFAULT_MODEL_PREFIXES))
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
        "known_model_prefixes",
    }
)
"""Fields ``PUT /_emulator/config`` may change while the emulator runs."""
