"""Reading the status of many batches with few requests, for the triggers of one event loop.

A triggerer may run thousands of :class:`~airflow_provider_qwenbatch.triggers.batch.BatchStatusTrigger`.
One ``GET /batches/{id}`` per trigger per poll does not scale, for two measured reasons:

* each read costs the triggerer's event loop ~2 ms of CPU (httpx, parsing), so ~600 reads/s
  saturate it and every other trigger in the process waits (loop lag of hundreds of ms);
* the account's retrieve quota is 1,000/min: 1,000 triggers polling once a minute use all of it.

A page of ``GET /batches?status=<in flight>`` answers for up to 100 batches at once, and an
account has at most 1,000 unfinished batches, so one sweep of the in-flight list is at most
10 pages. The triggers of one event loop and Connection therefore share a :class:`StatusWatch`:

* a read is answered from a list page fetched after the read was asked, never an older one;
* a batch the sweep does not list (it ended, it was created after the sweep began, or the list
  is unavailable) is read on its own with ``GET /batches/{id}``: the end of a batch is always
  read from the batch itself, as without a watch;
* list requests are spaced to ``[qwenbatch] trigger_list_pages_per_minute`` (default 60; the
  account's list quota is 100/min); ``0`` turns listing off (one retrieve per read);
* a list request that fails (after the client's retries) pauses listing for
  :data:`LIST_PAUSE` seconds; reads go to ``GET /batches/{id}`` meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings
from airflow_provider_qwenbatch.triggers.client_pool import (
    acquire_client,
    gate_of,
    release_client,
    settings_key,
)

log = logging.getLogger(__name__)

DEFAULT_PAGES_PER_MINUTE = 60.0
# The largest page the list endpoint serves.
LIST_PAGE_SIZE = 100
# After a failed list request (already retried by the client), read batches one by one for this
# long before listing again: each reader then meets its own outcome, as without a watch, and a
# list that keeps failing (a proxy without it, a used-up list quota) costs one request a minute.
LIST_PAUSE = 60.0
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


@dataclass
class _Waiting:
    futures: dict[str, list[asyncio.Future[Batch]]] = field(default_factory=dict)

    def add(self, batch_id: str, future: asyncio.Future[Batch]) -> None:
        self.futures.setdefault(batch_id, []).append(future)

    def live(self) -> dict[str, list[asyncio.Future[Batch]]]:
        """The waits whose reader is still waiting (a cancelled trigger cancels its future)."""
        out = {}
        for batch_id, futures in self.futures.items():
            alive = [f for f in futures if not f.done()]
            if alive:
                out[batch_id] = alive
        return out


def _resolve(futures: list[asyncio.Future[Batch]], batch: Batch) -> None:
    for future in futures:
        if not future.done():
            future.set_result(batch)


class StatusWatch:
    """Answers batch status reads of many triggers with shared list pages (see the module docs).

    :param client: the async client to send with.
    :param gate: bounds this watch's requests in flight on the client.
    :param pages_per_minute: list requests allowed per minute; ``0`` reads every batch on its own.
    """

    def __init__(self, client: AsyncBatchClient, gate: asyncio.Semaphore, pages_per_minute: float) -> None:
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

    async def read(self, batch_id: str) -> Batch:
        """The batch as read after this call began.

        :param batch_id: the batch.
        :raises airflow_provider_qwenbatch.client.errors.QwenBatchError: what reading the batch on
            its own raised.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Batch] = loop.create_future()
        self._waiting.add(batch_id, future)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep_while_waited())
        return await future

    async def _sweep_while_waited(self) -> None:
        while True:
            if self._listing():
                # Wait for the list budget BEFORE taking the readers: reads asked meanwhile join
                # this sweep, since its first page is not asked yet.
                await self._wait_turn()
            waiting = self._waiting.live()
            # Reads asked from now on wait for the next sweep: this one may be past their page.
            self._waiting = _Waiting()
            if not waiting:
                return
            try:
                unlisted = await self._sweep(waiting)
            except asyncio.CancelledError:
                # aclose(): nobody will answer these readers any more.
                for futures in waiting.values():
                    for future in futures:
                        future.cancel()
                raise
            for batch_id, futures in unlisted.items():
                task = asyncio.get_running_loop().create_task(self._read_one(batch_id, futures))
                self._singles.add(task)
                task.add_done_callback(self._singles.discard)

    async def _sweep(
        self, waiting: dict[str, list[asyncio.Future[Batch]]]
    ) -> dict[str, list[asyncio.Future[Batch]]]:
        """Answer what the in-flight list shows, page by page; return the waits it did not answer."""
        loop = asyncio.get_running_loop()
        if self._page_gap is None or not self._listing():
            return waiting
        after: str | None = None
        while waiting:
            # Spaced one by one, not per sweep: the list quota may be enforced per second.
            await self._wait_turn()
            self._next_page_at = loop.time() + self._page_gap
            try:
                async with self._gate:
                    self.stats.pages += 1
                    page = await self.client.list_batches(
                        after=after, limit=LIST_PAGE_SIZE, status=_IN_FLIGHT
                    )
            except Exception as exc:
                # Anything (not only QwenBatchError): a sweep that died would leave its readers
                # waiting forever; read one by one instead, which gives each reader its own outcome.
                self._list_paused_until = loop.time() + LIST_PAUSE
                log.warning(
                    "Listing in-flight batches failed (%s); reading each batch on its own for %.0f s",
                    exc,
                    LIST_PAUSE,
                )
                return waiting
            for batch in page.batches:
                futures = waiting.get(batch.id)
                # A terminal status is read from the batch itself (a list that ignored the filter).
                if futures is not None and not batch.status.is_terminal:
                    del waiting[batch.id]
                    self.stats.listed += 1
                    _resolve(futures, batch)
            if not page.has_more or not page.last_id or page.last_id == after:
                break
            after = page.last_id
        return waiting

    def _listing(self) -> bool:
        """Whether reads go to list pages now (listing is on and not paused after a failure)."""
        return self._page_gap is not None and asyncio.get_running_loop().time() >= self._list_paused_until

    async def _wait_turn(self) -> None:
        delay = self._next_page_at - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _read_one(self, batch_id: str, futures: list[asyncio.Future[Batch]]) -> None:
        try:
            async with self._gate:
                self.stats.singles += 1
                batch = await self.client.retrieve_batch(batch_id)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:
            # Handed to each reader, which decides (fatal, or one more failed poll).
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        else:
            _resolve(futures, batch)

    async def aclose(self) -> None:
        """Stop sweeping and cancel the reads in flight."""
        tasks = [t for t in (self._sweeper, *self._singles) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for futures in self._waiting.live().values():
            for future in futures:
                future.cancel()


# Per event loop, per Connection settings: the watch its triggers share.
_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], StatusWatch]] = (
    weakref.WeakKeyDictionary()
)


def pages_per_minute() -> float:
    """``[qwenbatch] trigger_list_pages_per_minute``; the default when unset or not a number."""
    from airflow_provider_qwenbatch.compat import conf

    raw = conf.get("qwenbatch", "trigger_list_pages_per_minute", fallback=None)
    if raw is None or str(raw).strip() == "":
        return DEFAULT_PAGES_PER_MINUTE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        log.warning(
            "[qwenbatch] trigger_list_pages_per_minute = %r is not a number >= 0; using %s",
            raw,
            DEFAULT_PAGES_PER_MINUTE,
        )
        return DEFAULT_PAGES_PER_MINUTE
    return value


def acquire_watch(settings: ConnectionSettings) -> StatusWatch:
    """The watch shared by this event loop's triggers with these settings; give it back with :func:`release_watch`.

    :param settings: the resolved Connection.
    """
    watches = _WATCHES.setdefault(asyncio.get_running_loop(), {})
    key = settings_key(settings)
    watch = watches.get(key)
    if watch is None:
        client = acquire_client(settings)
        gate = gate_of(client) or asyncio.Semaphore(1)
        watch = watches[key] = StatusWatch(client, gate, pages_per_minute())
    watch.users += 1
    return watch


async def release_watch(watch: StatusWatch) -> None:
    """Give back a watch from :func:`acquire_watch`; the last user stops it and releases its client.

    :param watch: the watch.
    """
    watch.users -= 1
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
