"""Reading the status of many batches with few requests, for the triggers of one event loop.

A triggerer may run thousands of :class:`~airflow_provider_qwenbatch.triggers.batch.BatchStatusTrigger`.
One ``GET /batches/{id}`` per trigger per poll does not scale, for two measured reasons:

* each read costs the triggerer's event loop ~2 ms of CPU (httpx, parsing), so ~600 reads/s
  saturate it and every other trigger in the process waits (loop lag of hundreds of ms);
* the account's retrieve quota is 1,000/min: 1,000 triggers polling once a minute use all of it.

A page of ``GET /batches?status=<in flight>`` answers for up to 100 batches at once, and an
account has at most 1,000 unfinished batches, so one sweep of the in-flight list is at most
10 pages. The triggers of one event loop and Connection therefore share a :class:`StatusWatch`:

* a read is answered from a list page fetched after the read was asked, never an older one: a
  read asked during a sweep joins the sweep's remaining pages, and waits for the next sweep
  only when its batch was on a page already passed;
* a batch the sweep does not list (it ended, it was created after the sweep began, or the list
  is unavailable) is read on its own with ``GET /batches/{id}``: the end of a batch is always
  read from the batch itself, as without a watch;
* list requests are spaced to ``[qwenbatch] trigger_list_pages_per_minute`` (default 60; the
  account's list quota is 100/min); ``0`` turns listing off (one retrieve per read);
* a sweep never waits on a slow or throttled list for longer than its readers' poll budget:
  a list request is sent once (no retries) with a timeout of its readers' shortest poll
  interval (within :data:`LIST_TIMEOUT_MIN` .. :data:`LIST_TIMEOUT_MAX`); one that fails
  (a 429, a timeout, anything) pauses listing for :data:`LIST_PAUSE` seconds, or the server's
  ``Retry-After`` when longer (at most :data:`LIST_PAUSE_MAX`), and reads go to
  ``GET /batches/{id}`` meanwhile;
* those single reads are spaced to ``[qwenbatch] trigger_single_reads_per_minute`` (default
  500 per watch: half the account's retrieve quota of 1,000/min, so a fallback of a thousand
  readers cannot use up what the operators' own reads and cancels need);
* the sweep and the single reads run as tasks of the triggerer itself, in an empty
  :mod:`contextvars` context: a trigger's log context (Airflow binds ``trigger_id`` and the
  task instance with structlog contextvars, and routes each log line by them) would otherwise
  send the watch's warnings to the log of whichever task happened to start it.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.errors import RateLimitError
from airflow_provider_qwenbatch.client.models import Batch, BatchList
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings
from airflow_provider_qwenbatch.triggers.client_pool import (
    acquire_client,
    gate_of,
    release_client,
    settings_key,
)
from airflow_provider_qwenbatch.triggers.heap import (
    freeze_startup_heap,
    statuses_settled,
    trigger_ended,
    trigger_started,
)

log = logging.getLogger(__name__)

DEFAULT_PAGES_PER_MINUTE = 60.0
DEFAULT_SINGLES_PER_MINUTE = 500.0
# The largest page the list endpoint serves.
LIST_PAGE_SIZE = 100
# After a failed list request (sent once, see the module docs), read batches one by one for this
# long before listing again: each reader then meets its own outcome, as without a watch, and a
# list that keeps failing (a proxy without it, a used-up list quota) costs one request a minute.
LIST_PAUSE = 60.0
# A 429's Retry-After pauses listing for longer, up to this (a bogus one must not stop it for days).
LIST_PAUSE_MAX = 600.0
# One list request waits at most its readers' shortest poll interval, within these bounds (s):
# below 2 s a healthy but loaded server would time out; above 30 s the fallback comes too late.
LIST_TIMEOUT_MIN = 2.0
LIST_TIMEOUT_MAX = 30.0
_IN_FLIGHT = sorted(s.value for s in BatchStatus.in_flight())


@dataclass
class WatchStats:
    """What a watch has sent so far (for logs, tests and benchmarks).

    :param pages: list requests sent.
    :param singles: ``GET /batches/{id}`` reads sent.
    :param listed: reads answered from a list page.
    """

    pages: int = 0
    singles: int = 0
    listed: int = 0


# The readers of one batch in one sweep: one future (the usual case), or a list when several
# triggers read the same batch. Not a list each: every object a waiting read keeps alive for the
# seconds of a sweep outlives two young garbage collections and counts towards the next full one.
_Readers: TypeAlias = "asyncio.Future[Batch] | list[asyncio.Future[Batch]]"


def _each(readers: _Readers) -> list[asyncio.Future[Batch]]:
    return readers if isinstance(readers, list) else [readers]


@dataclass
class _Waiting:
    futures: dict[str, _Readers] = field(default_factory=dict)
    # The shortest poll interval among these readers: how long one list request may take.
    within: float = LIST_TIMEOUT_MAX

    def add(self, batch_id: str, future: asyncio.Future[Batch], within: float | None) -> None:
        known = self.futures.get(batch_id)
        if known is None:
            self.futures[batch_id] = future
        elif isinstance(known, list):
            known.append(future)
        else:
            self.futures[batch_id] = [known, future]
        if within is not None:
            self.within = min(self.within, within)

    def live(self) -> dict[str, _Readers]:
        """The waits whose reader is still waiting (a cancelled trigger cancels its future)."""
        out: dict[str, _Readers] = {}
        for batch_id, readers in self.futures.items():
            if isinstance(readers, list):
                alive = [f for f in readers if not f.done()]
                if alive:
                    out[batch_id] = alive[0] if len(alive) == 1 else alive
            elif not readers.done():
                out[batch_id] = readers
        return out


def _resolve(readers: _Readers, batch: Batch) -> None:
    for future in _each(readers):
        if not future.done():
            future.set_result(batch)


def _cancel(readers: _Readers) -> None:
    for future in _each(readers):
        future.cancel()


def _same_state(old: Batch, new: Batch) -> bool:
    """Whether two reads of a batch say the same (its fields and unknown extras; not the request id)."""
    return old.__dict__ == new.__dict__ and old.__pydantic_extra__ == new.__pydantic_extra__


def _spawn(coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
    """A task of the watch, not of the trigger that happened to start it: empty contextvars.

    ``contextvars.Context().run`` rather than ``create_task(context=...)``, which Python 3.10
    does not have: the task copies the (empty) context current when it is created.
    """
    return contextvars.Context().run(asyncio.get_running_loop().create_task, coro)


def _build_models() -> None:
    for model in (BatchList, Batch):
        if not model.__pydantic_complete__:
            model.model_rebuild(force=True)


async def _prepare_models() -> None:
    """Build the validators of the page and batch models in a worker thread (a no-op once built).

    The models build them on first use (``defer_build``: importing the provider in a DAG file
    stays cheap), so the first page a triggerer parses would build them on its loop: a stall
    of 40-100 ms of every trigger, measured.
    """
    if not (BatchList.__pydantic_complete__ and Batch.__pydantic_complete__):
        await asyncio.to_thread(_build_models)


class _Pacer:
    """Spaces calls at least ``60 / per_minute`` seconds apart (a token bucket of one token).

    Each caller reserves the next free slot before it sleeps, so callers arriving together go
    out one by one at the rate, in arrival order.

    :param per_minute: calls per minute; ``0`` or less does not space them.
    """

    def __init__(self, per_minute: float) -> None:
        self._gap = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next_at = 0.0

    async def wait(self) -> None:
        """Return when this caller's slot has come."""
        now = asyncio.get_running_loop().time()
        at = max(now, self._next_at)
        self._next_at = at + self._gap
        if at > now:
            await asyncio.sleep(at - now)


class StatusWatch:
    """Answers batch status reads of many triggers with shared list pages (see the module docs).

    :param client: the async client to send with.
    :param gate: bounds this watch's requests in flight on the client.
    :param pages_per_minute: list requests allowed per minute; ``0`` reads every batch on its own.
    :param singles_per_minute: ``GET /batches/{id}`` reads allowed per minute.
    """

    def __init__(
        self,
        client: AsyncBatchClient,
        gate: asyncio.Semaphore,
        pages_per_minute: float,
        singles_per_minute: float = DEFAULT_SINGLES_PER_MINUTE,
    ) -> None:
        self.client = client
        self.stats = WatchStats()
        self.users = 0
        self._gate = gate
        self._page_gap = 60.0 / pages_per_minute if pages_per_minute > 0 else None
        self._waiting = _Waiting()
        self._sweeper: asyncio.Task[None] | None = None
        # Strong references: the loop keeps only weak ones to tasks.
        self._singles: set[asyncio.Task[None]] = set()
        self._next_page_at = 0.0
        self._list_paused_until = 0.0
        self._singles_pacer = _Pacer(singles_per_minute)
        # Reads asked to start later (``read(..., delay=)``): (when, seq, batch id, future, within),
        # a heap. The watch admits them when due, with one timer of its own, instead of each
        # trigger keeping a sleep (coroutine, future, timer handle, context) alive between polls.
        self._due: list[tuple[float, int, str, asyncio.Future[Batch], float | None]] = []
        self._seq = 0
        # Set when a read arrives while the sweeper sleeps until the next due read.
        self._wake: asyncio.Future[None] | None = None
        # The batches last listed, by id, in two generations: a page that shows a batch as it was
        # hands its reader the object it already holds, and the page's own copies die with it
        # (young) instead of each reader keeping a new one (several tracked objects) alive.
        self._known: dict[str, Batch] = {}
        self._known_before: dict[str, Batch] = {}
        self._known_since = 0.0
        self._longest_poll = 0.0
        # When a page last gave a batch new to this watch to its readers (time.monotonic()):
        # a trigger's first status, from which on it keeps more state (see heap.statuses_settled).
        self._first_listed_at = 0.0

    def read(self, batch_id: str, within: float | None = None, delay: float = 0.0) -> asyncio.Future[Batch]:
        """The batch as read after this call began (or ``delay`` seconds after it); await the future.

        A future, not a coroutine: a reader waits seconds for its sweep, and a coroutine per read
        would be one more object outliving the young garbage collections.

        :param batch_id: the batch.
        :param within: the reader's poll interval: one list request of its sweep may take this
            long (see the module docs) before the watch reads batches on their own.
        :param delay: seconds to wait before the read (a trigger's sleep between two polls).
        :raises airflow_provider_qwenbatch.client.errors.QwenBatchError: (from the future) what
            reading the batch on its own raised.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Batch] = loop.create_future()
        if within is not None:
            self._longest_poll = max(self._longest_poll, within)
        if delay > 0:
            self._seq += 1
            heapq.heappush(self._due, (loop.time() + delay, self._seq, batch_id, future, within))
            earliest = self._due[0][3] is future
        else:
            self._waiting.add(batch_id, future, within)
            earliest = True
        if earliest and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)  # the sweeper sleeps until a later read: it must look again
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = _spawn(self._sweep_while_waited())
        return future

    def _admit_due(self) -> float | None:
        """Move the due delayed reads to the next sweep; return when the next one is due (``None``: none)."""
        now = asyncio.get_running_loop().time()
        due = self._due
        while due and due[0][0] <= now:
            _, _, batch_id, future, within = heapq.heappop(due)
            if not future.done():
                self._waiting.add(batch_id, future, within)
        return due[0][0] if due else None

    async def _until_due(self, at: float) -> None:
        """Sleep until ``at``, or until a read arrives."""
        wake = self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((wake,), timeout=max(0.0, at - asyncio.get_running_loop().time()))
        finally:
            self._wake = None

    async def _sweep_while_waited(self) -> None:
        await _prepare_models()
        while True:
            next_due = self._admit_due()
            if not self._waiting.futures:
                if next_due is None:
                    return
                await self._until_due(next_due)
                continue
            if self._listing():
                # Wait for the list budget BEFORE taking the readers: reads asked meanwhile join
                # this sweep, since its first page is not asked yet.
                await self._wait_turn()
                self._admit_due()
            taken = self._waiting
            waiting = taken.live()
            # Reads asked from now on join this sweep's pages still to come (_join_late), or the next.
            self._waiting = _Waiting()
            if not waiting:
                continue
            try:
                unlisted = await self._sweep(waiting, taken.within)
            except asyncio.CancelledError:
                # aclose(): nobody will answer these readers any more.
                for readers in waiting.values():
                    _cancel(readers)
                raise
            self._forget_old()
            for batch_id, readers in unlisted.items():
                # Created from the sweeper, so in its empty context too.
                task = asyncio.get_running_loop().create_task(self._read_one(batch_id, readers))
                self._singles.add(task)
                task.add_done_callback(self._singles.discard)

    def _forget_old(self) -> None:
        """Drop the batches not listed for two generations (each at least a poll interval long)."""
        now = asyncio.get_running_loop().time()
        if now - self._known_since >= max(LIST_PAUSE, 2 * self._longest_poll):
            self._known_before, self._known = self._known, {}
            self._known_since = now

    def _as_known(self, batch: Batch) -> Batch:
        """The object already handed out for this state of the batch, or this one (remembered)."""
        old = self._known.get(batch.id) or self._known_before.get(batch.id)
        if old is not None and _same_state(old, batch):
            batch = old
        self._known[batch.id] = batch
        return batch

    async def _sweep(self, waiting: dict[str, _Readers], within: float) -> dict[str, _Readers]:
        """Answer what the in-flight list shows, page by page; return the waits it did not answer."""
        loop = asyncio.get_running_loop()
        if self._page_gap is None or not self._listing():
            return waiting
        after: str | None = None
        # Readers who joined after the first page: one whose batch was on a page already passed
        # waits for the next sweep, not for a read of its own (its batch need not have ended).
        late: set[str] = set()
        # Paged on while a reader who was there at the first page is unanswered: late readers
        # ride along but never lengthen a sweep (on an account with more batches in flight than
        # readers, they would carry it through every page, and the next sweep a minute late).
        while len(waiting) > len(late & waiting.keys()):
            # Spaced one by one, not per sweep: the list quota may be enforced per second.
            await self._wait_turn()
            if after is not None:
                within = min(within, self._join_late(waiting, late))
            timeout = min(LIST_TIMEOUT_MAX, max(LIST_TIMEOUT_MIN, within))
            self._next_page_at = loop.time() + self._page_gap
            try:
                async with self._gate:
                    self.stats.pages += 1
                    # Once, bounded: the client's retries (Retry-After up to minutes) would hold
                    # every reader of the watch, and their deadline cancels, that long.
                    # httpx's timeout bounds each read of the socket, not the whole answer.
                    page = await asyncio.wait_for(
                        self.client.list_batches(
                            after=after,
                            limit=LIST_PAGE_SIZE,
                            status=_IN_FLIGHT,
                            timeout=timeout,
                            max_retries=0,
                        ),
                        timeout,
                    )
            except Exception as exc:
                # Anything (not only QwenBatchError): a sweep that died would leave its readers
                # waiting forever; read one by one instead, which gives each reader its own outcome.
                pause = LIST_PAUSE
                if isinstance(exc, RateLimitError) and exc.retry_after is not None:
                    pause = min(LIST_PAUSE_MAX, max(LIST_PAUSE, exc.retry_after))
                self._list_paused_until = loop.time() + pause
                log.warning(
                    "Listing in-flight batches failed (%s); reading each batch on its own for %.0f s",
                    str(exc) or type(exc).__name__,
                    pause,
                )
                return waiting
            after, more = self._answer(page, waiting, after)
            # Not kept while waiting for the next turn: a page (100 batches) alive across that
            # second outlives the young collections and counts towards the next full one.
            del page
            if not more:
                break
        for batch_id in late & waiting.keys():
            for future in _each(waiting.pop(batch_id)):
                self._waiting.add(batch_id, future, within)
        return waiting

    def _join_late(self, waiting: dict[str, _Readers], late: set[str]) -> float:
        """Add the reads asked since the sweep began to its remaining pages; return their shortest poll interval.

        A page fetched now is fetched after they were asked, so it may answer them. Without
        this, a sweep of n pages made every reader who asked after its first page wait for the
        whole sweep and the next one: at 5,000 triggers (50 pages at 60 a minute) the first
        sweep answered only the first triggers started, whose (oldest) batches were on its last
        page, and no trigger had a status for the first minute.
        """
        self._admit_due()
        joined, self._waiting = self._waiting, _Waiting()
        for batch_id, readers in joined.live().items():
            known = waiting.get(batch_id)
            if known is None:
                waiting[batch_id] = readers
                late.add(batch_id)
            else:
                waiting[batch_id] = _each(known) + _each(readers)
        return joined.within

    def _answer(
        self, page: BatchList, waiting: dict[str, _Readers], after: str | None
    ) -> tuple[str | None, bool]:
        """Resolve the readers a page shows in flight; return the next cursor and whether to go on."""
        for batch in page.batches:
            readers = waiting.get(batch.id)
            # A terminal status is read from the batch itself (a list that ignored the filter).
            if readers is not None and not batch.status.is_terminal:
                del waiting[batch.id]
                self.stats.listed += 1
                if batch.id not in self._known and batch.id not in self._known_before:
                    self._first_listed_at = time.monotonic()
                _resolve(readers, self._as_known(batch))
        if not page.has_more or not page.last_id or page.last_id == after:
            return after, False
        return page.last_id, True

    def _listing(self) -> bool:
        """Whether reads go to list pages now (listing is on and not paused after a failure)."""
        return self._page_gap is not None and asyncio.get_running_loop().time() >= self._list_paused_until

    async def _wait_turn(self) -> None:
        delay = self._next_page_at - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        # The last page's readers have taken their statuses by now: what they keep is long-lived.
        statuses_settled(self._first_listed_at)

    async def _read_one(self, batch_id: str, readers: _Readers) -> None:
        try:
            # Within this watch's share of the account's retrieve quota (1,000/min).
            await self._singles_pacer.wait()
            async with self._gate:
                self.stats.singles += 1
                batch = await self.client.retrieve_batch(batch_id)
        except asyncio.CancelledError:
            _cancel(readers)
            raise
        except Exception as exc:
            # Handed to each reader, which decides (fatal, or one more failed poll).
            for future in _each(readers):
                if not future.done():
                    future.set_exception(exc)
        else:
            _resolve(readers, batch)

    async def aclose(self) -> None:
        """Stop sweeping and cancel the reads in flight."""
        tasks = [t for t in (self._sweeper, *self._singles) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for readers in self._waiting.live().values():
            _cancel(readers)
        for *_, future, _within in self._due:
            future.cancel()
        self._due.clear()
        self._known.clear()
        self._known_before.clear()


# Per event loop, per Connection settings: the watch its triggers share.
_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], StatusWatch]] = (
    weakref.WeakKeyDictionary()
)


def _rate(option: str, default: float, minimum_exclusive: bool) -> float:
    from airflow_provider_qwenbatch.compat import conf

    raw = conf.get("qwenbatch", option, fallback=None)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or (minimum_exclusive and value == 0):
        log.warning(
            "[qwenbatch] %s = %r is not a number %s 0; using %s",
            option,
            raw,
            ">" if minimum_exclusive else ">=",
            default,
        )
        return default
    return value


def pages_per_minute() -> float:
    """``[qwenbatch] trigger_list_pages_per_minute``; the default when unset or not a number >= 0."""
    return _rate("trigger_list_pages_per_minute", DEFAULT_PAGES_PER_MINUTE, minimum_exclusive=False)


def singles_per_minute() -> float:
    """``[qwenbatch] trigger_single_reads_per_minute``; the default when unset or not a number > 0."""
    return _rate("trigger_single_reads_per_minute", DEFAULT_SINGLES_PER_MINUTE, minimum_exclusive=True)


def acquire_watch(settings: ConnectionSettings) -> StatusWatch:
    """The watch shared by this event loop's triggers with these settings; give it back with :func:`release_watch`.

    :param settings: the resolved Connection.
    """
    watches = _WATCHES.setdefault(asyncio.get_running_loop(), {})
    key = settings_key(settings)
    watch = watches.get(key)
    if watch is None:
        # The first watch of the process: Airflow and the triggerer are loaded by now.
        freeze_startup_heap()
        client = acquire_client(settings)
        gate = gate_of(client) or asyncio.Semaphore(1)
        watch = watches[key] = StatusWatch(client, gate, pages_per_minute(), singles_per_minute())
    watch.users += 1
    trigger_started()
    return watch


async def release_watch(watch: StatusWatch) -> None:
    """Give back a watch from :func:`acquire_watch`; the last user stops it and releases its client.

    :param watch: the watch.
    """
    watch.users -= 1
    trigger_ended()
    if watch.users > 0:
        return
    watches = _WATCHES.get(asyncio.get_running_loop(), {})
    for key, known in list(watches.items()):
        if known is watch:
            del watches[key]
    await watch.aclose()
    await release_client(watch.client)


def running_watches() -> list[StatusWatch]:
    """The watches alive in the running event loop (for monitoring, tests and benchmarks)."""
    return list(_WATCHES.get(asyncio.get_running_loop(), {}).values())
