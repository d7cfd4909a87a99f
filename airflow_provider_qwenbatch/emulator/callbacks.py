"""``metadata.ds_batch_finish_callback``: POST the batch object to the URL when a batch ends.

Every terminal status (``completed``, ``failed``, ``expired``, ``cancelled``) is notified once,
with the batch object (as ``GET /batches/{id}`` shows it) as the JSON body. Each POST runs in
its own task, so a slow or dead receiver never stalls the ticker that moves batches on; a
failure (refused connection, timeout, non-2xx answer) is logged and kept in the delivery list
(``GET /_emulator/callbacks``), never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from airflow_provider_qwenbatch.emulator.records import BatchRecord

CALLBACK_KEY = "ds_batch_finish_callback"
log = logging.getLogger(__name__)


class CallbackSender:
    """Sends finish callbacks and remembers how each delivery went.

    :param timeout: returns the seconds one POST may take (the config can change at runtime).
    :param keep: deliveries remembered.
    """

    def __init__(self, timeout: Callable[[], float], keep: int = 10_000) -> None:
        self._timeout = timeout
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=keep)
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, rec: BatchRecord) -> None:
        """Start the callback of a batch that just ended, if it asked for one.

        Call on the event loop thread; returns at once.

        :param rec: the batch, already in its terminal status.
        """
        url = (rec.metadata or {}).get(CALLBACK_KEY)
        if not isinstance(url, str) or not url:
            return
        entry: dict[str, Any] = {
            "batch_id": rec.id,
            "url": url,
            "batch_status": rec.status,
            "http_status": None,
            "error": None,
            "done": False,
            "wall": time.time(),
        }
        self.deliveries.append(entry)
        task = asyncio.get_running_loop().create_task(self._post(url, rec.public(), entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, body: dict[str, Any], entry: dict[str, Any]) -> None:
        try:
            if not url.startswith(("http://", "https://")):
                raise ValueError("the callback URL must start with http:// or https://")
            # trust_env=False: a proxy from the environment must not swallow a loopback receiver.
            async with httpx.AsyncClient(timeout=self._timeout(), trust_env=False) as client:
                response = await client.post(url, json=body)
            entry["http_status"] = response.status_code
            if response.status_code >= 300:
                log.warning(
                    "ds_batch_finish_callback of %s to %s answered HTTP %s",
                    entry["batch_id"],
                    url,
                    response.status_code,
                )
        except Exception as exc:  # a receiver's failure must never reach the emulator
            entry["error"] = f"{type(exc).__name__}: {exc}"
            log.warning(
                "ds_batch_finish_callback of %s to %s failed: %s", entry["batch_id"], url, entry["error"]
            )
        finally:
            entry["done"] = True

    def clear(self) -> None:
        """Forget the deliveries (those under way finish on their own)."""
        self.deliveries.clear()

    async def aclose(self, grace: float = 2.0) -> None:
        """On shutdown: let deliveries under way finish for ``grace`` seconds, then cancel them.

        :param grace: seconds to wait.
        """
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
