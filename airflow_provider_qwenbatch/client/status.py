"""The one place that knows which batch statuses are terminal, in flight or successful."""

from __future__ import annotations

from enum import Enum


class BatchStatus(str, Enum):
    """Status of a DashScope batch, with the lifecycle rules decided once.

    ``validating -> in_progress -> finalizing -> completed``; ``validating -> failed``;
    ``-> expired``; ``validating|in_progress -> cancelling -> cancelled``.
    """

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the batch will never change status again."""
        return self in _TERMINAL

    @property
    def is_in_flight(self) -> bool:
        """Whether the batch is still running (and may still be billing)."""
        return not self.is_terminal

    @property
    def is_success(self) -> bool:
        """Whether the batch ended with all of its requests processed."""
        return self is BatchStatus.COMPLETED

    @classmethod
    def terminal(cls) -> frozenset[BatchStatus]:
        """Return the terminal statuses."""
        return _TERMINAL

    @classmethod
    def in_flight(cls) -> frozenset[BatchStatus]:
        """Return the statuses of a batch that is still running."""
        return frozenset(s for s in cls if s not in _TERMINAL)

    @classmethod
    def failed_terminal(cls) -> frozenset[BatchStatus]:
        """Return the terminal statuses that are not a success."""
        return frozenset(s for s in _TERMINAL if not s.is_success)

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})
