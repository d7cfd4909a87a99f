"""Finding the provider's own batches by their tag (see :mod:`.identity`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from airflow_provider_qwenbatch.client.identity import BatchTag, InputFingerprint, find_tags, run_tag
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.sync import BatchClient


@dataclass(frozen=True)
class EarlierBatches:
    """What earlier tries of one task instance left behind, and what a new try must do about it.

    :param reattach: the batch to re-attach to (same input, still running or completed), if any.
    :param to_cancel: batches still running from another input: cancel them before creating a new one.
    """

    reattach: Batch | None
    to_cancel: list[Batch] = field(default_factory=list)


def find_batch_for_task(
    client: BatchClient,
    tag: BatchTag,
    fingerprint: InputFingerprint | None,
) -> EarlierBatches:
    """Find the batch an earlier try of this task instance created, and decide whether to re-attach.

    Only the newest batch of the task instance may be re-attached to, and only when it was
    created from the same input (``fingerprint``) and is running or ``completed``. It is not
    when it ``failed``, ``expired``, was ``cancelled`` or is ``cancelling`` (``cancelled``
    certainly follows: the new try creates a fresh batch at once instead of waiting for it).
    Every other batch of the task instance still running (from other input) is returned in
    ``to_cancel``: it would bill for results nobody will read. A batch being cancelled is not
    in it (the cancel is under way). Batches tagged by the previous version of the provider
    (no input part, shorter task part) are not found here.

    :param client: a sync client.
    :param tag: the task instance's tag.
    :param fingerprint: what the new try would create the batch from (``None``: unknown, never re-attach).
    """
    reattach: Batch | None = None
    to_cancel: list[Batch] = []
    newest = True
    for batch in client.iter_batches(ds_name=tag.value):  # newest first
        ds_name = (batch.metadata or {}).get("ds_name")
        ds_name = ds_name if isinstance(ds_name, str) else None
        if not tag.matches(ds_name):
            continue  # the server's filter is a substring match; check the exact tag
        same_input = fingerprint is not None and tag.fingerprint_in(ds_name) == fingerprint
        status = batch.status
        running = status.is_in_flight and status is not BatchStatus.CANCELLING
        if newest and same_input and reattachable(batch):
            reattach = batch
        elif running:
            to_cancel.append(batch)
        newest = False
    return EarlierBatches(reattach, to_cancel)


def find_run_batches(
    client: BatchClient, dag_id: str, run_id: str, *, in_flight_only: bool = True
) -> list[Batch]:
    """Every batch the provider created for one DAG run.

    :param client: a sync client.
    :param dag_id: the DAG id.
    :param run_id: the run id.
    :param in_flight_only: only batches still running.
    """
    prefix = run_tag(dag_id, run_id)
    status = sorted(BatchStatus.in_flight(), key=lambda s: s.value) if in_flight_only else None
    found = []
    for batch in client.iter_batches(ds_name=prefix, status=status):
        ds_name = (batch.metadata or {}).get("ds_name")
        if isinstance(ds_name, str) and any(t.startswith(prefix) for t in find_tags(ds_name)):
            found.append(batch)
    return found


def find_task_batches(client: BatchClient, tag: BatchTag) -> dict[str, Batch]:
    """The newest batch of this task instance for each input fingerprint (the shards of a split input).

    Newest first from the list, so for each fingerprint the first batch seen is the one a
    retry may re-attach to (when it is running or completed); older ones of the same
    fingerprint are left out. Batches without a fingerprint (previous tag format) are not found.

    :param client: a sync client.
    :param tag: the task instance's tag.
    :returns: fingerprint value -> batch.
    """
    found: dict[str, Batch] = {}
    for batch in client.iter_batches(ds_name=tag.value):  # newest first
        ds_name = (batch.metadata or {}).get("ds_name")
        ds_name = ds_name if isinstance(ds_name, str) else None
        if not tag.matches(ds_name):
            continue  # the server's filter is a substring match; check the exact tag
        fingerprint = tag.fingerprint_in(ds_name)
        if fingerprint is not None:
            found.setdefault(fingerprint.value, batch)
    return found


def reattachable(batch: Batch) -> bool:
    """Whether a batch of an earlier try may be re-attached to: running (not being cancelled) or completed.

    :param batch: the batch as just read.
    """
    status = batch.status
    return (status.is_in_flight and status is not BatchStatus.CANCELLING) or status.is_success
