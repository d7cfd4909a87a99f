"""SubmitBatchOperator on an input of many shards, against the emulator: one task, many batches.

The truth is read from the emulator (its batches, its request log, its stored input files);
the task instance is the XCom-checking stand-in of :mod:`tests.integration.helpers` for the
worker path. The deferred path runs under ``dag.test()`` in ``test_sharded_deferred.py``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.identity import BatchTag
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.operators._base import BATCH_IDS_XCOM_KEY
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from tests.integration.conftest import API_KEY
from tests.integration.helpers import StubTI, chat_requests, context_for, wait_until

pytestmark = pytest.mark.integration


def _submit(**kw: Any) -> SubmitBatchOperator:
    kw.setdefault("task_id", "submit")
    kw.setdefault("poll_interval", 0.1)
    kw.setdefault("deferrable", False)
    return SubmitBatchOperator(**kw)


def _creates(emu: EmulatorHandle) -> list[dict[str, Any]]:
    return [e for e in emu.requests(endpoint="create_batch") if e.get("status") == 200]


def _ds_names(emu: EmulatorHandle) -> dict[str, str]:
    return {b["batch"]["id"]: b["batch"]["metadata"]["ds_name"] for b in emu.batches(lines=False)}


def _stored_input_ids(files: Path, file_id: str) -> list[str]:
    matches = [p for p in files.rglob("*") if p.is_file() and file_id in p.name]
    assert matches, f"input file {file_id} not stored under {files}"
    return [json.loads(line)["custom_id"] for line in matches[0].read_text().splitlines() if line.strip()]


def test_a_job_of_three_shards_completes_with_every_request_in_exactly_one_shard(emu: EmulatorHandle) -> None:
    rows = chat_requests(10)
    ti = StubTI(try_number=1)
    summary = _submit(requests=rows, max_lines_per_batch=4).execute(context_for(ti))

    assert summary["kind"] == "sharded" and summary["status"] == "completed"
    assert [s["lines"] for s in summary["shards"]] == [4, 4, 2]
    assert [(s["first_line"], s["last_line"]) for s in summary["shards"]] == [(1, 4), (5, 8), (9, 10)]
    assert summary["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert ti.xcom[BATCH_IDS_XCOM_KEY] == summary["batch_ids"] and len(set(summary["batch_ids"])) == 3
    assert ti.xcom["batch_id"] == summary["batch_ids"][0]
    # Each batch carries the task's tag, its own shard fingerprint and its shard label.
    tag = BatchTag(ti.dag_id, ti.run_id, ti.task_id)
    names = _ds_names(emu)
    labels = [tag.shard_in(names[b]) for b in summary["batch_ids"]]
    assert [label.value for label in labels if label] == ["r0s1", "r0s2", "r0s3"]
    assert len({tag.fingerprint_in(names[b]) for b in summary["batch_ids"]}) == 3


def test_every_request_reaches_the_server_once_and_unchanged(
    emu: EmulatorHandle, stored_emulator: tuple[EmulatorHandle, Path]
) -> None:
    rows = chat_requests(7)
    rows[3]["body"]["messages"][0]["content"] = "keep {{ ds }} and {% raw %} as they are"
    summary = _submit(requests=rows, max_lines_per_batch=3).execute(context_for(StubTI()))
    files = stored_emulator[1]
    sent: list[str] = []
    for shard in summary["shards"]:
        sent += _stored_input_ids(files, shard["input_file_id"])
    assert sorted(sent) == sorted(r["custom_id"] for r in rows)
    stored = "".join(
        p.read_text()
        for p in files.rglob("*")
        if p.is_file() and summary["shards"][1]["input_file_id"] in p.name
    )
    assert "keep {{ ds }} and {% raw %} as they are" in stored


def test_max_active_batches_is_honoured_and_later_shards_created_as_earlier_ones_end(
    emu: EmulatorHandle,
) -> None:
    emu.set_config(lines_per_second=20.0)
    summary = _submit(requests=chat_requests(12), max_lines_per_batch=3, max_active_batches=2).execute(
        context_for(StubTI())
    )
    creates = _creates(emu)
    assert len(creates) == 4 and summary["status"] == "completed"
    # The emulator counts its unfinished batches right after each create: never more than 2.
    assert max(e["unfinished"] for e in creates) <= 2
    assert any(e["unfinished"] == 2 for e in creates), "two shards should have run side by side"


def test_a_retry_reattaches_to_every_shard_and_creates_only_the_missing_one(emu: EmulatorHandle) -> None:
    rows = chat_requests(9)
    first = _submit(requests=rows, max_lines_per_batch=3).execute(context_for(StubTI(try_number=1)))
    assert len(_creates(emu)) == 3
    again = _submit(requests=rows, max_lines_per_batch=3).execute(context_for(StubTI(try_number=2)))
    assert again["batch_ids"] == first["batch_ids"]
    assert len(_creates(emu)) == 3, "a retry of the same input must create no batch"


def test_a_shard_that_ended_badly_is_the_only_one_paid_again(emu: EmulatorHandle) -> None:
    emu.set_config(lines_per_second=1.0)
    rows = chat_requests(9)
    first = _submit(requests=rows, max_lines_per_batch=3, wait_for_completion=False)
    ctx = context_for(StubTI(dag_id="d2", try_number=1))
    ids = first.execute(ctx)["batch_ids"]
    from airflow_provider_qwenbatch.client.sync import BatchClient

    with BatchClient(API_KEY, emu.base_url) as client:
        client.cancel_batch(ids[1])  # still running: it ends cancelled
    wait_until(lambda: _status(emu, ids[1]) == "cancelled", what="shard 2 cancelled")
    emu.set_config(lines_per_second=200.0)
    retry = _submit(requests=rows, max_lines_per_batch=3).execute(
        context_for(StubTI(dag_id="d2", try_number=2))
    )
    assert len(_creates(emu)) == 4, "only the cancelled shard gets a new batch"
    assert retry["batch_ids"][0] == ids[0] and retry["batch_ids"][2] == ids[2]
    assert retry["batch_ids"][1] not in ids and retry["status"] == "completed"


def _status(emu: EmulatorHandle, batch_id: str) -> str:
    return str(emu.batch_state(batch_id)["batch"]["status"])


def test_a_retry_with_changed_input_cancels_the_old_shards_it_cannot_use(emu: EmulatorHandle) -> None:
    # 15 s a shard, and the emulator's rate is global: the old shards are still running when the
    # retry looks at them, however loaded the machine. (Raising the rate before the retry let a
    # loaded run complete an old shard first; a completed batch is rightly not cancelled.)
    emu.set_config(lines_per_second=0.2)
    old = _submit(requests=chat_requests(6), max_lines_per_batch=3, wait_for_completion=False)
    assert old.execute(context_for(StubTI(try_number=1)))["status"] == "running"
    assert not emu.requests(endpoint="cancel_batch")
    changed = chat_requests(6)
    for row in changed:
        row["body"]["messages"][0]["content"] += " (v2)"
    retry = _submit(requests=changed, max_lines_per_batch=3, wait_for_completion=False)
    summary = retry.execute(context_for(StubTI(try_number=2)))
    assert summary["status"] == "running" and len(_creates(emu)) == 4
    old_ids = {e["batch_id"] for e in _creates(emu)[:2]}
    assert not old_ids & set(summary["batch_ids"])
    cancels = [e["batch_id"] for e in emu.requests(endpoint="cancel_batch")]
    assert sorted(cancels) == sorted(old_ids), "each old shard cancelled once, no new one"
    states = {b["batch"]["id"]: b["batch"]["status"] for b in emu.batches(lines=False)}
    assert all(states[b] in ("cancelling", "cancelled") for b in old_ids)
    # The new shards are the changed input's own: they run to the end.
    emu.set_config(lines_per_second=200.0)
    again = _submit(requests=changed, max_lines_per_batch=3).execute(context_for(StubTI(try_number=3)))
    assert again["status"] == "completed" and again["batch_ids"] == summary["batch_ids"]
    assert len(_creates(emu)) == 4


def test_on_kill_cancels_every_unfinished_shard_concurrently(emu: EmulatorHandle) -> None:
    emu.set_config(lines_per_second=0.2)  # 15 s a shard: none ends (and frees a slot) before the kill
    op = _submit(requests=chat_requests(12), max_lines_per_batch=3, max_active_batches=3)
    ctx = context_for(StubTI())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(ctx)
        except BaseException as exc:  # the wait ends once its batches are cancelled
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: len(_creates(emu)) == 3, what="three shard batches")
    op.on_kill()
    ids = [e["batch_id"] for e in _creates(emu)]
    cancels = {e["batch_id"] for e in emu.requests(endpoint="cancel_batch")}
    assert cancels == set(ids[:3])
    t.join(30)
    assert errors, "the task must not succeed once killed"
    assert len(_creates(emu)) == 3, "no shard is created after the kill"


def test_resubmit_failed_sends_only_the_retryable_failures_again(
    emu: EmulatorHandle, stored_emulator: tuple[EmulatorHandle, Path]
) -> None:
    emu.set_config(line_error_rate=0.4, line_soft_error_rate=0.2, transient_line_errors=True)
    rows = chat_requests(20)
    summary = _submit(requests=rows, max_lines_per_batch=8, resubmit_failed=1).execute(context_for(StubTI()))
    first_round = [s for s in summary["shards"] if s["round"] == 0]
    later = [s for s in summary["shards"] if s["round"] == 1]
    assert len(first_round) == 3 and summary["rounds"] == 2
    # Which lines failed how, read from the emulator's own per-line outcomes.
    retryable, content = set(), set()
    for b in emu.batches(lines=True):
        if b["batch"]["id"] in {s["batch_id"] for s in first_round}:
            for line in b["results"]:
                if line.get("outcome") == "error":
                    retryable.add(line["custom_id"])
                elif line.get("outcome") == "soft_error":
                    content.add(line["custom_id"])
    assert retryable, "the emulator should have failed some lines with a server error"
    resent: list[str] = []
    for shard in later:
        resent += _stored_input_ids(stored_emulator[1], shard["input_file_id"])
    assert sorted(resent) == sorted(retryable)
    assert not set(resent) & content, "content refusals are never sent again"
    # The resent lines drew their outcome again (transient errors): most now succeed.
    assert sum(s["request_counts"]["completed"] for s in later) >= 1


def test_max_input_tokens_refuses_before_anything_is_uploaded(emu: EmulatorHandle) -> None:
    from airflow_provider_qwenbatch.exceptions import BatchInputError

    rows = chat_requests(30)
    with pytest.raises(BatchInputError) as err:
        _submit(requests=rows, max_lines_per_batch=10, max_input_tokens=50).execute(context_for(StubTI()))
    assert "too_many_input_tokens" in str(err.value) and "an estimate" in str(err.value)
    assert not emu.requests(endpoint="upload_file") and not _creates(emu)


def test_strict_cost_refuses_a_thinking_model_without_enable_thinking_before_upload(
    emu: EmulatorHandle,
) -> None:
    from airflow_provider_qwenbatch.exceptions import BatchInputError

    rows = chat_requests(5, model="qwen3.6-plus")
    with pytest.raises(BatchInputError) as err:
        _submit(requests=rows, max_lines_per_batch=2, strict_cost=True).execute(context_for(StubTI()))
    assert "enable_thinking" in str(err.value) and "request 1" in str(err.value)
    assert not emu.requests(endpoint="upload_file")


def test_a_duplicate_custom_id_across_shards_is_named_with_its_original_position(emu: EmulatorHandle) -> None:
    from airflow_provider_qwenbatch.exceptions import BatchInputError

    rows = chat_requests(9)
    rows[7]["custom_id"] = rows[1]["custom_id"]  # shard 3 repeats an id of shard 1
    with pytest.raises(BatchInputError) as err:
        _submit(requests=rows, max_lines_per_batch=3).execute(context_for(StubTI()))
    assert "request 8 (index 7)" in str(err.value) and "duplicate_custom_id" in str(err.value)
    assert "shard" not in str(err.value)
    assert not emu.requests(endpoint="upload_file")


def test_resubmit_failed_with_nothing_to_resend_runs_one_round(emu: EmulatorHandle) -> None:
    summary = _submit(requests=chat_requests(6), max_lines_per_batch=3, resubmit_failed=2).execute(
        context_for(StubTI())
    )
    assert summary["rounds"] == 1 and summary["status"] == "completed" and len(_creates(emu)) == 2


def test_submit_then_download_gives_every_custom_id_once_with_its_last_outcome(
    emu: EmulatorHandle, tmp_path: Path
) -> None:
    """The real job summary of a 3-shard job with a resubmission round, merged by the download operator."""
    from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator

    emu.set_config(line_error_rate=0.3, transient_line_errors=True)
    rows = chat_requests(15)
    ti = StubTI()
    job = _submit(requests=rows, max_lines_per_batch=5, resubmit_failed=2).execute(context_for(ti))
    assert job["rounds"] >= 2
    summary = DownloadBatchResultsOperator(
        task_id="download", job=job, destination=str(tmp_path / "out")
    ).execute(context_for(StubTI(task_id="download")))
    out = [json.loads(line) for line in (tmp_path / "out" / "output.jsonl").read_text().splitlines()]
    err_file = tmp_path / "out" / "errors.jsonl"
    errs = [json.loads(line) for line in err_file.read_text().splitlines()] if err_file.exists() else []
    ids = [r["custom_id"] for r in out + errs]
    assert sorted(ids) == sorted(r["custom_id"] for r in rows), "each custom_id exactly once"
    assert summary["lines"] == 15 and summary["succeeded"] == len(out)
    # The last round decides: a request that failed in round 0 and succeeded later is a success.
    first_failed = {
        line["custom_id"]
        for b in emu.batches(lines=True)
        if b["batch"]["id"] in {s["batch_id"] for s in job["shards"] if s["round"] == 0}
        for line in b["results"]
        if line["outcome"] == "error"
    }
    assert first_failed & {r["custom_id"] for r in out}, "some round-0 failures succeeded on resubmission"
