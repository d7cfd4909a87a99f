"""BatchStatusTrigger: waits for a batch in the triggerer, and cancels it when a user kills the task.

Kill semantics (measured on Airflow 3.3.2, see the README):

* A user marking the deferred task (or its run) failed cancels ``run()`` with
  ``CancelledError("__airflow_user_action__")``, then awaits :meth:`on_kill`, then
  :meth:`cleanup`. The remote cancel lives in :meth:`on_kill`.
* Airflow 3.3.x does the same when the trigger was reassigned to another triggerer (this
  one's heartbeat lapsed: a GC pause, a slow DB): the other triggerer still watches the
  batch. So :meth:`on_kill` cancels only when the task instance really left DEFERRED, asked
  through the triggerer's supervisor (:mod:`.kill_decision`, one rule for every kill path). The
  answer is awaited for up to 3 s; without one the batch is left running and the state asked
  again for up to 60 s in the background, cancelling as soon as it proves a kill.
* A triggerer shutdown or restart cancels ``run()`` without that marker and only calls
  :meth:`cleanup`: the batch must keep running, so :meth:`cleanup` never cancels it.
* The triggerer re-cancels a trigger about once a second, cutting ``on_kill`` short; the
  decision and the cancel request run as their own task, shielded and referenced, so they
  complete anyway.
* The Connection is resolved and the client built at the start of :meth:`run` (the first
  task-SDK call from a trigger can take ~10 s, too long for a kill path), and the task state
  query is warmed there too. A kill while the Connection is still being resolved waits for it
  (within the kill budget), or resolves it itself when :meth:`run` never started.
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
from airflow_provider_qwenbatch.client.cancel import (
    UNHURRIED_BUDGET,
    UNHURRIED_RETRIES,
    CancelOutcome,
    acancel_quietly,
)
from airflow_provider_qwenbatch.client.errors import (
    AuthenticationError,
    InvalidResponseError,
    NotFoundError,
    QwenBatchError,
)
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.compat import ensure_sync_sdk_portal
from airflow_provider_qwenbatch.exceptions import BatchEventError
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.summary import ProgressReporter, batch_summary, describe_end, describe_timeout
from airflow_provider_qwenbatch.triggers.client_pool import acquire_client, release_client
from airflow_provider_qwenbatch.triggers.kill_decision import (
    USER_ACTION_MARKER,
    TaskInstanceRef,
    Verdict,
    settle_kill,
    triggerer_marks_user_kills,
    warm_up,
)
from airflow_provider_qwenbatch.triggers.status_watch import StatusWatch, acquire_watch, release_watch

# The triggerer gives on_kill 30 s by default; a slow server still gets its cancel within it.
TRIGGER_KILL_BUDGET = 20.0
# Errors that polling again will not fix.
_FATAL = (AuthenticationError, NotFoundError, InvalidResponseError)
# Tolerate this many consecutive failed polls (each already retried by the client) before giving up.
MAX_FAILED_POLLS = 10
# Strong references to cancel tasks still running after on_kill was cut off: the event loop
# keeps only weak ones, and a collected task would drop the cancel mid-flight.
_PENDING_KILLS: set[asyncio.Task[CancelOutcome | None]] = set()
_PENDING_CONNECTS: set[asyncio.Task[Any]] = set()
_PENDING_CLOSES: set[asyncio.Future[None]] = set()
# on_kill waits this long for the decision and the cancel (Airflow's on_kill_timeout is 30 s);
# what is still running then goes on in its own task.
ON_KILL_WAIT = 25.0


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
        self._connecting: asyncio.Task[tuple[AsyncBatchClient, StatusWatch]] | None = None
        self._kill_task: asyncio.Task[CancelOutcome | None] | None = None
        self._cleaned_up = False

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

    def _start_connect(self) -> asyncio.Task[tuple[AsyncBatchClient, StatusWatch]]:
        """Resolve the Connection in a task of its own, once: run() and a kill may both wait for it."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            _PENDING_CONNECTS.add(self._connecting)
            self._connecting.add_done_callback(_connect_done)
        return self._connecting

    async def _connect(self) -> tuple[AsyncBatchClient, StatusWatch]:
        await ensure_sync_sdk_portal()
        settings = await QwenBatchHook(self.conn_id).aget_settings()
        # Set here, not by the caller: whoever awaits this task (run, or a kill) finds them.
        self._client, self._watch = acquire_client(settings), acquire_watch(settings)
        return self._client, self._watch

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until terminal (or the deadline), yield one event, return."""
        warm_up(TaskInstanceRef.of(self.task_instance))
        try:
            try:
                # Shielded: a kill cancelling run() here must not drop the Connection it needs.
                client, watch = await asyncio.shield(self._start_connect())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                yield self._event("error", f"cannot build a client for Connection {self.conn_id!r}: {exc}")
                return
            progress = ProgressReporter(self.log)
            failed_polls = 0
            # The wait before the next read is the watch's (one timer for all its readers, see
            # StatusWatch.read), not a sleep of each trigger between its polls.
            delay = 0.0
            while True:
                try:
                    batch = await watch.read(self.batch_id, within=self.poll_interval, delay=delay)
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
                    delay = self.poll_interval
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
                        # No kill clock here: the unhurried budget, with retries.
                        outcome = await acancel_quietly(
                            client,
                            self.batch_id,
                            budget=UNHURRIED_BUDGET,
                            retries=UNHURRIED_RETRIES,
                            logger=self.log,
                        )
                        timeout = self.deadline - batch.created_at if batch.created_at else None
                        yield self._event("timeout", describe_timeout(batch, timeout, outcome), batch)
                        return
                    wait = min(wait, left)
                # Up to 10% shorter, at random: triggers deferred together drift apart instead of
                # polling in lockstep bursts (the triggerer's loop and the API's rate limit both gain).
                delay = wait * random.uniform(0.9, 1.0)
        except asyncio.CancelledError as exc:
            if not triggerer_marks_user_kills() and self.cancel_on_kill:
                # Airflow 3.0-3.2 call no on_kill: the same decision and cancel, from here.
                await self._kill(exc.args[0] if exc.args else None)
            raise

    async def _kill(self, marker: object) -> None:
        """Decide whether the task was killed and cancel if so, in one referenced task; wait for it a while."""
        if self._kill_task is None:
            self._kill_task = asyncio.get_running_loop().create_task(self._decide_and_cancel(marker))
            _PENDING_KILLS.add(self._kill_task)
            self._kill_task.add_done_callback(self._after_kill)
        try:
            # Shielded: the triggerer cancelling on_kill again must not cancel the decision or request.
            await asyncio.wait_for(asyncio.shield(self._kill_task), ON_KILL_WAIT)
        except TimeoutError:
            self.log.info("Kill of batch %s still being decided in the background", self.batch_id)

    async def _decide_and_cancel(self, marker: object) -> CancelOutcome | None:
        what = f"batch {self.batch_id}"
        # Resolving the Connection (killed in the first seconds after deferring or a triggerer
        # restart) goes on while the task state is asked, so a kill does not wait for both in turn.
        connecting = self._start_connect() if self._client is None else None
        decision = await settle_kill(
            TaskInstanceRef.of(self.task_instance), marker, logger=self.log, what=what
        )
        if decision.verdict is not Verdict.USER_KILL:
            return None
        started = time.monotonic()
        if connecting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(connecting), TRIGGER_KILL_BUDGET / 2)
            except TimeoutError:
                self.log.warning(
                    "Connection %r not resolved within %g s of the kill; %s left running",
                    self.conn_id,
                    TRIGGER_KILL_BUDGET / 2,
                    what,
                )
                return None
            except Exception as exc:
                self.log.warning("Cannot resolve Connection %r to cancel %s: %s", self.conn_id, what, exc)
                return None
        client = self._client
        if client is None:  # cleanup released it meanwhile
            self.log.warning("No client left to cancel %s", what)
            return None
        budget = max(1.0, TRIGGER_KILL_BUDGET - (time.monotonic() - started))
        return await acancel_quietly(client, self.batch_id, budget=budget, logger=self.log)

    def _after_kill(self, task: asyncio.Task[CancelOutcome | None]) -> None:
        _PENDING_KILLS.discard(task)
        if self._cleaned_up:
            # cleanup() ran while the kill was in flight and left the client to us.
            closing = asyncio.ensure_future(self._release())
            _PENDING_CLOSES.add(closing)
            closing.add_done_callback(_PENDING_CLOSES.discard)

    async def on_kill(self) -> None:
        """A user killed the task, or Airflow says so on a reassignment: cancel the batch if the task left DEFERRED.

        Airflow >= 3.3 calls this after a cancel with the user-action marker, never on a restart.
        """
        if not self.cancel_on_kill:
            self.log.info("Task killed; batch %s left running (cancel_on_kill=False)", self.batch_id)
            return
        await self._kill(USER_ACTION_MARKER)

    async def cleanup(self) -> None:
        """Release the client; never cancels the batch (cleanup also runs on a triggerer restart)."""
        self._cleaned_up = True
        if self._kill_task is not None and not self._kill_task.done():
            return  # _after_kill releases the client once the kill is decided and sent
        await self._release()

    async def _release(self) -> None:
        connecting = self._connecting
        if connecting is not None and not connecting.done():
            connecting.cancel()  # a restart while resolving: it acquires nothing once cancelled
        watch, self._watch = self._watch, None
        client, self._client = self._client, None
        if watch is not None:
            await release_watch(watch)
        if client is not None:
            await release_client(client)


def _connect_done(task: asyncio.Task[Any]) -> None:
    _PENDING_CONNECTS.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: run() or the kill reports it, the loop need not
