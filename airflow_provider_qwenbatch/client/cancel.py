"""Cancel quietly: the one policy every kill path, callback and the cancel operator follows.

Read the batch; if it is terminal, do nothing; else ``POST .../cancel`` with a short
timeout. A 4xx because the batch became terminal meanwhile is success. Never raise: a kill
path that raises leaves the batch running and hides why. Every outcome is logged with the
server's request id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
from airflow_provider_qwenbatch.client.errors import NotFoundError, QwenBatchError
from airflow_provider_qwenbatch.client.logs import LoggerLike
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.sync import BatchClient

log = logging.getLogger(__name__)

# A kill path has about 5 s before Airflow SIGKILLs the worker: two requests must fit.
DEFAULT_KILL_BUDGET = 4.0
# Cancels from a timeout, a deadline or the cancel operator: no SIGKILL clock (unlike a kill
# path), so they may take longer and retry transient errors; a cancel that gives up leaves a
# batch billing.
UNHURRIED_BUDGET = 30.0
UNHURRIED_RETRIES = 3


class CancelAction(str, Enum):
    """What cancelling quietly did."""

    REQUESTED = "cancel_requested"
    ALREADY_TERMINAL = "already_terminal"
    NOT_FOUND = "not_found"
    FAILED = "failed"


@dataclass(frozen=True)
class CancelOutcome:
    """The result of :func:`cancel_quietly`.

    :param batch_id: the batch.
    :param action: what was done.
    :param status: the batch's status as last seen (``None`` if never read).
    :param request_id: the server's request id of the last answer or error.
    :param detail: a short human explanation.
    """

    batch_id: str
    action: CancelAction
    status: BatchStatus | None
    request_id: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the batch is stopped or stopping (nothing left to do)."""
        return self.action is not CancelAction.FAILED

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for XCom)."""
        d = asdict(self)
        d["action"] = self.action.value
        d["status"] = self.status.value if self.status else None
        return d


def log_outcome(logger: LoggerLike, outcome: CancelOutcome) -> CancelOutcome:
    """Log what cancelling did (a warning when it failed), with the request id; return the outcome.

    :param logger: where to log.
    :param outcome: the outcome.
    """
    emit = logger.warning if outcome.action is CancelAction.FAILED else logger.info
    emit(
        "Cancel batch %s: %s (status=%s, x-request-id=%s)%s",
        outcome.batch_id,
        outcome.action.value,
        outcome.status.value if outcome.status else "unknown",
        outcome.request_id or "none",
        f": {outcome.detail}" if outcome.detail else "",
    )
    return outcome


def settled_outcome(batch_id: str, batch: Batch) -> CancelOutcome | None:
    """The outcome when a batch as read needs no cancel (terminal or already ``cancelling``), else ``None``.

    :param batch_id: the batch.
    :param batch: the batch as just read (e.g. from a list page).
    """
    if batch.status.is_terminal or batch.status is BatchStatus.CANCELLING:
        return CancelOutcome(
            batch_id, CancelAction.ALREADY_TERMINAL, batch.status, batch.x_request_id, "nothing to cancel"
        )
    return None


def _after_error(batch_id: str, exc: QwenBatchError, reread: Batch | None) -> CancelOutcome:
    if isinstance(exc, NotFoundError):
        return CancelOutcome(batch_id, CancelAction.NOT_FOUND, None, exc.request_id, "no such batch")
    if reread is not None and (reread.status.is_terminal or reread.status is BatchStatus.CANCELLING):
        # A cancel refused because the batch is already being cancelled (or ended) leaves nothing to do.
        return CancelOutcome(
            batch_id,
            CancelAction.ALREADY_TERMINAL,
            reread.status,
            exc.request_id,
            "became terminal before the cancel" if reread.status.is_terminal else "already being cancelled",
        )
    return CancelOutcome(
        batch_id, CancelAction.FAILED, reread.status if reread else None, exc.request_id, str(exc)
    )


def cancel_quietly(
    client: BatchClient,
    batch_id: str,
    *,
    budget: float = DEFAULT_KILL_BUDGET,
    logger: LoggerLike | None = None,
    retries: int = 0,
) -> CancelOutcome:
    """Cancel a batch if it is still running, within ``budget`` seconds, never raising.

    :param client: a sync client.
    :param batch_id: the batch to cancel.
    :param budget: seconds the whole attempt may take (read + cancel).
    :param logger: where to log the outcome.
    :param retries: retries of each request on a transient error (0 on a kill path: no time for them;
        a timeout or deadline path, with no SIGKILL clock, passes a few and a longer budget).
    """
    logger = logger or log
    deadline = time.monotonic() + budget

    def left() -> float:
        return max(0.2, deadline - time.monotonic())

    try:
        early = settled_outcome(
            batch_id, client.retrieve_batch(batch_id, timeout=left() / 2, max_retries=retries)
        )
        if early is not None:
            return log_outcome(logger, early)
    except NotFoundError as exc:
        return log_outcome(logger, _after_error(batch_id, exc, None))
    except QwenBatchError as exc:
        # The read is only an optimisation: still try to cancel.
        logger.warning("Reading batch %s before cancel failed: %s", batch_id, exc)
    except Exception as exc:  # never raise out of a kill path
        logger.warning("Reading batch %s before cancel failed unexpectedly: %r", batch_id, exc)
    try:
        batch = client.cancel_batch(batch_id, timeout=left(), max_retries=retries)
        outcome = CancelOutcome(batch_id, CancelAction.REQUESTED, batch.status, batch.x_request_id)
    except QwenBatchError as exc:
        reread = None
        if not isinstance(exc, NotFoundError):
            try:
                reread = client.retrieve_batch(batch_id, timeout=left(), max_retries=retries)
            except Exception:
                reread = None
        outcome = _after_error(batch_id, exc, reread)
    except Exception as exc:  # never raise out of a kill path
        outcome = CancelOutcome(batch_id, CancelAction.FAILED, None, None, repr(exc))
    return log_outcome(logger, outcome)


async def acancel_quietly(
    client: AsyncBatchClient,
    batch_id: str,
    *,
    budget: float = DEFAULT_KILL_BUDGET,
    logger: LoggerLike | None = None,
    retries: int = 0,
) -> CancelOutcome:
    """Async twin of :func:`cancel_quietly`, for triggers.

    :param client: an async client (built before the kill path: never fetch a Connection here).
    :param batch_id: the batch to cancel.
    :param budget: seconds the whole attempt may take.
    :param logger: where to log the outcome.
    :param retries: retries of each request on a transient error (see :func:`cancel_quietly`).
    """
    logger = logger or log
    deadline = time.monotonic() + budget

    def left() -> float:
        return max(0.2, deadline - time.monotonic())

    try:
        early = settled_outcome(
            batch_id, await client.retrieve_batch(batch_id, timeout=left() / 2, max_retries=retries)
        )
        if early is not None:
            return log_outcome(logger, early)
    except NotFoundError as exc:
        return log_outcome(logger, _after_error(batch_id, exc, None))
    except QwenBatchError as exc:
        logger.warning("Reading batch %s before cancel failed: %s", batch_id, exc)
    except Exception as exc:
        logger.warning("Reading batch %s before cancel failed unexpectedly: %r", batch_id, exc)
    try:
        batch = await client.cancel_batch(batch_id, timeout=left(), max_retries=retries)
        outcome = CancelOutcome(batch_id, CancelAction.REQUESTED, batch.status, batch.x_request_id)
    except QwenBatchError as exc:
        reread = None
        if not isinstance(exc, NotFoundError):
            try:
                reread = await client.retrieve_batch(batch_id, timeout=left(), max_retries=retries)
            except Exception:
                reread = None
        outcome = _after_error(batch_id, exc, reread)
    except Exception as exc:
        outcome = CancelOutcome(batch_id, CancelAction.FAILED, None, None, repr(exc))
    return log_outcome(logger, outcome)


def cancel_many(
    client: BatchClient,
    batch_ids: Sequence[str],
    *,
    budget: float = DEFAULT_KILL_BUDGET,
    logger: LoggerLike | None = None,
    retries: int = 0,
) -> list[CancelOutcome]:
    """Cancel quietly many batches at once (the shards of one task), each within ``budget``, never raising.

    The cancels go out concurrently (one thread each, up to 32 at a time, sharing the client's
    connection pool): on a kill path 40 shards cancelled one after another would not all fit
    in the seconds before SIGKILL.

    :param client: a sync client (thread-safe: httpx's client is).
    :param batch_ids: the batches.
    :param budget: seconds each cancel may take; the whole call takes about as long when at
        most 32 are given.
    :param logger: where to log each outcome.
    :param retries: see :func:`cancel_quietly`.
    """
    if not batch_ids:
        return []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(
        max_workers=min(32, len(batch_ids)), thread_name_prefix="qwenbatch-cancel"
    ) as pool:
        return list(
            pool.map(
                lambda batch_id: cancel_quietly(
                    client, batch_id, budget=budget, logger=logger, retries=retries
                ),
                batch_ids,
            )
        )
