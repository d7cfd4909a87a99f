"""The connect / kill / cleanup life of a trigger that watches batches: one implementation for every such trigger.

Kill semantics (measured on Airflow 3.3.2, see the README):

* A user marking the deferred task (or its run) failed cancels ``run()`` with
  ``CancelledError("__airflow_user_action__")``, then awaits :meth:`~BatchWatchTrigger.on_kill`,
  then :meth:`~BatchWatchTrigger.cleanup`. The remote cancel lives in ``on_kill``.
* Airflow 3.3.x does the same when the trigger was reassigned to another triggerer (this
  one's heartbeat lapsed: a GC pause, a slow DB): the other triggerer still watches the
  batches. So ``on_kill`` cancels only when the task instance really left DEFERRED, asked
  through the triggerer's supervisor (:mod:`.kill_decision`, one rule for every kill path). The
  answer is awaited for up to 3 s; without one the batches are left running and the state asked
  again for up to 60 s in the background, cancelling as soon as it proves a kill.
* A triggerer shutdown or restart cancels ``run()`` without that marker and only calls
  ``cleanup``: the batches must keep running, so ``cleanup`` never cancels them.
* Airflow 3.0-3.2 call no ``on_kill``: ``run()`` itself takes the same decision when it is
  cancelled (:func:`~.kill_decision.triggerer_marks_user_kills`).
* The triggerer re-cancels a trigger about once a second, cutting ``on_kill`` short; the
  decision and the cancel requests run as their own task, shielded and referenced, so they
  complete anyway.
* The Connection is resolved and the client built at the start of ``run()`` (the first
  task-SDK call from a trigger can take ~10 s, too long for a kill path), and the task state
  query is warmed there too. A kill while the Connection is still being resolved waits for it
  (within the kill budget), or resolves it itself when ``run()`` never started.
* Triggers of one event loop with the same settings share async clients (see
  :mod:`.client_pool`) and one :class:`~.status_watch.StatusWatch` (see :mod:`.status_watch`);
  those that start together share one Connection lookup (see :mod:`.connection_cache`).
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.errors import AuthenticationError, InvalidResponseError, NotFoundError
from airflow_provider_qwenbatch.compat import ensure_sync_sdk_portal
from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings, QwenBatchHook
from airflow_provider_qwenbatch.triggers.client_pool import acquire_client, release_client
from airflow_provider_qwenbatch.triggers.connection_cache import resolve, reusable
from airflow_provider_qwenbatch.triggers.kill_decision import (
    USER_ACTION_MARKER,
    TaskInstanceRef,
    Verdict,
    settle_kill,
    triggerer_marks_user_kills,
    warm_up,
)
from airflow_provider_qwenbatch.triggers.status_watch import StatusWatch, acquire_watch, release_watch

# The triggerer gives on_kill 30 s by default; a slow server still gets its cancels within it.
TRIGGER_KILL_BUDGET = 20.0
# Errors that polling again will not fix.
FATAL_POLL_ERRORS = (AuthenticationError, NotFoundError, InvalidResponseError)
# Tolerate this many consecutive failed polls (each already retried by the client) before giving up.
MAX_FAILED_POLLS = 10
# on_kill waits this long for the decision and the cancels (Airflow's on_kill_timeout is 30 s);
# what is still running then goes on in its own task.
ON_KILL_WAIT = 25.0
# Strong references to kill tasks still running after on_kill was cut off: the event loop
# keeps only weak ones, and a collected task would drop a cancel mid-flight.
_PENDING_KILLS: set[asyncio.Task[Any]] = set()
_PENDING_CONNECTS: set[asyncio.Task[Any]] = set()
_PENDING_CLOSES: set[asyncio.Future[None]] = set()


class BatchWatchTrigger(BaseTrigger):
    """A trigger that waits for batches through the shared watch and cancels them on a real user kill.

    Subclasses say what they watch and how to wait and cancel (:meth:`_what`, :meth:`_connect_failed`,
    :meth:`_wait`, :meth:`_cancel_for_kill`); the connect, kill and cleanup rules live here only.

    :param conn_id: the ``qwen_batch`` Connection id.
    :param cancel_on_kill: cancel the batches when a user kills the task.
    """

    def __init__(self, conn_id: str, cancel_on_kill: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conn_id = conn_id
        self.cancel_on_kill = cancel_on_kill
        self._client: AsyncBatchClient | None = None
        self._watch: StatusWatch | None = None
        self._connecting: asyncio.Future[tuple[AsyncBatchClient, StatusWatch]] | None = None
        self._kill_task: asyncio.Task[Any] | None = None
        self._cleaned_up = False

    @abc.abstractmethod
    def _what(self) -> str:
        """What a kill would cancel, for the log (e.g. ``"batch batch_1"``)."""

    @abc.abstractmethod
    def _connect_failed(self, message: str) -> TriggerEvent:
        """The ``error`` event sent when the Connection cannot be resolved or the client built.

        :param message: what went wrong.
        """

    @abc.abstractmethod
    async def _wait(self, client: AsyncBatchClient, watch: StatusWatch) -> TriggerEvent:
        """Poll until the end (or the deadline) and return the one event to send.

        :param client: the shared client (for cancels).
        :param watch: the shared status watch (for reads).
        """

    @abc.abstractmethod
    async def _cancel_for_kill(self, client: AsyncBatchClient, budget: float) -> object:
        """Cancel what a proven user kill must cancel, within ``budget`` seconds, never raising.

        :param client: the shared client.
        :param budget: seconds left of :data:`TRIGGER_KILL_BUDGET`.
        """

    def _start_connect(self) -> asyncio.Future[tuple[AsyncBatchClient, StatusWatch]]:
        """Resolve the Connection once: run() and a kill may both wait for it.

        Resolved moments ago in this loop (a triggerer starting many triggers), it is taken
        at once and the future returned is already done; otherwise it is resolved in a task
        of its own (see :mod:`.connection_cache`).
        """
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            settings = reusable(self.conn_id)
            if settings is not None:
                self._connecting = loop.create_future()
                self._connecting.set_result(self._acquire(settings))
            else:
                self._connecting = task = loop.create_task(self._connect())
                _PENDING_CONNECTS.add(task)
                task.add_done_callback(_connect_done)
        return self._connecting

    async def _connect(self) -> tuple[AsyncBatchClient, StatusWatch]:
        return self._acquire(await resolve(self.conn_id, self._lookup))

    async def _lookup(self) -> ConnectionSettings:
        # Our own task: the triggerer opened a sync SDK portal for the trigger's task only.
        await ensure_sync_sdk_portal()
        return await QwenBatchHook(self.conn_id).aget_settings()

    def _acquire(self, settings: ConnectionSettings) -> tuple[AsyncBatchClient, StatusWatch]:
        # Set here, not by the caller: whoever awaits the connect (run, or a kill) finds them.
        self._client, self._watch = acquire_client(settings), acquire_watch(settings)
        return self._client, self._watch

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Connect, wait for the end (or the deadline), yield one event, return."""
        warm_up(TaskInstanceRef.of(self.task_instance))
        try:
            try:
                # Shielded: a kill cancelling run() here must not drop the Connection it needs.
                client, watch = await asyncio.shield(self._start_connect())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                yield self._connect_failed(f"cannot build a client for Connection {self.conn_id!r}: {exc}")
                return
            yield await self._wait(client, watch)
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
            # Shielded: the triggerer cancelling on_kill again must not cancel the decision or requests.
            await asyncio.wait_for(asyncio.shield(self._kill_task), ON_KILL_WAIT)
        except TimeoutError:
            self.log.info("Kill of %s still being decided in the background", self._what())

    async def _decide_and_cancel(self, marker: object) -> object:
        what = self._what()
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
        return await self._cancel_for_kill(client, budget)

    def _after_kill(self, task: asyncio.Task[Any]) -> None:
        _PENDING_KILLS.discard(task)
        if self._cleaned_up:
            # cleanup() ran while the kill was in flight and left the client to us.
            closing = asyncio.ensure_future(self._release())
            _PENDING_CLOSES.add(closing)
            closing.add_done_callback(_PENDING_CLOSES.discard)

    async def on_kill(self) -> None:
        """A user killed the task, or Airflow says so on a reassignment: cancel if the task left DEFERRED.

        Airflow >= 3.3 calls this after a cancel with the user-action marker, never on a restart.
        """
        if not self.cancel_on_kill:
            self.log.info("Task killed; %s left running (cancel_on_kill=False)", self._what())
            return
        await self._kill(USER_ACTION_MARKER)

    async def cleanup(self) -> None:
        """Release the client; never cancels a batch (cleanup also runs on a triggerer restart)."""
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


def _connect_done(task: asyncio.Future[Any]) -> None:
    _PENDING_CONNECTS.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: run() or the kill reports it, the loop need not
