"""What the system tests read from the emulator: a run's batches, their cancel requests, their status."""

from __future__ import annotations

from typing import Any

from airflow_provider_qwenbatch.client.identity import BatchTag, find_tags, run_tag
from airflow_provider_qwenbatch.emulator import EmulatorHandle
from tests.system.stack import poll

# A batch's end, as the public object stamps it (whole Unix seconds).
_END_STAMPS = ("completed_at", "failed_at", "expired_at", "cancelled_at")


def _ended_second(batch: dict[str, Any]) -> int | None:
    stamps = [int(batch[key]) for key in _END_STAMPS if batch.get(key)]
    return min(stamps) if stamps else None


class EmulatorView:
    """Read-only helpers over the emulator's admin API.

    :param handle: the running emulator.
    """

    def __init__(self, handle: EmulatorHandle) -> None:
        self.handle = handle

    def run_batches(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every batch tagged to a DAG run (public batch objects), oldest first."""
        prefix = run_tag(dag_id, run_id)
        found = []
        for state in self.handle.batches(lines=False):
            batch = state["batch"]
            ds_name = (batch.get("metadata") or {}).get("ds_name") or ""
            if any(t.startswith(prefix) for t in find_tags(ds_name)):
                found.append(batch)
        return sorted(found, key=lambda b: (b["created_at"], b["id"]))

    def wait_run_batches(
        self,
        dag_id: str,
        run_id: str,
        count: int,
        timeout: float,
        statuses: tuple[str, ...] = ("in_progress",),
    ) -> list[dict[str, Any]]:
        """Wait until the run has ``count`` batches, all in one of ``statuses``.

        :param dag_id: the DAG.
        :param run_id: the run.
        :param count: how many batches.
        :param timeout: seconds.
        :param statuses: acceptable statuses.
        """

        def probe() -> list[dict[str, Any]] | None:
            batches = self.run_batches(dag_id, run_id)
            if len(batches) == count and all(b["status"] in statuses for b in batches):
                return batches
            return None

        return poll(
            f"{count} batch(es) of {dag_id}/{run_id} in {statuses}",
            probe,
            timeout,
            0.25,
            on_timeout=lambda: str([(b["id"], b["status"]) for b in self.run_batches(dag_id, run_id)]),
        )

    def task_batch(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """The one batch tagged to a task instance."""
        tag = BatchTag(dag_id, run_id, task_id, map_index)
        found = [
            b
            for b in self.run_batches(dag_id, run_id)
            if tag.matches((b.get("metadata") or {}).get("ds_name"))
        ]
        assert len(found) == 1, f"{len(found)} batches for {task_id}[{map_index}]"
        return found[0]

    def status(self, batch_id: str) -> str:
        """The batch's status now."""
        return str(self.handle.batch_state(batch_id)["batch"]["status"])

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The public batch object."""
        result: dict[str, Any] = self.handle.batch_state(batch_id)["batch"]
        return result

    def cancel_requests(self, batch_id: str) -> list[dict[str, Any]]:
        """Every ``POST /batches/{id}/cancel`` the emulator received for the batch, oldest first."""
        return self.handle.requests(endpoint="cancel_batch", batch_id=batch_id)

    def polls(self, batch_id: str) -> list[dict[str, Any]]:
        """Every status read of the batch: ``GET /batches/{id}``, or a list page that showed it (triggers)."""
        return self.handle.status_reads(batch_id)

    def creates(self, batch_ids: set[str]) -> list[dict[str, Any]]:
        """``POST /batches`` requests that created one of ``batch_ids``."""
        return [e for e in self.handle.requests(endpoint="create_batch") if e.get("batch_id") in batch_ids]

    def ended_second(self, batch_id: str) -> int | None:
        """The Unix second the batch ended (completed, failed, expired or cancelled), or None."""
        return _ended_second(self.batch(batch_id))

    def other_batches_unfinished_since(self, batch_ids: set[str], since: float) -> list[str]:
        """Ids of the emulator's batches, outside ``batch_ids``, that may have been unfinished after ``since``.

        :param batch_ids: the batches to leave out (e.g. one task's).
        :param since: a Unix time.
        """
        found = []
        for state in self.handle.batches(lines=False):
            batch = state["batch"]
            end = _ended_second(batch)
            # Ends are whole seconds: one stamped in the second of ``since`` may have come after it.
            if batch["id"] not in batch_ids and (end is None or end + 1 > since):
                found.append(str(batch["id"]))
        return found

    def last_seq(self) -> int:
        """The ``seq`` of the newest request in the emulator's log (0: none yet)."""
        return int(self.handle.health()["requests"])

    def peak_unfinished(self, batch_ids: set[str]) -> int:
        """The most of ``batch_ids`` that were unfinished at once, read from the emulator's log.

        A batch is unfinished from its ``POST /batches`` (arrival time in the request log) to its
        end. The end is stamped in whole seconds, so a batch counts at a moment only when it
        certainly had not ended yet (end second after that moment): an overlap shorter than a
        second can go unseen, one that lasted longer cannot.

        :param batch_ids: the batches of one task.
        """
        created = {e["batch_id"]: float(e["wall"]) for e in self.creates(batch_ids)}
        missing = batch_ids - created.keys()
        assert not missing, f"no create request in the emulator's log for {sorted(missing)}"
        ends = {batch_id: self.ended_second(batch_id) for batch_id in batch_ids}

        def unfinished_at(batch_id: str, moment: float) -> bool:
            end = ends[batch_id]
            return created[batch_id] <= moment and (end is None or end > moment)

        peak = 0
        for batch_id, at in created.items():
            others = sum(1 for other in created if other != batch_id and unfinished_at(other, at))
            peak = max(peak, others + 1)
        return peak

    def wait_cancel_request(self, batch_id: str, timeout: float) -> dict[str, Any]:
        """Wait for the first cancel request of the batch; returns its log entry (``wall`` = arrival time)."""
        return poll(
            f"a cancel request for batch {batch_id}",
            lambda: (self.cancel_requests(batch_id) or [None])[0],
            timeout,
            0.1,
            on_timeout=lambda: f"batch is {self.status(batch_id)}",
        )

    def wait_status(self, batch_id: str, status: str, timeout: float) -> dict[str, Any]:
        """Wait until the batch has ``status``."""

        def probe() -> dict[str, Any] | None:
            batch = self.batch(batch_id)
            return batch if batch["status"] == status else None

        return poll(
            f"batch {batch_id} to be {status}",
            probe,
            timeout,
            0.25,
            on_timeout=lambda: f"batch is {self.status(batch_id)}",
        )
