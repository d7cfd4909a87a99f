"""The documented import path of the failure callback; it lives in :mod:`.cleanup.callbacks`.

``from airflow_provider_qwenbatch.callbacks import cancel_batches_on_failure`` keeps working.
"""

from __future__ import annotations

from airflow_provider_qwenbatch.cleanup.callbacks import (
    cancel_batches_on_failure,
    make_cancel_batches_on_failure,
)

__all__ = ["cancel_batches_on_failure", "make_cancel_batches_on_failure"]
