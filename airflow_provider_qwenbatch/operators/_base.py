"""What the provider's operators share: the Connection, defaults and small conversions."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR as _FAIL
from airflow.sdk.bases.operator import TriggerFailureReason

from airflow_provider_qwenbatch.compat import conf
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.task_connection import QwenBatchConnectionMixin

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.client.identity import BatchTag

BATCH_ID_XCOM_KEY = "batch_id"
# Every batch id of a sharded job so far (a list), pushed again as each shard's batch is created.
BATCH_IDS_XCOM_KEY = "batch_ids"
# The account allows 1,000 unfinished batches in all (API-FACTS, "Rates and timing"); one task
# keeps well under it by default, so that other tasks and DAGs of the account still get theirs.
MAX_UNFINISHED_BATCHES = 1000
DEFAULT_MAX_ACTIVE_BATCHES = 100

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


def tag_of(ti: Any) -> BatchTag:
    """The tag of a running task instance's batches (any try).

    :param ti: the task instance.
    """
    from airflow_provider_qwenbatch.client.identity import BatchTag

    return BatchTag(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1)


def check_counts(task_id: str, **values: tuple[int | None, int, int | None]) -> None:
    """Refuse, when the DAG is parsed, a count argument that is not an int within its range.

    :param task_id: the task, named in the error.
    :param values: argument name -> (value or ``None`` when not given, minimum, maximum or ``None``).
    :raises ValueError: naming the argument, its range and the value given.
    """
    for name, (value, low, high) in values.items():
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{task_id}: {name} must be an integer {bounds}, got {value!r}")


class QwenBatchBaseOperator(QwenBatchConnectionMixin, BaseOperator):
    """Shared Connection handling (see :class:`QwenBatchConnectionMixin`).

    :param conn_id: the ``qwen_batch`` Connection.
    """

    def __init__(self, *, conn_id: str = QwenBatchHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self._settings = None
