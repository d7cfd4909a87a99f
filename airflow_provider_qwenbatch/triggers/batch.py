"""BatchStatusTrigger: waits for a batch in the triggerer, and cancels it when a user kills the task.

How it connects, when a kill cancels the batch and why a restart or a reassignment does not,
and why cleanup never cancels: :mod:`._lifecycle`, shared with
:class:`~airflow_provider_qwenbatch.triggers.batches.BatchesStatusTrigger`.

* Triggers of one event loop with the same settings share async clients (see
  :mod:`.client_pool`): a triggerer running thousands of them keeps a few connection pools,
  not one httpx client (SSL context, pool) per trigger. The shared client logs its retries
  under the client's own logger; each trigger still logs its failed polls itself.
* They also share one :class:`~.status_watch.StatusWatch`, which reads their statuses with
  pages of the in-flight list (100 batches per request) and reads a batch on its own only
  when the list does not show it (it ended): each trigger's poll interval still applies.
"""

from __future__ import annotations

import random
import time
from typing import Any, Literal

from airflow.triggers.base import TriggerEvent
from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.cancel import (
    UNHURRIED_BUDGET,
    UNHURRIED_RETRIES,
    CancelOutcome,
    acancel_quietly,
)
from airflow_provider_qwenbatch.client.errors import QwenBatchError
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.exceptions import BatchEventError
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.summary import ProgressReporter, batch_summary, describe_end, describe_timeout
from airflow_provider_qwenbatch.triggers._lifecycle import (
    FATAL_POLL_ERRORS,
    MAX_FAILED_POLLS,
    ON_KILL_WAIT,
    TRIGGER_KILL_BUDGET,
    BatchWatchTrigger,
)
from airflow_provider_qwenbatch.triggers.status_watch import StatusWatch

__all__ = [
    "MAX_FAILED_POLLS",
    "ON_KILL_WAIT",
    "TRIGGER_KILL_BUDGET",
    "BatchStatusTrigger",
    "TriggerEventPayload",
    "parse_event",
]


class TriggerEventPayload(BaseModel):
    """The event :class:`BatchStatusTrigger` yields, validated before it is trusted."""

    model_config = ConfigDict(defer_build=True)

    status: Literal["success", "failed", "timeout", "error"]
    batch_id: str
    batch_status: str | None = None
    message: str = ""
    batch: dict[str, Any] | None = None


def parse_event(event: Any) -> TriggerEventPayload:
    """Validate a trigger event payload.

    :param event: what the trigger sent.
    :raises BatchEventError: when it is not a valid payload.
    """
    try:
        return TriggerEventPayload.model_validate(event)
    except ValidationError as exc:
        raise BatchEventError(f"unexpected trigger event {str(event)[:200]!r}: {exc.errors()[:2]}") from None


class BatchStatusTrigger(BatchWatchTrigger):
    """Polls a batch with the async client until it is terminal, then yields exactly one event.

    Event payload (``dict``): ``status`` (``success``, ``failed``, ``timeout`` or ``error``),
    ``batch_id``, ``batch_status``, ``message`` and ``batch`` (the XCom summary, when read).

    :param batch_id: the batch to wait for.
    :param conn_id: the ``qwen_batch`` Connection id.
    :param poll_interval: seconds between reads.
    :param deadline: Unix time after which the batch is cancelled and a ``timeout`` event sent.
    :param cancel_on_kill: cancel the batch when a user kills the task.
    """

    def __init__(
        self,
        batch_id: str,
        conn_id: str = QwenBatchHook.default_conn_name,
        poll_interval: float = 60.0,
        deadline: float | None = None,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__(conn_id, cancel_on_kill)
        self.batch_id = batch_id
        self.poll_interval = poll_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs: ids and settings only, never a credential."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "batch_id": self.batch_id,
                "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def __repr__(self) -> str:
        return f"BatchStatusTrigger(batch_id={self.batch_id!r}, conn_id={self.conn_id!r})"

    def _event(self, status: str, message: str, batch: Batch | None = None) -> TriggerEvent:
        payload: dict[str, Any] = {
            "status": status,
            "batch_id": self.batch_id,
            "batch_status": batch.status.value if batch else None,
            "message": message,
        }
        if batch is not None:
            payload["batch"] = batch_summary(batch)
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    def _what(self) -> str:
        return f"batch {self.batch_id}"

    def _connect_failed(self, message: str) -> TriggerEvent:
        return self._event("error", message)

    async def _wait(self, client: AsyncBatchClient, watch: StatusWatch) -> TriggerEvent:
        """Poll until terminal (or the deadline); the one event to send."""
        progress = ProgressReporter(self.log)
        failed_polls = 0
        # The wait before the next read is the watch's (one timer for all its readers, see
        # StatusWatch.read), not a sleep of each trigger between its polls.
        delay = 0.0
        while True:
            try:
                batch = await watch.read(self.batch_id, within=self.poll_interval, delay=delay)
                failed_polls = 0
            except FATAL_POLL_ERRORS as exc:
                return self._event("error", f"cannot read batch {self.batch_id}: {exc}")
            except QwenBatchError as exc:
                failed_polls += 1
                self.log.warning("Poll %d of batch %s failed: %s", failed_polls, self.batch_id, exc)
                if failed_polls >= MAX_FAILED_POLLS:
                    return self._event(
                        "error", f"{failed_polls} polls of batch {self.batch_id} failed: {exc}"
                    )
                delay = self.poll_interval
                continue
            progress.update(batch)
            if batch.status.is_terminal:
                status = "success" if batch.status.is_success else "failed"
                return self._event(status, describe_end(batch), batch)
            wait = self.poll_interval
            if self.deadline is not None:
                left = self.deadline - time.time()
                if left <= 0:
                    # No kill clock here: the unhurried budget, with retries.
                    outcome = await acancel_quietly(
                        client,
                        self.batch_id,
                        budget=UNHURRIED_BUDGET,
                        retries=UNHURRIED_RETRIES,
                        logger=self.log,
                    )
                    timeout = self.deadline - batch.created_at if batch.created_at else None
                    return self._event("timeout", describe_timeout(batch, timeout, outcome), batch)
                wait = min(wait, left)
            # Up to 10% shorter, at random: triggers deferred together drift apart instead of
            # polling in lockstep bursts (the triggerer's loop and the API's rate limit both gain).
            delay = wait * random.uniform(0.9, 1.0)

    async def _cancel_for_kill(self, client: AsyncBatchClient, budget: float) -> CancelOutcome:
        return await acancel_quietly(client, self.batch_id, budget=budget, logger=self.log)
