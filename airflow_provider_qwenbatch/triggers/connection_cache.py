"""One Connection lookup for the triggers of one event loop that start together.

A triggerer restart with 1,000 deferred batch tasks starts 1,000 triggers within a fraction of
a second, mostly of one Connection. Each resolving it on its own made 1,000 secrets-backend
lookups (the task SDK runs a sync backend such as the environment one through asgiref's one
worker thread, the execution API one through the supervisor), and their answers came back
together: measured on 2 cores, loop passes of 750 future callbacks and then 750 task steps,
stalls of 45-90 ms of every trigger of the triggerer (BENCHMARKS.md, "Triggerer scale").

So, per event loop and Connection id:

* a lookup in flight is shared: a trigger starting meanwhile waits for the same answer;
* a resolved Connection is reused by triggers that start within :data:`REUSE_SECONDS` of the
  lookup, without any await (their first step runs on, as it would have without a lookup).

A failed lookup is never reused: each later trigger asks again and reports its own error. The
window is short and fixed (it does not slide with each reuse), so a Connection edited in the
UI reaches every trigger that starts :data:`REUSE_SECONDS` after the edit; a running trigger
keeps the client it started with, as before.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_qwenbatch.hooks.qwen_batch import ConnectionSettings

# Long enough for a triggerer's start (it hands over up to [triggerer] capacity triggers at
# once); short enough that an edited Connection is picked up by the next trigger started.
REUSE_SECONDS = 5.0


@dataclass
class _LoopConnections:
    resolved: dict[str, tuple[float, ConnectionSettings]] = field(default_factory=dict)
    in_flight: dict[str, asyncio.Task[ConnectionSettings]] = field(default_factory=dict)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = weakref.WeakKeyDictionary()


def _of(loop: asyncio.AbstractEventLoop) -> _LoopConnections:
    connections = _LOOPS.get(loop)
    if connections is None:
        connections = _LOOPS[loop] = _LoopConnections()
    return connections


def reusable(conn_id: str) -> ConnectionSettings | None:
    """The Connection as resolved in this event loop within :data:`REUSE_SECONDS`, if it was.

    :param conn_id: the Connection id.
    """
    loop = asyncio.get_running_loop()
    entry = _of(loop).resolved.get(conn_id)
    if entry is None or loop.time() - entry[0] > REUSE_SECONDS:
        return None
    return entry[1]


async def resolve(
    conn_id: str, lookup: Callable[[], Coroutine[Any, Any, ConnectionSettings]]
) -> ConnectionSettings:
    """Resolve ``conn_id`` once for every trigger of this loop asking meanwhile (see the module docs).

    The lookup runs in a task of its own: a trigger that stops waiting (cancelled by a
    restart) does not cancel it for the others.

    :param conn_id: the Connection id.
    :param lookup: resolves the Connection (called only when no lookup is in flight).
    """
    settings = reusable(conn_id)
    if settings is not None:
        return settings
    loop = asyncio.get_running_loop()
    connections = _of(loop)
    task = connections.in_flight.get(conn_id)
    if task is None:
        task = connections.in_flight[conn_id] = loop.create_task(lookup())

        def done(finished: asyncio.Task[ConnectionSettings]) -> None:
            if connections.in_flight.get(conn_id) is finished:
                del connections.in_flight[conn_id]
            if not finished.cancelled() and finished.exception() is None:
                connections.resolved[conn_id] = (loop.time(), finished.result())

        task.add_done_callback(done)
    return await asyncio.shield(task)
