"""What the provider's operators share: the Connection, defaults and small conversions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR as _FAIL
from airflow.sdk.bases.operator import TriggerFailureReason

from airflow_provider_qwenbatch.compat import conf
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.task_connection import QwenBatchConnectionMixin

BATCH_ID_XCOM_KEY = "batch_id"

# Airflow's own names for how a deferred task is resumed when its trigger did not fire (the
# same in every supported minor, 3.1 and 3.3).
TRIGGER_FAIL_REPR: str = _FAIL
TRIGGER_TIMEOUT: str = TriggerFailureReason.TRIGGER_TIMEOUT.value


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` (False when unset)."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def seconds(value: float | timedelta | None) -> float | None:
    """Seconds as a float, from a number or a timedelta (``None`` stays ``None``).

    :param value: the value.
    """
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class QwenBatchBaseOperator(QwenBatchConnectionMixin, BaseOperator):
    """Shared Connection handling (see :class:`QwenBatchConnectionMixin`).

    :param conn_id: the ``qwen_batch`` Connection.
    """

    def __init__(self, *, conn_id: str = QwenBatchHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self._settings = None
