"""Exceptions of the Airflow layer: every one is an ``AirflowException``, and carries the server's request id."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow_provider_qwenbatch.client.errors import InputValidationError, QwenBatchError
from airflow_provider_qwenbatch.compat import AirflowException, AirflowFailException


class QwenBatchAirflowError(AirflowException):
    """A batch API call failed; the message carries HTTP status, error code and ``x-request-id``.

    :param message: what went wrong.
    :param request_id: the server's ``x-request-id``, when known.
    """

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class BatchInputError(AirflowFailException):
    """The batch input breaks the API's rules; nothing was uploaded or billed. Not retried: the input won't change.

    :param message: every problem, each with file, line and rule.
    """


class BatchFailedError(AirflowFailException):
    """The batch ended ``failed``, ``expired`` or ``cancelled``; the message holds the server's error details.

    A sensor with ``soft_fail`` turns it into a skip. Not retried: the batch's end is final, and a
    retry must not start a second paid batch.

    :param message: the batch id, status and errors.
    :param batch_id: the batch.
    :param status: its terminal status.
    """

    def __init__(self, message: str, batch_id: str, status: str) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.status = status


class BatchNotFoundError(AirflowFailException):
    """A batch id names no batch of this account and region (a typo, another workspace). Not retried.

    :param message: the ids and the server's request ids.
    """


class BatchTimeoutError(AirflowException):
    """The operator's ``timeout`` was reached; the batch was cancelled.

    :param message: the batch and how long it ran.
    """


class BatchEventError(AirflowException):
    """The trigger sent an event this operator does not understand, or reported an error.

    :param message: what was wrong with the event.
    """


@contextmanager
def as_airflow_errors() -> Iterator[None]:
    """Turn client errors into Airflow exceptions (same message, request id kept)."""
    try:
        yield
    except InputValidationError as exc:
        # The message names every problem; the client's traceback would only repeat it.
        raise BatchInputError(str(exc)) from None
    except QwenBatchError as exc:
        raise QwenBatchAirflowError(str(exc), exc.request_id) from exc
