"""The sharded path of ``SubmitBatchOperator``: one task, many batches, every guarantee per shard.

An input that needs more than one batch (or ``resubmit_failed``) is run here. Each shard is
one batch, tagged ``<task tag>-<shard fingerprint>/r<round>s<shard>``. The job:

- creates the shards' batches, at most ``max_active_batches`` unfinished at once, and more as
  earlier ones end; waits for all of them in the worker, or deferred in one
  :class:`~airflow_provider_qwenbatch.triggers.batches.BatchesStatusTrigger`;
- re-attaches, on a retry or clear, to every shard batch an earlier try created from the same
  shard (fingerprint) that is running or completed, and creates only the missing ones; an
  earlier try's batch running from other input is cancelled;
- resumes after a deferral exactly like that: the batches it knows are passed along, the
  input is read and split again only when a shard still has to be created (it must give the
  same shards, or the task fails saying so);
- with ``resubmit_failed=N``, sends the requests whose last outcome failed for a retryable
  reason again, in follow-up rounds (at most N), from the original shards, unchanged.

Every unfinished shard is cancelled by any kill path: ``on_kill`` (concurrently, see
:func:`~airflow_provider_qwenbatch.client.cancel.cancel_many`), the trigger's kill, a deferral
timeout, and the run clean-up (which finds every shard by the run tag).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_qwenbatch.client.cancel import (
    DEFAULT_KILL_BUDGET,
    UNHURRIED_BUDGET,
    UNHURRIED_RETRIES,
    cancel_many,
)
from airflow_provider_qwenbatch.client.identity import InputFingerprint, ShardLabel
from airflow_provider_qwenbatch.client.lookup import find_task_batches, reattachable
from airflow_provider_qwenbatch.exceptions import (
    BatchFailedError,
    BatchInputError,
    BatchTimeoutError,
    QwenBatchAirflowError,
)
from airflow_provider_qwenbatch.operators._base import BATCH_IDS_XCOM_KEY
from airflow_provider_qwenbatch.summary import describe_job_progress, job_summary

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_qwenbatch.client.identity import BatchTag
    from airflow_provider_qwenbatch.client.models import Batch
    from airflow_provider_qwenbatch.client.shards import Shard, ShardPlan
    from airflow_provider_qwenbatch.client.sync import BatchClient
    from airflow_provider_qwenbatch.operators.submit import SubmitBatchOperator

RESUME_METHOD = "execute_sharded_complete"
# What a deferred job needs when it resumes (ids and shard facts, no payload), in XCom.
JOB_STATE_XCOM_KEY = "qwenbatch_job_state"


def shard_fingerprint(shard: Shard, completion_window: str, round_number: int) -> InputFingerprint:
    """What the batch of one shard of one round is created from (a retry re-attaches by it).

    :param shard: the shard.
    :param completion_window: the batch's window.
    :param round_number: 0, or the resubmission round.
    """
    s = shard.summary
    return InputFingerprint.of_content(
        s.sha256,
        endpoint=s.endpoint,
        completion_window=completion_window,
        model=s.model,
        round_number=round_number,
    )


class ShardedJob:
    """The batches of one task instance's split input, from creation to the end of the last round.

    :param op: the submit operator (its arguments, log, Connection and kill flag).
    :param context: the task context.
    :param client: a sync client, open for the job's duration.
    :param tag: the task instance's tag.
    """

    def __init__(self, op: SubmitBatchOperator, context: Context, client: BatchClient, tag: BatchTag) -> None:
        self.op = op
        self.context = context
        self.client = client
        self.tag = tag
        self.log = op.log
        self.batches: dict[str, Batch] = {}  # label -> batch of this job
        self.facts: dict[str, dict[str, Any]] = {}  # label -> shard, round, lines, first/last line
        self.fingerprints: dict[str, str] = {}  # label -> fingerprint, known once planned
        self.sizes: dict[int, int] = {}  # round -> shards
        self.pool: dict[str, Batch] = {}  # fingerprint -> an earlier try's batch, to re-attach to
        self.input_info: dict[str, Any] = {}
        self.started = time.time()
        self._plans: dict[int, ShardPlan] = {}
        self._downloads: dict[str, str] = {}  # file id -> local copy
        self._work: str | None = None
        self._last_progress = ""

    # ---- state across a deferral ----------------------------------------------------------

    def state(self, round_number: int) -> dict[str, Any]:
        """What a resumed task needs to go on (plain JSON: ids and facts, no payload)."""
        return {
            "round": round_number,
            "known": {label: b.id for label, b in self.batches.items()},
            "facts": self.facts,
            "fingerprints": self.fingerprints,
            "sizes": {str(r): n for r, n in self.sizes.items()},
            "input": self.input_info,
            "started": self.started,
        }

    def start(self, plan: ShardPlan) -> dict[str, Any]:
        """Run the job from its first try or a retry: re-attach what exists, create the rest, wait.

        :param plan: the validated shards of the input.
        """
        self._plans[0] = plan
        self.sizes[0] = len(plan.shards)
        self.input_info = {
            "lines": plan.total_lines,
            "bytes": plan.total_bytes,
            "model": plan.model,
            "endpoint": plan.endpoint,
        }
        self._note_round(0, plan)
        self.log.info(
            "Input split into %d shards (at most %d batches unfinished at once)",
            len(plan.shards),
            self.op.max_active_batches,
        )
        if not self.op.wait_for_completion and len(plan.shards) > self.op.max_active_batches:
            raise BatchInputError(
                f"{self.op.task_id}: the input needs {len(plan.shards)} batches, more than "
                f"max_active_batches={self.op.max_active_batches}; with wait_for_completion=False nothing "
                "would create the rest (wait in this task, or raise max_active_batches)"
            )
        if (self.context["ti"].try_number or 1) > 1:
            self._adopt_earlier(set(self.fingerprints.values()))
        return self._drive(0)

    def resume(self, state: dict[str, Any]) -> dict[str, Any]:
        """Go on after the trigger's event, from the state passed along.

        :param state: what :meth:`state` returned before deferring.
        """
        self.facts = dict(state["facts"])
        self.fingerprints = dict(state["fingerprints"])
        self.sizes = {int(r): int(n) for r, n in state["sizes"].items()}
        self.input_info = dict(state["input"])
        self.started = float(state["started"])
        known: dict[str, str] = dict(state["known"])
        by_id = {batch_id: label for label, batch_id in known.items()}
        earlier = find_task_batches(self.client, self.tag)
        for batch in earlier.values():
            if batch.id in by_id:
                self.batches[by_id.pop(batch.id)] = batch
        for batch_id, label in by_id.items():  # an older batch of a fingerprint: read it on its own
            self.batches[label] = self.client.retrieve_batch(batch_id)
        if self.op.reattach:
            self.pool = earlier
        self.op._job_batch_ids = [self.batches[label].id for label in self._order()]
        return self._drive(int(state["round"]))

    def _adopt_earlier(self, wanted: set[str]) -> None:
        earlier = find_task_batches(self.client, self.tag)
        stale: list[Batch] = []
        for fingerprint, batch in earlier.items():
            ds_name = (batch.metadata or {}).get("ds_name")
            label = self.tag.shard_in(ds_name if isinstance(ds_name, str) else None)
            later_round = label is not None and label.round_number > 0
            if self.op.reattach and (fingerprint in wanted or later_round):
                self.pool[fingerprint] = batch  # a later round's batch is judged when that round is planned
            elif batch.status.is_in_flight and reattachable(batch):
                stale.append(batch)
        if stale:
            # Still billing for input that is no longer this task's: nobody will read its results.
            self.log.warning(
                "Cancelling %d batch(es) of an earlier try created from other input: %s",
                len(stale),
                ", ".join(b.id for b in stale),
            )
            cancel_many(
                self.client,
                [b.id for b in stale],
                budget=UNHURRIED_BUDGET,
                retries=UNHURRIED_RETRIES,
                logger=self.log,
            )

    # ---- the loop -------------------------------------------------------------------------

    def _drive(self, round_number: int) -> dict[str, Any]:
        try:
            while True:
                self._fill(round_number)
                of_round = [
                    self.batches.get(ShardLabel(round_number, n).value) for n in self._numbers(round_number)
                ]
                active = [b for b in of_round if b is not None and not b.status.is_terminal]
                pending = any(b is None for b in of_round)
                if not self.op.wait_for_completion:
                    return self._summary(round_number)
                if not active and not pending:
                    if round_number < self.op.resubmit_failed and self._plan_resubmission(round_number + 1):
                        round_number += 1
                        continue
                    return self._finish(round_number)
                self._check_deadline()
                if self.op.deferrable:
                    self._defer(round_number, active, pending)
                wait = self.op.poll_interval
                deadline = self._deadline()
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - time.time()))
                time.sleep(wait)
                labels = {b.id: label for label, b in self.batches.items()}
                for batch in active:
                    self.batches[labels[batch.id]] = self.client.retrieve_batch(batch.id)
                self._progress()
        finally:
            self._discard()

    def _numbers(self, round_number: int) -> range:
        return range(1, self.sizes[round_number] + 1)

    def _fill(self, round_number: int) -> None:
        """Re-attach to or create the round's missing batches, while fewer than max_active_batches run."""
        missing = [
            n for n in self._numbers(round_number) if ShardLabel(round_number, n).value not in self.batches
        ]
        if not missing:
            return
        slots = self.op.max_active_batches - sum(1 for b in self.batches.values() if not b.status.is_terminal)
        if slots <= 0:
            return
        plan = self._plan(round_number)
        for shard in plan.shards:
            label = ShardLabel(round_number, shard.number)
            if label.value in self.batches:
                continue
            fingerprint = InputFingerprint(self.fingerprints[label.value])
            earlier = self.pool.get(fingerprint.value)
            if earlier is not None and reattachable(earlier):
                self.log.info(
                    "Shard %s re-attaches to batch %s (%s) of an earlier try from the same input",
                    label.value,
                    earlier.id,
                    earlier.status.value,
                )
                self._add(label, earlier)
                slots -= 0 if earlier.status.is_terminal else 1
                continue
            if slots <= 0:
                continue
            self._add(label, self._create(shard, label, fingerprint))
            slots -= 1
        # Once per fill, in shard order (not once per batch: a job of 1,000 shards would write
        # 1,000 growing lists); the deferral-timeout path and the UI read it.
        self.context["ti"].xcom_push(
            key=BATCH_IDS_XCOM_KEY, value=[self.batches[lb].id for lb in self._order()]
        )
        self._progress()

    def _create(self, shard: Shard, label: ShardLabel, fingerprint: InputFingerprint) -> Batch:
        op, client = self.op, self.client
        op._check_killed(None, client)
        uploaded = client.upload_file(shard.path)
        op._check_killed(uploaded.id, client)
        request = op._create_request(self.tag, uploaded.id, fingerprint, shard=label)
        batch = client.create_batch(
            request.input_file_id, request.endpoint, request.completion_window, request.metadata
        )
        self.log.info(
            "Created batch %s for shard %s (%d lines, file %s, x-request-id=%s)",
            batch.id,
            label.value,
            shard.summary.lines,
            uploaded.id,
            batch.x_request_id,
        )
        return batch

    def _add(self, label: ShardLabel, batch: Batch) -> None:
        first = not self.batches
        self.batches[label.value] = batch
        # on_kill reads this list: it holds every batch the moment it exists (XCom follows per fill).
        self.op._job_batch_ids.append(batch.id)
        if first:
            self.op.batch_id = batch.id
            self.op._publish(self.context, batch)
        if self.op._killed and self.op.cancel_on_kill:
            # on_kill ran while this batch was being created: it did not know it yet.
            cancel_many(
                self.client, list(self.op._job_batch_ids), budget=DEFAULT_KILL_BUDGET, logger=self.log
            )
            raise QwenBatchAirflowError(
                f"{self.op.task_id}: killed while creating shard batches; all cancelled"
            )

    def _progress(self) -> None:
        batches = list(self.batches.values())
        line = describe_job_progress(
            batches, sum(self.sizes.values()), sum(f["lines"] for f in self.facts.values())
        )
        if line != self._last_progress:
            self._last_progress = line
            self.log.info("%s", line)

    # ---- plans ----------------------------------------------------------------------------

    def _note_round(self, round_number: int, plan: ShardPlan) -> None:
        for shard in plan.shards:
            label = ShardLabel(round_number, shard.number).value
            fingerprint = shard_fingerprint(shard, self.op.completion_window, round_number).value
            known = self.fingerprints.get(label)
            if known is not None and known != fingerprint:
                raise QwenBatchAirflowError(
                    f"{self.op.task_id}: the input changed while the task ran: shard {label} (input "
                    f"{'lines' if round_number == 0 else 'resubmission lines'} {shard.first_line}-"
                    f"{shard.last_line}) is not what its batch was created from; clear the task to start over"
                )
            self.fingerprints[label] = fingerprint
            self.facts[label] = {
                "shard": shard.number,
                "round": round_number,
                "lines": shard.summary.lines,
                "first_line": shard.first_line if round_number == 0 else None,
                "last_line": shard.last_line if round_number == 0 else None,
            }
        if round_number in self.sizes and self.sizes[round_number] != len(plan.shards):
            raise QwenBatchAirflowError(
                f"{self.op.task_id}: the input changed while the task ran: round {round_number} now has "
                f"{len(plan.shards)} shards, {self.sizes[round_number]} before; clear the task to start over"
            )
        self.sizes[round_number] = len(plan.shards)

    def _plan(self, round_number: int) -> ShardPlan:
        plan = self._plans.get(round_number)
        if plan is not None:
            return plan
        if round_number == 0:
            # A resumed task reads the input again (its shard files were on the worker that deferred).
            plan = self.op._plan_input(self.context)
            if plan is None:
                raise QwenBatchAirflowError(f"{self.op.task_id}: a sharded job needs its input again")
        else:
            plan = self._resubmission_plan(round_number)
        self._plans[round_number] = plan
        self._note_round(round_number, plan)
        return plan

    def _workdir(self) -> Path:
        if self._work is None:
            self._work = tempfile.mkdtemp(prefix="qwenbatch-job-")
        return Path(self._work)

    def _resubmission_plan(self, round_number: int) -> ShardPlan:
        from airflow_provider_qwenbatch.operators._resubmit import resubmission_plan

        rounds = [
            [self.batches[ShardLabel(r, n).value] for n in self._numbers(r)] for r in range(round_number)
        ]
        return resubmission_plan(
            self.client,
            rounds,
            self._plan(0),
            self._workdir(),
            self.op.endpoint,
            max_lines_per_batch=self.op.max_lines_per_batch,
            downloads=self._downloads,
            logger=self.log,
        )

    def _plan_resubmission(self, round_number: int) -> int:
        if round_number not in self.sizes:
            self._plan(round_number)
        return self.sizes[round_number]

    # ---- deadline, deferral, end ----------------------------------------------------------

    def _deadline(self) -> float | None:
        if not self.op.timeout:
            return None
        created = [b.created_at for b in self.batches.values() if b.created_at]
        return (min(created) if created else self.started) + self.op.timeout

    def _check_deadline(self) -> None:
        deadline = self._deadline()
        if deadline is None or time.time() < deadline:
            return
        running = [b.id for b in self.batches.values() if not b.status.is_terminal]
        outcomes = cancel_many(
            self.client, running, budget=UNHURRIED_BUDGET, retries=UNHURRIED_RETRIES, logger=self.log
        )
        raise BatchTimeoutError(
            f"{self.op.task_id}: {len(running)} shard batch(es) still running after the timeout of "
            f"{self.op.timeout:.0f}s; cancel: "
            + ", ".join(f"{o.batch_id} {o.action.value}" for o in outcomes)
        )

    def _defer(self, round_number: int, active: list[Batch], pending: bool) -> None:
        from airflow_provider_qwenbatch.triggers.batches import BatchesStatusTrigger

        self._discard()  # the worker that resumes may be another machine: nothing local survives
        # The state goes to XCom, not the deferral's kwargs: dag.test() resumes with the event only.
        self.context["ti"].xcom_push(key=JOB_STATE_XCOM_KEY, value=self.state(round_number))
        self.op.defer(
            trigger=BatchesStatusTrigger(
                batch_ids=[b.id for b in active],
                conn_id=self.op.conn_id,
                poll_interval=self.op.poll_interval,
                deadline=self._deadline(),
                cancel_on_kill=self.op.cancel_on_kill,
                wake_on_first_end=pending,
            ),
            method_name=RESUME_METHOD,
            timeout=self.op._defer_timeout(self.op._started),
        )

    def _finish(self, round_number: int) -> dict[str, Any]:
        used = {b.id for b in self.batches.values()}
        leftovers = [b.id for b in self.pool.values() if b.id not in used and b.status.is_in_flight]
        if leftovers:
            self.log.warning("Cancelling %d batch(es) of earlier tries no round used", len(leftovers))
            cancel_many(self.client, leftovers, budget=UNHURRIED_BUDGET, logger=self.log)
        order = sorted(
            self.batches, key=lambda label: (self.facts[label]["round"], self.facts[label]["shard"])
        )
        entries = [(self.facts[label], self.batches[label]) for label in order]
        if self.op.delete_input_file:
            for _, batch in entries:
                self.op._delete_input(self.client, batch)
        first = entries[0][1]
        summary = job_summary(
            entries,
            rounds=round_number + 1,
            input_info=self.input_info,
            console_url=self.op._console_url(first.id),
        )
        self.op._done = first
        bad = [
            f"{label} ({self.batches[label].id}: {self.batches[label].status.value})"
            for label in order
            if not self.batches[label].status.is_success
        ]
        self.log.info(
            "Job ended %s: %d batches in %d round(s); %s",
            summary["status"],
            len(entries),
            round_number + 1,
            describe_job_progress([b for _, b in entries], len(entries)),
        )
        if summary["status"] != "completed":
            raise BatchFailedError(
                f"{self.op.task_id}: sharded job ended {summary['status']}: shards not completed: "
                + "; ".join(bad),
                first.id,
                summary["status"],
            )
        if bad:
            self.log.info(
                "Shards not completed, their retryable lines re-sent in later rounds: %s", "; ".join(bad)
            )
        return summary

    def _order(self) -> list[str]:
        return sorted(
            self.batches, key=lambda label: (self.facts[label]["round"], self.facts[label]["shard"])
        )

    def _summary(self, round_number: int) -> dict[str, Any]:
        entries = [(self.facts[label], self.batches[label]) for label in self._order()]
        return job_summary(
            entries,
            rounds=round_number + 1,
            input_info=self.input_info,
            console_url=self.op._console_url(entries[0][1].id),
        )

    def _discard(self) -> None:
        for plan in self._plans.values():
            plan.cleanup()
        self._plans.clear()
        self._downloads.clear()
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
