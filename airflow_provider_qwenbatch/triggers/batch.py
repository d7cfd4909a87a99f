"""BatchStatusTrigger: waits for a batch in the triggerer, and cancels it when a user kills the task.

Kill semantics (measured on Airflow 3.3.2, see the README):

* A user marking the deferred task (or its run) failed cancels ``run()`` with
  ``CancelledError("__airflow_user_action__")``, then awaits :meth:`on_kill`, then
  :meth:`cleanup`. The remote cancel lives in :meth:`on_kill`.
* A triggerer shutdown or restart cancels ``run()`` without that marker and only calls
  :meth:`cleanup`: the batch must keep running, so :meth:`cleanup` never cancels it.
* The triggerer re-cancels a trigger about once a second, cutting ``on_kill`` short; the
  cancel request runs as its own task, shielded and referenced, so it completes anyway.
* The Connection is resolved and the client built at the start of :meth:`run`: the first
  task-SDK call from a trigger can take ~10 s, too long for a kill path.
* Triggers of one event loop with the same settings share async clients (see
  :mod:`.client_pool`): a triggerer running thousands of them keeps a few connection pools,
  not one httpx client (SSL context, pool) per trigger. The shared client logs its retries
  under the client's own logger; each trigger still logs its failed polls itself.
* They also share one :class:`~.status_watch.StatusWatch`, which reads their statuses with
  pages of the in-flight list (100 batches per request) and reads a batch on its own only
  when the list does not show it (it ended): each trigger's poll interval still applies.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from airflow.triggers.base import BaseTrigger, TriggerEvent
from pydantic import BaseModel, ConfigDict, ValidationError

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.cancel import CancelOutcome, acancel_quietly
from airflow_provider_qwenbatch.client.errors import (
    AuthenticationError,
    InvalidResponseError,
    NotFoundError,
    QwenBatchError,
)
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.exceptions import BatchEventError
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.summary import ProgressReporter, batch_summary, describe_end
from airflow_provider_qwenbatch.triggers.client_pool import acquire_client, release_client
from airflow_provider_qwenbatch.triggers.status_watch import StatusWatch, acquire_watch, release_watch

# The triggerer gives on_kill 30 s by default; a slow server still gets its cancel within it.
TRIGGER_KILL_BUDGET = 20.0
# Errors that polling again will not fix.
_FATAL = (AuthenticationError, NotFoundError, InvalidResponseError)
# Tolerate this many consecutive failed polls (each already retried by the client) before giving up.
MAX_FAILED_POLLS = 10
# Strong references to cancel tasks still running after on_kill was cut off: the event loop
# keeps only weak ones, and a collected task would drop the cancel mid-flight.
_PENDING_KILLS: set[asyncio.Task[CancelOutcome]] = set()
_PENDING_CLOSES: set[asyncio.Future[None]] = set()
_USER_ACTION = "__airflow_user_action__"


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


def triggerer_has_on_kill() -> bool:
    """Whether this Airflow calls ``BaseTrigger.on_kill`` on a user kill (3.3 and later)."""
    return "on_kill" in BaseTrigger.__dict__


class BatchStatusTrigger(BaseTrigger):
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
        super().__init__()  # type: ignore[no-untyped-call]
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.cancel_on_kill = cancel_on_kill
        self._client: AsyncBatchClient | None = None
        self._watch: StatusWatch | None = None
        self._kill_task: asyncio.Task[CancelOutcome] | None = None

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

    async def _connect(self) -> tuple[AsyncBatchClient, StatusWatch]:
        settings = await QwenBatchHook(self.conn_id).aget_settings()
        return acquire_client(settings), acquire_watch(settings)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until terminal (or the deadline), yield one event, return."""
        try:
            self._client, self._watch = await self._connect()
        except Exception as exc:
            yield self._event("error", f"cannot build a client for Connection {self.conn_id!r}: {exc}")
            return
        client, watch = self._client, self._watch
        progress = ProgressReporter(self.log)
        failed_polls = 0
        try:
            while True:
                try:
                    batch = await watch.read(self.batch_id, within=self.poll_interval)
                    failed_polls = 0
                except _FATAL as exc:
                    yield self._event("error", f"cannot read batch {self.batch_id}: {exc}")
                    return
                except QwenBatchError as exc:
                    failed_polls += 1
                    self.log.warning("Poll %d of batch %s failed: %s", failed_polls, self.batch_id, exc)
                    if failed_polls >= MAX_FAILED_POLLS:
                        yield self._event(
                            "error", f"{failed_polls} polls of batch {self.batch_id} failed: {exc}"
                        )
                        return
                    await asyncio.sleep(self.poll_interval)
                    continue
                progress.update(batch)
                if batch.status.is_terminal:
                    status = "success" if batch.status.is_success else "failed"
                    yield self._event(status, describe_end(batch), batch)
                    return
                wait = self.poll_interval
                if self.deadline is not None:
                    left = self.deadline - time.time()
                    if left <= 0:
                        outcome = await acancel_quietly(client, self.batch_id, logger=self.log)
                        yield self._event(
                            "timeout",
                            f"batch {self.batch_id} still {batch.status.value} at the deadline; "
                            f"cancel: {outcome.action.value} (x-request-id={outcome.request_id or 'none'})",
                            batch,
                        )
                        return
                    wait = min(wait, left)
                # Up to 10% shorter, at random: triggers deferred together drift apart instead of
                # polling in lockstep bursts (the triggerer's loop and the API's rate limit both gain).
                await asyncio.sleep(wait * random.uniform(0.9, 1.0))
        except asyncio.CancelledError as exc:
            if not triggerer_has_on_kill() and await self._killed_by_user(exc):
                # Airflow 3.0-3.2 call no on_kill: cancel here, but only for a user kill.
                await self._shielded_cancel()
            raise

    async def _killed_by_user(self, exc: asyncio.CancelledError) -> bool:
        """Fallback for Airflow < 3.3: a kill, not a restart, leaves the task instance no longer DEFERRED."""
        if exc.args and exc.args[0] == _USER_ACTION:
            return True
        ti = self.task_instance
        if ti is None:
            return False
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            states = await asyncio.wait_for(
                asyncio.to_thread(
                    RuntimeTaskInstance.get_task_states,
                    dag_id=ti.dag_id,
                    task_ids=[ti.task_id],
                    run_ids=[ti.run_id],
                    map_index=ti.map_index,
                ),
                timeout=5,
            )
        except Exception as err:
            self.log.warning(
                "Cannot tell a kill from a restart (%s); not cancelling batch %s", err, self.batch_id
            )
            return False
        found = [s for run in states.values() for s in (run.values() if isinstance(run, dict) else [run])]
        return bool(found) and all(str(s) != "deferred" for s in found)

    async def _shielded_cancel(self) -> CancelOutcome | None:
        if not self.cancel_on_kill or self._client is None:
            return None
        if self._kill_task is None:
            self._kill_task = asyncio.get_running_loop().create_task(
                acancel_quietly(self._client, self.batch_id, budget=TRIGGER_KILL_BUDGET, logger=self.log)
            )
            _PENDING_KILLS.add(self._kill_task)
            self._kill_task.add_done_callback(self._after_kill)
        # Shielded: the triggerer cancelling on_kill again must not cancel the request itself.
        return await asyncio.shield(self._kill_task)

    def _after_kill(self, task: asyncio.Task[CancelOutcome]) -> None:
        _PENDING_KILLS.discard(task)
        client, self._client = self._client, None
        if client is not None:
            # The client outlives cleanup() while a cancel is in flight; close it when that ends.
            closing = asyncio.ensure_future(release_client(client))
            _PENDING_CLOSES.add(closing)
            closing.add_done_callback(_PENDING_CLOSES.discard)

    async def on_kill(self) -> None:
        """A user killed the task: cancel the batch (Airflow >= 3.3 calls this; never on a restart)."""
        outcome = await self._shielded_cancel()
        if outcome is None:
            self.log.info("Task killed; batch %s left running (cancel_on_kill=False)", self.batch_id)

    async def cleanup(self) -> None:
        """Release the client; never cancels the batch (cleanup also runs on a triggerer restart)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            await release_watch(watch)
        if self._kill_task is not None and not self._kill_task.done():
            return  # _after_kill closes the client once the cancel is through
        client, self._client = self._client, None
        if client is not None:
            await release_client(client)
