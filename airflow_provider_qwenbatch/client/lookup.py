"""Finding the provider's own batches by their tag (see :mod:`.identity`)."""

from __future__ import annotations

from airflow_provider_qwenbatch.client.identity import BatchTag, find_tags, run_tag
from airflow_provider_qwenbatch.client.models import Batch
from airflow_provider_qwenbatch.client.status import BatchStatus
from airflow_provider_qwenbatch.client.sync import BatchClient


def find_batch_for_task(client: BatchClient, tag: BatchTag, input_file_id: str | None = None) -> Batch | None:
    """The newest batch an earlier try of this task instance created, unless it ended badly.

    A batch that ``failed``, ``expired`` or was ``cancelled`` is not re-attached to: the retry
    creates a new one. ``input_file_id`` narrows the server-side search when the input is a
    fixed file id.

    :param client: a sync client.
    :param tag: the task instance's tag.
    :param input_file_id: the input file id, when it is known before uploading.
    """
    file_ids = None
    if input_file_id and not input_file_id.startswith(("http://", "https://", "oss:")):
        file_ids = [input_file_id]
    for batch in client.iter_batches(ds_name=tag.value, input_file_ids=file_ids):  # newest first
        ds_name = (batch.metadata or {}).get("ds_name")
        if not tag.matches(ds_name if isinstance(ds_name, str) else None):
            continue  # the server's filter is a substring match; check the exact tag
        if batch.status.is_in_flight or batch.status.is_success:
            return batch
        return None  # the newest one ended badly: start afresh
    return None


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
