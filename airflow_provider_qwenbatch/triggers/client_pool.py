"""Sharing async clients between the triggers of one triggerer event loop.

A triggerer may run thousands of :class:`~airflow_provider_qwenbatch.triggers.batch.BatchStatusTrigger`
at once. One httpx client (SSL context, connection pool) per trigger costs ~800 KB each and
stalls the loop; one client for all of them stalls it too (see below). Triggers with the same
Connection settings therefore share clients in small shards.

Nothing here blocks the event loop: what a first request costs is done in a worker thread,
on a shard's first request, which is async (see :class:`_DeferredTransport`): building the
one SSL context (loading the CA bundle: ~40 ms of CPU, measured as a 40-80 ms stall of a
triggerer starting 1,000 triggers) and importing the asyncio backend httpcore loads lazily on
its first request (~100 ms, measured as the longest stall of a triggerer's start).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import ssl
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import certifi
import httpx

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings

# Triggers share clients in shards of SHARD_USERS, each with SHARD_CONNECTIONS connections.
# httpcore's pool rescans all its connections and queued requests whenever one request
# starts or ends (quadratic), so one client with hundreds of connections or queued
# requests stalls the event loop for seconds: requests queue on each shard's semaphore
# instead, and every shard stays small. All shards share one SSL context (building one
# per client costs ~700 KB and milliseconds of CPU).
SHARD_USERS = 64
SHARD_CONNECTIONS = 8
_SHARD_LIMITS = httpx.Limits(max_connections=SHARD_CONNECTIONS, max_keepalive_connections=SHARD_CONNECTIONS)


@dataclass
class _Pooled:
    client: AsyncBatchClient
    gate: asyncio.Semaphore
    users: int = 0


# Per event loop (an httpx async client belongs to one loop), per settings: the shards.
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], list[_Pooled]]] = (
    weakref.WeakKeyDictionary()
)


_SSL_LOCK = threading.Lock()


@functools.cache
def _ssl_context_locked() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def _ssl_context() -> ssl.SSLContext:
    # Locked: two worker threads building it at once would each load the CA bundle.
    with _SSL_LOCK:
        return _ssl_context_locked()


def _prepare_transport() -> ssl.SSLContext:
    """What a first request would do on the loop: the SSL context, and httpcore's lazy import."""
    with contextlib.suppress(ImportError):  # httpcore's locks go through anyio under asyncio
        importlib.import_module("anyio._backends._asyncio")
    return _ssl_context()


class _DeferredTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncHTTPTransport`` built on its first request, with the SSL context built off the loop.

    ``acquire_client`` is synchronous (triggers call it as they start), and building the SSL
    context there would stall every trigger of the loop; the first request can await a thread.
    """

    def __init__(self) -> None:
        self._inner: httpx.AsyncHTTPTransport | None = None
        self._building: asyncio.Lock | None = None

    async def _transport(self) -> httpx.AsyncHTTPTransport:
        if self._inner is None:
            if self._building is None:
                self._building = asyncio.Lock()
            async with self._building:
                if self._inner is None:
                    context = await asyncio.to_thread(_prepare_transport)
                    self._inner = httpx.AsyncHTTPTransport(verify=context, limits=_SHARD_LIMITS)
        return self._inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send with the real transport (built on the first call).

        :param request: the request.
        """
        return await (await self._transport()).handle_async_request(request)

    async def aclose(self) -> None:
        """Close the real transport, if it was ever built."""
        if self._inner is not None:
            await self._inner.aclose()


def settings_key(settings: ConnectionSettings) -> tuple[Any, ...]:
    """What makes two Connections interchangeable for a shared client (the resolved values, not the id).

    :param settings: the resolved Connection.
    """
    return (
        settings.base_url,
        settings.api_key,
        settings.timeout,
        settings.connect_timeout,
        settings.max_retries,
    )


def acquire_client(settings: ConnectionSettings) -> AsyncBatchClient:
    """An async client shared by this event loop's triggers with the same settings; give it back with :func:`release_client`.

    :param settings: the resolved Connection.
    """
    shards = _POOLS.setdefault(asyncio.get_running_loop(), {}).setdefault(settings_key(settings), [])
    entry = next((e for e in shards if e.users < SHARD_USERS), None)
    if entry is None:
        entry = _Pooled(
            settings.async_client(transport=_DeferredTransport()), asyncio.Semaphore(SHARD_CONNECTIONS)
        )
        shards.append(entry)
    entry.users += 1
    return entry.client


def _find(client: AsyncBatchClient) -> tuple[list[_Pooled], _Pooled] | None:
    for shards in _POOLS.get(asyncio.get_running_loop(), {}).values():
        for entry in shards:
            if entry.client is client:
                return shards, entry
    return None


def gate_of(client: AsyncBatchClient) -> asyncio.Semaphore | None:
    """The semaphore bounding a shared client's requests in flight (``None`` for a private client).

    :param client: a client from :func:`acquire_client`.
    """
    found = _find(client)
    return found[1].gate if found else None


async def release_client(client: AsyncBatchClient) -> None:
    """Give back a client from :func:`acquire_client`; the last user closes it.

    :param client: the client.
    """
    found = _find(client)
    if found is None:
        await client.aclose()  # not a pooled client
        return
    shards, entry = found
    entry.users -= 1
    if entry.users <= 0:
        shards.remove(entry)
        await client.aclose()
