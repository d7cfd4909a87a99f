"""Downloading a sharded job: three real batches on the emulator (and a resubmission round) become
one output.jsonl and one errors.jsonl, each custom_id once with its last outcome.

The job summary is built as the submit task returns it (contract of issue 12: ``kind``,
``batch_ids``, ``shards`` with ``shard``/``round`` and the batch's own summary), from batches the
real client created on the emulator; some lines fail by the emulator's ``line_error_rate``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator
from airflow_provider_qwenbatch.summary import batch_summary
from tests.integration.dag_folder import load_dags
from tests.integration.helpers import StubTI, context_for, create_batch

pytestmark = pytest.mark.integration

SHARDS = 3
PER_SHARD = 10
ASSET_URI = "file:///qwenbatch-tests/job-results"


def rows(first: int, count: int) -> list[dict[str, Any]]:
    """Requests row-<first>.. with distinct custom_ids (the input's order is their number)."""
    return [
        {
            "custom_id": f"row-{i:03d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "qwen-flash", "messages": [{"role": "user", "content": f"question {i}"}]},
        }
        for i in range(first, first + count)
    ]


def run_batch(emulator: EmulatorHandle, tmp: Path, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Create a batch of ``requests`` on the emulator and wait until it ended; its summary."""
    batch = create_batch(emulator, tmp, rows=requests)
    with BatchClient(emulator.api_key, emulator.base_url) as client:
        return batch_summary(client.wait_for_batch(batch.id, poll_interval=0.1, timeout=30))


def sharded_job(entries: list[tuple[int, int, dict[str, Any]]], lines: int) -> dict[str, Any]:
    """The submit task's return value of a sharded job: (shard, round, batch summary) per batch."""
    return {
        "kind": "sharded",
        "status": "completed",
        "batch_ids": [s["batch_id"] for _, _, s in entries],
        "shards": [{"shard": n, "round": r, **s} for n, r, s in entries],
        "rounds": 1 + max(r for _, r, _ in entries),
        "request_counts": {"total": lines, "completed": 0, "failed": 0},
        "input": {"lines": lines, "bytes": 0, "model": "qwen-flash", "endpoint": "/v1/chat/completions"},
        "console_url": "",
    }


def failed_ids(emulator: EmulatorHandle, batch_id: str) -> list[str]:
    """The custom_ids the emulator answered with a failure in this batch (its own record)."""
    return [r["custom_id"] for r in emulator.batch_state(batch_id)["results"] if r["status_code"] != 200]


@pytest.fixture
def job_input(emulator: EmulatorHandle, tmp_path: Path) -> dict[str, Any]:
    """Three finished shards of 10 lines, some failed; the whole input written as one JSONL file."""
    emulator.set_config(line_error_rate=0.25, seed=7)  # 3, 4 and 3 failed lines
    everything = rows(0, SHARDS * PER_SHARD)
    input_path = tmp_path / "input.jsonl"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in everything))
    summaries = [
        run_batch(emulator, tmp_path, everything[k * PER_SHARD : (k + 1) * PER_SHARD]) for k in range(SHARDS)
    ]
    failures = {s["batch_id"]: failed_ids(emulator, s["batch_id"]) for s in summaries}
    assert all(failures.values()), "every shard must have failed lines for these tests to mean anything"
    return {
        "job": sharded_job([(k + 1, 0, s) for k, s in enumerate(summaries)], SHARDS * PER_SHARD),
        "summaries": summaries,
        "failures": failures,
        "requests": everything,
        "input_path": str(input_path),
    }


def ids_of(path: str) -> list[str]:
    return [json.loads(x)["custom_id"] for x in Path(path).read_text().splitlines()]


def all_ids() -> list[str]:
    return [r["custom_id"] for r in rows(0, SHARDS * PER_SHARD)]


def test_three_shards_merge_into_one_output_and_one_error_file(
    emulator: EmulatorHandle, job_input: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    result = DownloadBatchResultsOperator(task_id="dl", job=job_input["job"], destination=str(dest)).execute(
        context_for(StubTI())
    )
    assert sorted(p.name for p in dest.iterdir()) == ["errors.jsonl", "output.jsonl"]
    out, errs = ids_of(result["output_path"]), ids_of(result["error_path"])
    assert sorted(out + errs) == all_ids()  # every custom_id exactly once across the two files
    expected_failed = sorted(i for f in job_input["failures"].values() for i in f)
    assert sorted(errs) == expected_failed
    assert (result["lines"], result["failed"], result["succeeded"]) == (
        30,
        len(expected_failed),
        30 - len(expected_failed),
    )
    assert result["missing"] == 0 and result["replaced"] == 0
    per = {s["shard"]: s["failed"] for s in result["per_shard"]}
    assert per == {
        k + 1: len(job_input["failures"][s["batch_id"]]) for k, s in enumerate(job_input["summaries"])
    }
    assert result["batch_ids"] == [s["batch_id"] for s in job_input["summaries"]]
    assert result["tokens"]["total"] > 0
    assert result["cost"] is None  # no price table given or configured


def test_threshold_applies_to_the_total_of_all_shards(
    emulator: EmulatorHandle, job_input: dict[str, Any], tmp_path: Path
) -> None:
    per_shard = [len(f) for f in job_input["failures"].values()]
    total = sum(per_shard)
    limit = total - 1
    assert max(per_shard) <= limit  # no shard alone is over it: only the total is
    op = DownloadBatchResultsOperator(
        task_id="dl",
        job=job_input["job"],
        destination=str(tmp_path / "dest"),
        max_failed_lines=limit,
        delete_remote_files=True,
    )
    with pytest.raises(
        Exception, match=rf"dl: job of 3 batches has {total} failed lines of 30 .* over the threshold"
    ):
        op.execute(context_for(StubTI()))
    assert (tmp_path / "dest" / "output.jsonl").is_file()  # files kept
    assert emulator.requests(endpoint="delete_file") == []  # and nothing deleted on the server
    ok = DownloadBatchResultsOperator(
        task_id="dl", job=job_input["job"], destination=str(tmp_path / "dest2"), max_failed_lines=total
    ).execute(context_for(StubTI()))
    assert ok["failed"] == total


def test_results_by_custom_id_writes_input_order(
    emulator: EmulatorHandle, job_input: dict[str, Any], tmp_path: Path
) -> None:
    unordered = DownloadBatchResultsOperator(
        task_id="dl", job=job_input["job"], destination=str(tmp_path / "plain")
    ).execute(context_for(StubTI()))
    # The emulator shuffles each output file (as the real service may): results order is not input order.
    assert ids_of(unordered["output_path"]) != sorted(ids_of(unordered["output_path"]))
    result = DownloadBatchResultsOperator(
        task_id="dl",
        job=job_input["job"],
        destination=str(tmp_path / "ordered"),
        results_by_custom_id=True,
        input_path=job_input["input_path"],
    ).execute(context_for(StubTI()))
    out, errs = ids_of(result["output_path"]), ids_of(result["error_path"])
    assert out == [i for i in all_ids() if i in set(out)]
    assert errs == [i for i in all_ids() if i in set(errs)]
    assert sorted(out + errs) == all_ids()
    assert result["order"] == "input"


@pytest.mark.parametrize("in_input_order", [True, False])
def test_a_resubmission_round_replaces_the_first_outcome(
    emulator: EmulatorHandle, job_input: dict[str, Any], tmp_path: Path, in_input_order: bool
) -> None:
    failed = sorted(i for f in job_input["failures"].values() for i in f)
    emulator.set_config(line_error_rate=0.0)  # the second try succeeds
    again = [r for r in job_input["requests"] if r["custom_id"] in failed]
    retry = run_batch(emulator, tmp_path, again)
    job = sharded_job(
        [(k + 1, 0, s) for k, s in enumerate(job_input["summaries"])] + [(1, 1, retry)], SHARDS * PER_SHARD
    )
    result = DownloadBatchResultsOperator(
        task_id="dl",
        job=job,
        destination=str(tmp_path / "dest"),
        results_by_custom_id=in_input_order,
        input_path=job_input["input_path"] if in_input_order else None,
        max_failed_lines=0,
    ).execute(context_for(StubTI()))
    out = ids_of(result["output_path"])
    assert (out if in_input_order else sorted(out)) == all_ids()  # everything answered, once
    assert ids_of(result["error_path"]) == []
    assert (result["lines"], result["succeeded"], result["failed"], result["replaced"]) == (
        30,
        30,
        0,
        len(failed),
    )
    # The retried answers count under the shard that first had them.
    assert [(s["shard"], s["lines"], s["failed"]) for s in result["per_shard"]] == [
        (1, 10, 0),
        (2, 10, 0),
        (3, 10, 0),
    ]
    assert result["batches"][-1] == {**result["batches"][-1], "batch_id": retry["batch_id"], "round": 1}


def test_openlineage_facets_cover_every_shard(
    emulator: EmulatorHandle, job_input: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("airflow.providers.openlineage")
    from airflow.providers.openlineage.extractors.base import DefaultExtractor

    op = DownloadBatchResultsOperator(task_id="dl", job=job_input["job"], destination=str(tmp_path / "dest"))
    result = op.execute(context_for(StubTI()))
    lineage = DefaultExtractor(op).extract_on_complete(None)  # type: ignore[arg-type]
    assert lineage is not None
    host = emulator.base_url.split("://", 1)[1].split("/", 1)[0]
    remote = {f for s in job_input["summaries"] for f in (s["output_file_id"], s["error_file_id"]) if f}
    assert len(remote) == 6
    assert {(d.namespace, d.name) for d in lineage.inputs} == {
        (f"dashscope://{host}", f"files/{f}") for f in remote
    }
    assert {(d.namespace, d.name) for d in lineage.outputs} == {
        ("file", result["output_path"]),
        ("file", result["error_path"]),
    }


@pytest.fixture
def memory_store() -> None:
    """An object store Airflow's ObjectStoragePath resolves (fsspec's in-memory filesystem)."""
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())


@pytest.mark.usefixtures("memory_store")
def test_object_storage_input_path_and_destination(
    emulator: EmulatorHandle, job_input: dict[str, Any]
) -> None:
    from airflow.sdk import ObjectStoragePath

    src = ObjectStoragePath("memory://qwen-job-in/input.jsonl")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(Path(job_input["input_path"]).read_bytes())
    result = DownloadBatchResultsOperator(
        task_id="dl",
        job=job_input["job"],
        destination="memory://qwen-job-out/results",
        results_by_custom_id=True,
        input_path="memory://qwen-job-in/input.jsonl",
    ).execute(context_for(StubTI()))
    # universal-pathlib 0.2 (what Airflow 3.1 allows) spells it memory:///...: the same object.
    assert (
        result["output_path"].replace("memory:///", "memory://")
        == "memory://qwen-job-out/results/output.jsonl"
    )
    out = [
        json.loads(x)["custom_id"] for x in ObjectStoragePath(result["output_path"]).read_text().splitlines()
    ]
    errs = [
        json.loads(x)["custom_id"] for x in ObjectStoragePath(result["error_path"]).read_text().splitlines()
    ]
    assert out == [i for i in all_ids() if i in set(out)]
    assert sorted(out + errs) == all_ids()


def test_a_single_batch_summary_is_a_job_of_one_shard(
    emulator: EmulatorHandle, job_input: dict[str, Any], tmp_path: Path
) -> None:
    single = job_input["summaries"][1]  # what the submit task returns when the input fitted one batch
    prices = {"qwen-flash": {"input": 1.0, "output": 2.0, "unit": 1000}}
    result = DownloadBatchResultsOperator(
        task_id="dl", job=single, destination=str(tmp_path / "dest"), prices=prices
    ).execute(context_for(StubTI()))
    assert result["output_path"] == str(tmp_path / "dest" / "output.jsonl")
    assert sorted(ids_of(result["output_path"]) + ids_of(result["error_path"])) == all_ids()[10:20]
    assert result["batch_ids"] == [single["batch_id"]]
    # The model for the price comes from the answers (a single-batch summary does not name it).
    tokens = result["tokens"]
    assert result["cost"]["amount"] == pytest.approx(
        (tokens["prompt"] * 1.0 + tokens["completion"] * 2.0) / 1000
    )


DAG_FILE = textwrap.dedent(
    f"""
    import json
    import os

    from airflow.sdk import DAG, Asset, task

    from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator

    with DAG(dag_id="qwen_download_job", schedule=None, catchup=False):

        @task
        def submit():
            # Stands in for the submit task: returns the job summary built by the test.
            with open(os.environ["QWEN_TEST_JOB"]) as fh:
                return json.load(fh)

        DownloadBatchResultsOperator(
            task_id="download",
            job=submit(),
            destination=os.environ.get("QWEN_TEST_DEST", "/nonexistent"),
            results_by_custom_id=True,
            input_path=os.environ.get("QWEN_TEST_INPUT", "/nonexistent"),
            prices={{"qwen-flash": {{"input": 0.15, "output": 1.5, "unit": 1000000, "currency": "CNY",
                                     "batch_discount": 0.5}}}},
            outlets=[Asset(name="qwen_job_results", uri="{ASSET_URI}")],
        )
    """
)


def test_under_dag_test_the_job_comes_from_the_submit_tasks_xcom(
    airflow_db: Path,
    emulator: EmulatorHandle,
    job_input: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job_input["job"]))
    monkeypatch.setenv("QWEN_TEST_JOB", str(job_file))
    monkeypatch.setenv("QWEN_TEST_DEST", str(tmp_path / "dest"))
    monkeypatch.setenv("QWEN_TEST_INPUT", job_input["input_path"])
    dags = load_dags(tmp_path, monkeypatch, "qwen_download_job", DAG_FILE)
    dr = dags["qwen_download_job"].test()
    assert str(dr.state) == "success"

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        (event,) = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == ASSET_URI, AssetEvent.source_run_id == dr.run_id)
        ).all()
        extra = dict(event.extra)
        value = session.scalars(
            select(XComModel.value).where(
                XComModel.run_id == dr.run_id,
                XComModel.task_id == "download",
                XComModel.key == "return_value",
            )
        ).one()
    result = value if isinstance(value, dict) else json.loads(value)
    failed = sum(len(f) for f in job_input["failures"].values())
    assert extra["batch_ids"] == [s["batch_id"] for s in job_input["summaries"]]
    assert (extra["lines"], extra["failed"], extra["succeeded"]) == (30, failed, 30 - failed)
    assert extra["output_paths"] == [
        str(tmp_path / "dest" / "output.jsonl"),
        str(tmp_path / "dest" / "errors.jsonl"),
    ]
    out = ids_of(result["output_path"])
    assert out == [i for i in all_ids() if i in set(out)]
    tokens = result["tokens"]
    expected = (tokens["prompt"] * 0.15 + tokens["completion"] * 1.5) / 1_000_000 * 0.5
    assert result["cost"]["amount"] == pytest.approx(expected) and result["cost"]["currency"] == "CNY"
    assert result["cost"]["amount"] > 0
