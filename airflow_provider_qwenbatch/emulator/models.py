"""The model names the emulator accepts: real DashScope names, by region where the vendor says so.

The region lists are the client's own (``client.regions.BATCH_MODELS``): one place for them. The emulator refuses any other name with ``model_not_found``, as the
live service does (``qwen-plsu`` is a typo the emulator must not let through). The sets are
plain data with no dependency, so the provider's client can reuse them (e.g. to warn that a
model is not offered for batch in the connection's region).

Sources: the vendor's batch pages of June 2026 (see the project's API facts, "Added 2026-12").
Names change over time: a local list is advice, the live server's ``model_not_found`` is the
truth. Extend the emulator's list with ``--models`` / ``EmulatorConfig.models`` or switch the
check off with ``--accept-any-model``.
"""

from __future__ import annotations

from airflow_provider_qwenbatch.client.models import TEST_MODEL
from airflow_provider_qwenbatch.client.regions import BATCH_MODELS, EMBEDDING_MODELS, Region

__all__ = [
    "BEIJING_BATCH_MODELS",
    "DEFAULT_MODELS",
    "EMBEDDING_MODELS",
    "QWEN3_MODELS",
    "SINGAPORE_BATCH_MODELS",
    "TEST_MODEL",
    "model_not_found_message",
]

SINGAPORE_BATCH_MODELS: frozenset[str] = BATCH_MODELS[Region.SINGAPORE]
"""Models the Singapore (international) region offers for batch."""

BEIJING_BATCH_MODELS: frozenset[str] = BATCH_MODELS[Region.BEIJING]
"""Models the Beijing region offers for batch."""

QWEN3_MODELS: frozenset[str] = frozenset(
    {"qwen3-max", "qwen3.5-plus", "qwen3.5-flash", "qwen3.6-plus", "qwen3.7-max", "qwen3.7-plus"}
)
"""The current qwen3.x series names in common use (thinking ON by default; batch region unconfirmed)."""


DEFAULT_MODELS: frozenset[str] = SINGAPORE_BATCH_MODELS | BEIJING_BATCH_MODELS | QWEN3_MODELS | {TEST_MODEL}
"""Everything the emulator accepts by default."""


def model_not_found_message(model: str) -> str:
    """The message of a ``model_not_found`` error, worded as the live service words it.

    :param model: the refused name.
    """
    return f"The model `{model}` does not exist or you do not have access to it."
