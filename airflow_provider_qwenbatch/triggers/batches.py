"""BatchesStatusTrigger: one deferred task waits for all of its shards' batches in one trigger.

A sharded job (issue 12) has up to ``max_active_batches`` batches unfinished at once. One
trigger per batch would multiply the triggerer's rows, tasks and kill decisions by that; this
trigger watches them all, with the same rules as
:class:`~airflow_provider_qwenbatch.triggers.batch.BatchStatusTrigger` (they share
:mod:`._lifecycle`): it connects at the start of ``run()``, cancels only on a proven user kill
(never on a restart or a reassignment), and its cleanup never cancels.

* Each poll reads every unfinished batch through the shared
  :class:`~.status_watch.StatusWatch`, concurrently: a page of the in-flight list answers up
  to 100 of them in one request, and each end is read from the batch itself.
* A user kill cancels every unfinished batch concurrently (the shared client's connection
  pool queues them) within :data:`~._lifecycle.TRIGGER_KILL_BUDGET`: sequential cancels of 100
  batches would not fit in it.
* The deadline cancels every unfinished batch with the unhurried budget, then sends ``timeout``.
* Progress is logged whenever it changes: ``N/M batches done; lines done/total (pct%), failed F``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from airflow.triggers.base import TriggerEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.cancel import (
    UNHURRIED_BUDGET,
    UNHURRIED_RETRIES,
    CancelAction,
    CancelOutcome,
    acancel_quietly,
)
from airflow_provider_qwenbatch.client.errors import QwenBatchError
from airflow_provider_qwenbatch.client.logs import LoggerLike
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.exceptions import BatchEventError
from airflow_provider_qwenbatch.hooks.qwen_batch import QwenBatchHook
from airflow_provider_qwenbatch.summary import batch_summary, describe_end, describe_lines
from airflow_provider_qwenbatch.triggers._lifecycle import (
    FATAL_POLL_ERRORS,
    MAX_FAILED_POLLS,
    BatchWatchTrigger,
)
from airflow_provider_qwenbatch.triggers.status_watch import StatusWatch

# Ids named in a log line or event message; the rest are counted (a job may have hundreds).
_SHOWN_IDS = 5
_TERMINAL = frozenset(s.value for s in BatchStatus.terminal())


class BatchesEventPayload(BaseModel):
    """The event :class:`BatchesStatusTrigger` yields, validated before it is trusted.

    :param status: ``done`` (every batch ended, or with ``wake_on_first_end`` at least one),
        ``timeout`` (the deadline passed; the unfinished ones were cancelled) or ``error``.
    :param batch_ids: every watched batch, in the trigger's order.
    :param ended: the watched batches seen terminal, in the same order.
    :param batches: ``batch_summary`` of each batch read, by id.
    :param message: what happened, in words.
    """

    model_config = ConfigDict(defer_build=True)

    status: Literal["done", "timeout", "error"]
    batch_ids: list[str] = Field(min_length=1)
    ended: list[str]
    batches: dict[str, dict[str, Any]]
    message: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> BatchesEventPayload:
        watched = set(self.batch_ids)
        strangers = [i for i in (*self.ended, *self.batches) if i not in watched]
        if strangers:
            raise ValueError(f"ids not among batch_ids: {strangers[:_SHOWN_IDS]}")
        for batch_id, summary in self.batches.items():
            if summary.get("batch_id") != batch_id:
                raise ValueError(f"batches[{batch_id!r}] is the summary of {summary.get('batch_id')!r}")
        for batch_id in self.ended:
            status = self.batches.get(batch_id, {}).get("status")
            if status not in _TERMINAL:
                raise ValueError(f"ended batch {batch_id!r} has no terminal summary (status {status!r})")
        if self.status == "done" and not self.ended:
            raise ValueError("a 'done' event with no ended batch")
        return self

    @property
    def unfinished(self) -> list[str]:
        """The watched batches not seen terminal, in order."""
        ended = set(self.ended)
        return [i for i in self.batch_ids if i not in ended]


def parse_batches_event(event: Any) -> BatchesEventPayload:
    """Validate a :class:`BatchesStatusTrigger` event payload.

    :param event: what the trigger sent.
    :raises BatchEventError: when it is not a valid payload.
    """
    try:
        return BatchesEventPayload.model_validate(event)
    except ValidationError as exc:
        # Where and what only: an error's "input" may be the whole event (hundreds of summaries).
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise BatchEventError(f"unexpected trigger event {str(event)[:200]!r}: {problems}") from None


def _some(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def _totals(batches: Iterable[Batch]) -> tuple[int, int, int]:
    """Lines done (completed or failed), lines in total, and lines failed, summed over batches."""
    done = total = failed = 0
    for batch in batches:
        counts = batch.counts
        done, total, failed = done + counts.done, total + counts.total, failed + counts.failed
    return done, total, failed


def _lines(batches: Iterable[Batch]) -> str:
    # The one rendering of a job's lines, shared with the worker's wait (summary.describe_lines).
    return describe_lines(list(batches))


class BatchesProgress:
    """Logs ``N/M batches done; lines done/total (pct%), failed F`` whenever one of those changes.

    :param logger: the task or trigger log.
    :param count: how many batches the job watches (``M``).
    """

    def __init__(self, logger: LoggerLike, count: int) -> None:
        self.logger = logger
        self.count = count
        self._last: tuple[int, int, int, int] | None = None

    def update(self, batches: Iterable[Batch]) -> bool:
        """Log the progress if it changed since the last call; return whether it did.

        :param batches: the latest read of each batch read so far.
        """
        batches = list(batches)
        ended = sum(1 for b in batches if b.status.is_terminal)
        key = (ended, *_totals(batches))
        if key == self._last:
            return False
        self._last = key
        self.logger.info("%d/%d batches done; %s", ended, self.count, _lines(batches))
        return True


def describe_outcomes(outcomes: Sequence[CancelOutcome]) -> str:
    """One line for many cancels: counts per action, and each one that failed with its request id.

    :param outcomes: what each cancel did.
    """
    counts = Counter(o.action.value for o in outcomes)
    text = ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing to cancel"
    failed = [o for o in outcomes if o.action is CancelAction.FAILED]
    if failed:
        text += "; failed: " + "; ".join(
            f"{o.batch_id} (x-request-id={o.request_id or 'none'}): {o.detail}" for o in failed[:_SHOWN_IDS]
        )
    return text


class BatchesStatusTrigger(BatchWatchTrigger):
    """Polls many batches until all (or, with ``wake_on_first_end``, one) are terminal; yields one event.

    Event payload: see :class:`BatchesEventPayload` (validate it with :func:`parse_batches_event`).

    :param batch_ids: the batches to wait for (duplicates are watched once).
    :param conn_id: the ``qwen_batch`` Connection id.
    :param poll_interval: seconds between polls (each reads every unfinished batch once).
    :param deadline: Unix time after which every unfinished batch is cancelled and a ``timeout``
        event sent.
    :param cancel_on_kill: cancel every unfinished batch when a user kills the task.
    :param wake_on_first_end: send ``done`` as soon as at least one batch is terminal (the
        operator then creates more shards and defers again). Pass only unfinished batches then:
        one already terminal wakes the trigger at its first poll.
    """

    def __init__(
        self,
        batch_ids: Sequence[str],
        conn_id: str = QwenBatchHook.default_conn_name,
        poll_interval: float = 60.0,
        deadline: float | None = None,
        cancel_on_kill: bool = True,
        wake_on_first_end: bool = False,
    ) -> None:
        super().__init__(conn_id, cancel_on_kill)
        if isinstance(batch_ids, str):
            raise TypeError(f"batch_ids must be a list of batch ids, not the string {batch_ids!r}")
        self.batch_ids = list(dict.fromkeys(batch_ids))
        if not self.batch_ids:
            raise ValueError("BatchesStatusTrigger needs at least one batch id")
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.wake_on_first_end = wake_on_first_end
        # The latest read of each batch: what the events carry and what a kill leaves alone.
        self._last: dict[str, Batch] = {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs: ids and settings only, never a credential."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "batch_ids": list(self.batch_ids),
                "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "cancel_on_kill": self.cancel_on_kill,
                "wake_on_first_end": self.wake_on_first_end,
            },
        )

    def __repr__(self) -> str:
        return (
            f"BatchesStatusTrigger({len(self.batch_ids)} batches, first {self.batch_ids[0]!r}, "
            f"conn_id={self.conn_id!r})"
        )

    def ended(self) -> list[str]:
        """The watched batches seen terminal so far, in order."""
        return [i for i in self.batch_ids if i in self._last and self._last[i].status.is_terminal]

    def unfinished(self) -> list[str]:
        """The watched batches not seen terminal (never read counts as unfinished), in order."""
        return [i for i in self.batch_ids if i not in self._last or not self._last[i].status.is_terminal]

    def _event(self, status: str, message: str) -> TriggerEvent:
        payload: dict[str, Any] = {
            "status": status,
            "batch_ids": list(self.batch_ids),
            "ended": self.ended(),
            "batches": {i: batch_summary(self._last[i]) for i in self.batch_ids if i in self._last},
            "message": message,
        }
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    def _what(self) -> str:
        unfinished = self.unfinished()
        return f"{len(unfinished)} unfinished of {len(self.batch_ids)} batches ({_some(unfinished)})"

    def _connect_failed(self, message: str) -> TriggerEvent:
        return self._event("error", message)

    async def _read(self, watch: StatusWatch, batch_id: str) -> Batch | QwenBatchError:
        try:
            return await watch.read(batch_id, within=self.poll_interval)
        except QwenBatchError as exc:
            return exc  # one failed read must not hide the others' answers

    async def _wait(self, client: AsyncBatchClient, watch: StatusWatch) -> TriggerEvent:
        """Poll every unfinished batch until the end (or the deadline); the one event to send."""
        progress = BatchesProgress(self.log, len(self.batch_ids))
        failed_polls: dict[str, int] = {}
        while True:
            pending = self.unfinished()
            results = await asyncio.gather(*(self._read(watch, i) for i in pending))
            error: str | None = None
            for batch_id, result in zip(pending, results, strict=True):
                if isinstance(result, FATAL_POLL_ERRORS):
                    error = error or f"cannot read batch {batch_id}: {result}"
                elif isinstance(result, QwenBatchError):
                    failed = failed_polls[batch_id] = failed_polls.get(batch_id, 0) + 1
                    self.log.warning("Poll %d of batch %s failed: %s", failed, batch_id, result)
                    if failed >= MAX_FAILED_POLLS:
                        error = error or f"{failed} polls of batch {batch_id} failed: {result}"
                else:
                    failed_polls.pop(batch_id, None)
                    self._last[batch_id] = result
                    if result.status.is_terminal:
                        self.log.info("%s", describe_end(result))
            progress.update(self._last.values())
            if error is not None:
                return self._event("error", error)
            ended = self.ended()
            if len(ended) == len(self.batch_ids) or (self.wake_on_first_end and ended):
                return self._event("done", self._describe_done(ended))
            wait = self.poll_interval
            if self.deadline is not None:
                left = self.deadline - time.time()
                if left <= 0:
                    return await self._cancel_at_deadline(client, self.deadline)
                wait = min(wait, left)
            # Up to 10% shorter, at random, as BatchStatusTrigger: deferred tasks drift apart.
            await asyncio.sleep(wait * random.uniform(0.9, 1.0))

    def _describe_done(self, ended: list[str]) -> str:
        statuses = Counter(self._last[i].status.value for i in ended)
        how = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        return f"{len(ended)}/{len(self.batch_ids)} batches ended ({how}); {_lines(self._last.values())}"

    async def _cancel_at_deadline(self, client: AsyncBatchClient, deadline: float) -> TriggerEvent:
        unfinished = self.unfinished()
        # No kill clock here: the unhurried budget, with retries; all at once, not one after another.
        outcomes = await asyncio.gather(
            *(
                acancel_quietly(
                    client, i, budget=UNHURRIED_BUDGET, retries=UNHURRIED_RETRIES, logger=self.log
                )
                for i in unfinished
            )
        )
        created = [b.created_at for b in self._last.values() if b.created_at]
        after = f"after the timeout of {deadline - min(created):.0f}s" if created else "at the deadline"
        return self._event(
            "timeout",
            f"{len(unfinished)} of {len(self.batch_ids)} batches still unfinished {after} "
            f"({_some(unfinished)}); cancel: {describe_outcomes(outcomes)}",
        )

    async def _cancel_for_kill(self, client: AsyncBatchClient, budget: float) -> list[CancelOutcome]:
        unfinished = self.unfinished()
        # Concurrently: one by one, a hundred batches would not fit in the kill budget.
        outcomes = await asyncio.gather(
            *(acancel_quietly(client, i, budget=budget, logger=self.log) for i in unfinished)
        )
        self.log.info("Kill: cancel of %d unfinished batches: %s", len(outcomes), describe_outcomes(outcomes))
        return list(outcomes)
