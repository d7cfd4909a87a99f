"""A sharded job's download: reading the job summary, refusing bad arguments, and the merge over HTTP.

The server is an ``httpx.MockTransport`` serving batches and result files; everything else
(the client, the merge, the operator's checks) is the real code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.exceptions import QwenBatchAirflowError
from airflow_provider_qwenbatch.job_results import JobShapeError, download_job_results, parse_job
from airflow_provider_qwenbatch.operators.batch import DownloadBatchResultsOperator

API_KEY = "sk-JOBTEST-4a2b"
BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"


def shard(n: int, rnd: int, batch_id: str, **extra: Any) -> dict[str, Any]:
    return {"shard": n, "round": rnd, "batch_id": batch_id, "lines": 2, **extra}


def job(*shards: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "kind": "sharded",
        "status": "completed",
        "batch_ids": [s["batch_id"] for s in shards],
        "shards": list(shards),
        "rounds": 1 + max(s["round"] for s in shards),
        "input": {"lines": 4, "bytes": 400, "model": "qwen-plus", "endpoint": "/v1/chat/completions"},
        **extra,
    }


# ---- reading the job ---------------------------------------------------------------------


def test_parse_job_reads_the_contract_shape_with_rounds_in_order() -> None:
    shape = parse_job(job(shard(1, 0, "b1"), shard(1, 1, "r1"), shard(2, 0, "b2")))
    # Resubmission rounds are merged after round 0 whatever the list order: the last outcome wins.
    assert [(b.batch_id, b.shard, b.round) for b in shape.batches] == [
        ("b1", 1, 0),
        ("b2", 2, 0),
        ("r1", 1, 1),
    ]
    assert (shape.model, shape.input_lines, shape.status) == ("qwen-plus", 4, "completed")


def test_parse_job_takes_a_single_batch_summary_as_one_shard() -> None:
    shape = parse_job({"batch_id": "batch_9", "status": "completed", "request_counts": {}})
    assert [(b.batch_id, b.shard, b.round) for b in shape.batches] == [("batch_9", 1, 0)]
    assert shape.model is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{'kind': 'sharded'}", r"got str; job is not templated"),
        (["b1"], r"job must be the submit task's return value \(a dict\), got list"),
        ({"status": "completed"}, r"neither 'kind' \(a sharded job\) nor 'batch_id'"),
        ({"kind": "mapped"}, r"job.kind must be 'sharded', got 'mapped'"),
        (job(shard(1, 0, "b1")) | {"batch_ids": []}, r"job.batch_ids must be a non-empty list"),
        (
            job(shard(1, 0, "b1"), shard(2, 0, "b2")) | {"batch_ids": ["b1"]},
            r"one entry per batch id \(1\), got 2",
        ),
        (
            job(shard(1, 0, "b1")) | {"batch_ids": ["bX"]},
            r"job.shards\[0\].batch_id is 'b1' but job.batch_ids\[0\] is 'bX'",
        ),
        (job(shard(1, 0, "b1")) | {"batch_ids": [7]}, r"job.batch_ids\[0\] must be a batch id"),
        (job(shard(1, 0, "b1"), shard(2, 0, "b1")), r"job.batch_ids\[1\] repeats 'b1' \(also at \[0\]\)"),
        (job(shard(0, 0, "b1")), r"job.shards\[0\].shard must be an integer >= 1, got 0"),
        (job(shard(1, -1, "b1")), r"job.shards\[0\].round must be an integer >= 0, got -1"),
        (job(shard(1, True, "b1")), r"job.shards\[0\].round must be an integer >= 0, got True"),
        (
            job(shard(1, 0, "b1"), shard(1, 0, "b2")),
            r"job.shards\[1\] is shard 1 of round 0 again \(also batch 'b1'\)",
        ),
        (job(shard(1, 0, "b1")) | {"input": {"lines": "4"}}, r"job.input.lines must be an integer >= 0"),
        (job(shard(1, 0, "b1")) | {"shards": ["b1"]}, r"job.shards\[0\] must be an object, got str"),
    ],
)
def test_parse_job_names_what_is_wrong(value: Any, message: str) -> None:
    with pytest.raises(JobShapeError, match=message):
        parse_job(value)


# ---- the operator's checks at DAG parse time ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"dl: give exactly one of batch_id .* and job .*; got neither"),
        ({"batch_id": "b", "job": job(shard(1, 0, "b1"))}, r"got both"),
        (
            {"job": job(shard(1, 0, "b1")), "results_by_custom_id": True},
            r"results_by_custom_id=True needs input_path",
        ),
        (
            {"batch_id": "b", "results_by_custom_id": True, "input_path": "/x"},
            r"results_by_custom_id apply to job=",
        ),
        ({"batch_id": "b", "prices": {"qwen-plus": {"input": 1}}}, r"prices apply to job="),
        ({"batch_id": "b", "input_path": "/x"}, r"input_path apply to job="),
        ({"job": {"kind": "sharded"}}, r"dl: job.batch_ids must be a non-empty list"),
        (
            {"job": "{{ ti.xcom_pull(task_ids='submit') }}"},
            r"dl: job must be .* got str; job is not templated",
        ),
        (
            {"job": job(shard(1, 0, "b1")), "prices": {"qwen-plus": {"input": -1}}},
            r"dl: prices: prices\['qwen-plus'\].input must be a number >= 0",
        ),
    ],
)
def test_operator_refuses_bad_arguments_when_the_dag_is_parsed(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DownloadBatchResultsOperator(task_id="dl", destination="/tmp/out", **kwargs)


def test_operator_links_the_submit_task_when_job_is_its_xcomarg() -> None:
    from airflow.sdk import DAG, task

    with DAG("d", schedule=None):

        @task
        def submit() -> dict[str, Any]:
            return job(shard(1, 0, "b1"))

        sub = submit()
        dl = DownloadBatchResultsOperator(task_id="dl", job=sub, destination="/tmp/out")
    assert dl.upstream_task_ids == {"submit"}


# ---- the merge over HTTP -----------------------------------------------------------------


def ok_line(cid: str, prompt: int = 10, completion: int = 5) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {
        "id": f"r-{cid}",
        "custom_id": cid,
        "response": {"status_code": 200, "request_id": "x", "body": {"model": "qwen-plus", "usage": usage}},
        "error": None,
    }


def err_line(cid: str, status: int = 500) -> dict[str, Any]:
    return {
        "id": f"r-{cid}",
        "custom_id": cid,
        "response": {"status_code": status, "request_id": "x", "body": {"error": {"code": "InternalError"}}},
        "error": {"code": "InternalError", "message": "boom"},
    }


class Server:
    """Batches and result files by id; records every path asked."""

    def __init__(self) -> None:
        self.batches: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.asked: list[str] = []

    def add(
        self, batch_id: str, out: list[dict[str, Any]], err: list[dict[str, Any]], status: str = "completed"
    ) -> None:
        body: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "status": status,
            "created_at": 1700000000,
            "request_counts": {"total": len(out) + len(err), "completed": len(out), "failed": len(err)},
        }
        for kind, lines in (("output", out), ("error", err)):
            if lines:
                fid = f"file-{kind}-{batch_id}"
                self.files[fid] = "".join(json.dumps(x) + "\n" for x in lines).encode()
                body[f"{kind}_file_id"] = fid
        self.batches[batch_id] = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/compatible-mode/v1")
        self.asked.append(path)
        parts = path.strip("/").split("/")
        if parts[0] == "batches" and parts[1] in self.batches:
            return httpx.Response(
                200, json=self.batches[parts[1]], headers={"x-request-id": f"req-{parts[1]}"}
            )
        if parts[0] == "files" and parts[-1] == "content" and parts[1] in self.files:
            return httpx.Response(200, content=self.files[parts[1]])
        return httpx.Response(404, json={"error": {"code": "NotFound", "message": path}})


def client_of(server: Server) -> BatchClient:
    return BatchClient(API_KEY, BASE_URL, transport=httpx.MockTransport(server))


PRICES = {"qwen-plus": {"input": 0.8, "output": 2.0, "unit": 1000, "currency": "CNY", "batch_discount": 0.5}}


def test_merge_keeps_the_resubmission_outcome_and_prices_the_final_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server()
    server.add("b1", [ok_line("a")], [err_line("b")])
    server.add("b2", [ok_line("c")], [err_line("d", status=400)])
    server.add("r1", [ok_line("b", prompt=100, completion=50)], [])
    the_job = job(shard(1, 0, "b1"), shard(2, 0, "b2"), shard(1, 1, "r1"))
    with caplog.at_level(logging.INFO), client_of(server) as client:
        result = download_job_results(
            client, the_job, str(tmp_path / "dest"), prices=PRICES, logger=logging.getLogger("t")
        )
    out = [json.loads(x)["custom_id"] for x in Path(result["output_path"]).read_text().splitlines()]
    errs = [json.loads(x)["custom_id"] for x in Path(result["error_path"]).read_text().splitlines()]
    assert result["output_path"] == str(tmp_path / "dest" / "output.jsonl")
    assert sorted(out) == ["a", "b", "c"] and errs == ["d"]
    assert (result["lines"], result["succeeded"], result["failed"], result["replaced"]) == (4, 3, 1, 1)
    assert result["missing"] == 0
    assert result["tokens"] == {"prompt": 120, "completion": 60, "total": 180}
    # (120 * 0.8 + 60 * 2.0) / 1000 * 0.5
    assert result["cost"] == {"amount": pytest.approx(0.108), "currency": "CNY", "model": "qwen-plus"}
    # b's retried answer counts under shard 1, where it first was.
    per = {
        s["shard"]: (s["lines"], s["succeeded"], s["failed"], s["tokens"]["total"])
        for s in result["per_shard"]
    }
    assert per == {1: (2, 2, 0, 165), 2: (2, 1, 1, 15)}
    assert [s["cost"] for s in result["per_shard"]] == [pytest.approx(0.099), pytest.approx(0.009)]
    assert [(b["batch_id"], b["shard"], b["round"]) for b in result["batches"]] == [
        ("b1", 1, 0),
        ("b2", 2, 0),
        ("r1", 1, 1),
    ]
    assert "shard 3/3 downloaded: batch r1 (shard 1, round 1)" in caplog.text


def test_requests_without_a_result_are_missing(tmp_path: Path) -> None:
    server = Server()
    server.add("b1", [ok_line("a")], [], status="expired")
    with client_of(server) as client:
        result = download_job_results(client, job(shard(1, 0, "b1")), str(tmp_path))
    assert (result["lines"], result["missing"], result["cost"]) == (1, 3, None)


def test_an_unfinished_batch_stops_the_download_naming_it(tmp_path: Path) -> None:
    server = Server()
    server.add("b1", [ok_line("a")], [])
    server.add("b2", [], [], status="in_progress")
    with client_of(server) as client, pytest.raises(QwenBatchAirflowError) as info:
        download_job_results(client, job(shard(1, 0, "b1"), shard(2, 0, "b2")), str(tmp_path / "dest"))
    assert "batch b2 (shard 2, round 0) is still in_progress" in str(info.value)
    assert info.value.request_id == "req-b2"
    assert not (tmp_path / "dest").exists()  # nothing half-merged at the destination


def test_a_bad_price_table_fails_before_any_download(tmp_path: Path) -> None:
    server = Server()
    server.add("b1", [ok_line("a")], [])
    with (
        client_of(server) as client,
        pytest.raises(ValueError, match=r"prices\['qwen-plus'\] has unknown keys"),
    ):
        download_job_results(
            client, job(shard(1, 0, "b1")), str(tmp_path), prices={"qwen-plus": {"input": 1, "x": 2}}
        )
    assert server.asked == []


def test_input_order_without_input_path_is_refused(tmp_path: Path) -> None:
    server = Server()
    with (
        client_of(server) as client,
        pytest.raises(ValueError, match="results_by_custom_id=True needs input_path"),
    ):
        download_job_results(client, job(shard(1, 0, "b1")), str(tmp_path), results_by_custom_id=True)
    assert server.asked == []


def test_a_bad_job_at_run_time_fails_the_task_without_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an XComArg resolves to is checked before any request (the real resolution: see the dag.test() test)."""
    from airflow_provider_qwenbatch.compat import AirflowFailException

    # No network here: a request would fail with another error than the one expected.
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_BATCH_DEFAULT",
        json.dumps({"conn_type": "qwen_batch", "password": API_KEY, "host": BASE_URL}),
    )
    dl = DownloadBatchResultsOperator(task_id="dl", job=job(shard(1, 0, "b1")), destination=str(tmp_path))
    dl.job = {
        "kind": "sharded",
        "batch_ids": ["b1"],
        "shards": [{"shard": 1}],
    }  # as an upstream task returned it
    with pytest.raises(
        AirflowFailException, match=r"dl: job.shards\[0\].round must be an integer >= 0, got None"
    ):
        dl.execute({})  # type: ignore[arg-type]
