"""Retry policy: which failures are retried, and how long to wait.

Safe calls (GET, list, cancel, delete, upload) retry on 429, 5xx, connect and read errors.
``POST /batches`` is not idempotent: it is retried only when the server provably did not
create anything (a connection that never opened, or a 429 refusal); anything else is left
to the caller, who reconciles by the batch's tag before trying again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from airflow_provider_qwenbatch.client.errors import QwenBatchError, RateLimitError, ServerError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with full jitter, honouring ``Retry-After``.

    :param max_retries: retries after the first attempt (0 disables retrying).
    :param backoff_base: first back-off in seconds; doubles each retry.
    :param backoff_max: cap of one back-off in seconds.
    :param retry_after_max: cap on a server's ``Retry-After``.
    """

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0

    def delay(self, attempt: int, error: QwenBatchError | httpx.TransportError, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based).

        :param attempt: which retry this is.
        :param error: the failure being retried.
        :param rng: source of jitter.
        """
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            return min(error.retry_after, self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        # Full jitter: spreads retries of many clients so they do not stampede together.
        return rng.uniform(ceiling / 2, ceiling)

    @staticmethod
    def is_retryable(error: QwenBatchError | httpx.TransportError, *, idempotent: bool) -> bool:
        """Whether ``error`` may be retried for a call of this kind.

        :param error: the failure.
        :param idempotent: whether repeating the call is harmless.
        """
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | RateLimitError):
            # Nothing reached the server, or it refused before acting.
            return True
        if not idempotent:
            return False
        return isinstance(
            error,
            ServerError
            | httpx.ReadError
            | httpx.ReadTimeout
            | httpx.RemoteProtocolError
            | httpx.WriteError
            | httpx.PoolTimeout,
        )
