"""``@task.qwen_batch`` in a DAG file under ``dag.test()``, against the emulator over loopback.

The decorator is reached as a user reaches it (``from airflow.sdk import task; task.qwen_batch``),
so every test here also proves Airflow's ProvidersManager found it in the provider info. What
reached the server is read back from the emulator's stored input files and request log.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle, running_emulator
from airflow_provider_qwenbatch.exceptions import BatchInputError
from tests.integration.conftest import API_KEY, FAST, conn_json
from tests.integration.dag_folder import load_dags
from tests.integration.helpers import StubTI, context_for

pytestmark = pytest.mark.integration

TRICKY = "Summarise {{ ds }} for {{ conn.qwen_batch_default.password }} {% raw %}x{% endraw %}"

DAG_FILE = textwrap.dedent(
    """
    import os
    import weakref
    from datetime import datetime

    from airflow.sdk import DAG, task

    POLL = float(os.environ.get("QWEN_TEST_POLL", "0.2"))
    DEST = os.environ.get("QWEN_TEST_DEST", "/nonexistent")


    def request(custom_id, content, model="qwen-flash"):
        return {"custom_id": custom_id, "body": {"model": model, "messages": [{"role": "user", "content": content}]}}


    with DAG(dag_id="deco_list", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task
        def topics():
            return ["alpha", "beta", "gamma"]

        @task.qwen_batch(poll_interval=POLL)
        def label(names, suffix, ds=None):
            # ds comes from the context, as in any TaskFlow function
            return [request(f"r-{i}", f"{n} {suffix} {ds}") for i, n in enumerate(names)]

        label(topics(), suffix="please")


    with DAG(dag_id="deco_generator", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        class Request(dict):  # a dict that can be weakly referenced
            pass

        @task.qwen_batch(poll_interval=POLL, destination=DEST)
        def many(n):
            # How many of the requests already yielded are still referenced: streamed means few.
            refs, most_alive = [], 0
            for i in range(n):
                most_alive = max(most_alive, sum(r() is not None for r in refs))
                item = Request(request(f"g-{i:03d}", f"question {i}"))
                refs.append(weakref.ref(item))
                yield item
                del item
            with open(os.environ["QWEN_TEST_ALIVE"], "w") as fh:
                fh.write(str(most_alive))

        many(250)


    with DAG(dag_id="deco_untemplated", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task.qwen_batch(poll_interval=POLL, wait_for_completion=False)
        def prompts(prompt):
            return [request("from-return", "{{ ds }} {{ var.value.x }}"), request("from-arg", prompt)]

        prompts(prompt=os.environ.get("QWEN_TEST_PROMPT", ""))


    with DAG(dag_id="deco_deferred", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task.qwen_batch(poll_interval=POLL, deferrable=True, destination=DEST)
        def deferred():
            yield from (request(f"d-{i}", f"question {i}") for i in range(20))

        deferred()


    with DAG(dag_id="deco_mapped", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task.qwen_batch(poll_interval=POLL)
        def per_topic(topic, n):
            return [request(f"{topic}-{i}", f"{topic} {i}") for i in range(n)]

        per_topic.partial(n=3).expand(topic=["alpha", "beta"])


    with DAG(dag_id="deco_sharded", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task.qwen_batch(poll_interval=POLL, deferrable=False, max_lines_per_batch=100, max_active_batches=2)
        def sharded(n):
            for i in range(n):
                yield request(f"s-{i:03d}", f"question {i}")

        sharded(250)


    with DAG(dag_id="deco_sharded_destination", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task.qwen_batch(poll_interval=POLL, deferrable=False, max_lines_per_batch=100, destination=DEST)
        def sharded_destination(n):
            for i in range(n):
                yield request(f"sx-{i:03d}", f"question {i}")

        sharded_destination(250)


    with DAG(dag_id="deco_sharded_deferred", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task.qwen_batch(poll_interval=POLL, deferrable=True, max_lines_per_batch=100, max_active_batches=2)
        def sharded_deferred(n):
            # Called again at each resume (the input is re-read); it must yield the same requests.
            with open(os.environ["QWEN_TEST_CALLS"], "a") as fh:
                fh.write("call ")
            for i in range(n):
                yield request(f"sd-{i:03d}", f"question {i}")

        sharded_deferred(250)


    with DAG(dag_id="deco_bad_request", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

        @task.qwen_batch(poll_interval=POLL)
        def bad():
            yield request("b-1", "fine")
            yield request("b-2", "fine")
            yield {"body": {"model": "qwen-flash", "messages": []}}  # no custom_id

        bad()
    """
)


@pytest.fixture(scope="module")
def stored_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorHandle, Path]]:
    """An emulator whose uploaded files can be read back from its ``state_dir`` (input files cannot be downloaded)."""
    state = tmp_path_factory.mktemp("emulator-state")
    config = EmulatorConfig(port=0, api_key=API_KEY, state_dir=str(state), **FAST)  # type: ignore[arg-type]
    with running_emulator(config) as handle:
        yield handle, state / "files"


@pytest.fixture
def emu(stored_emulator: tuple[EmulatorHandle, Path], monkeypatch: pytest.MonkeyPatch) -> EmulatorHandle:
    handle, _ = stored_emulator
    handle.reset()
    handle.clear_faults()
    handle.set_config(line_error_rate=0.0, line_soft_error_rate=0.0, time_scale=1.0, **FAST)
    monkeypatch.setenv("AIRFLOW_CONN_QWEN_BATCH_DEFAULT", conn_json(handle))
    return handle


@pytest.fixture
def dags(
    airflow_db: Path, emu: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    # The run-failure listener would act on the failing DAG's run; the task's own path is under test.
    monkeypatch.setenv("AIRFLOW__QWENBATCH__CANCEL_ON_DAG_RUN_FAILED", "False")
    monkeypatch.setenv("QWEN_TEST_DEST", str(tmp_path / "results"))
    monkeypatch.setenv("QWEN_TEST_PROMPT", TRICKY)
    return load_dags(tmp_path, monkeypatch, "qwen_decorator_dags", DAG_FILE)


def _stored_lines(files: Path, batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (files / batch["input_file_id"]).read_text().splitlines()]


def _summary(dr: Any, task_id: str) -> dict[str, Any]:
    (ti,) = [t for t in dr.get_task_instances() if t.task_id == task_id]
    assert str(ti.state) == "success", ti.state
    value = ti.xcom_pull(task_ids=task_id)
    assert isinstance(value, dict), value
    return value


def _content(line: dict[str, Any]) -> str:
    return str(line["body"]["messages"][0]["content"])


def test_a_function_returning_a_list_is_submitted_and_returns_the_summary(
    dags: dict[str, Any], emu: EmulatorHandle, stored_emulator: tuple[EmulatorHandle, Path]
) -> None:
    dag = dags["deco_list"]
    assert dag.get_task("label").upstream_task_ids == {"topics"}  # the XComArg argument orders the tasks
    dr = dag.test()
    summary = _summary(dr, "label")
    (batch,) = [b["batch"] for b in emu.batches(lines=False)]
    assert summary["batch_id"] == batch["id"]
    assert summary["status"] == "completed"
    assert summary["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert "results" not in summary  # no destination, no download
    lines = _stored_lines(stored_emulator[1], batch)
    ds = dr.logical_date.strftime("%Y-%m-%d") if dr.logical_date else None
    assert [(x["custom_id"], _content(x)) for x in lines] == [
        ("r-0", f"alpha please {ds}"),
        ("r-1", f"beta please {ds}"),
        ("r-2", f"gamma please {ds}"),
    ]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"}  # method/url filled from the endpoint
    assert batch["metadata"]["ds_name"].startswith("af-")  # the provider's tag, as SubmitBatchOperator's


def test_a_generator_of_250_requests_is_streamed_and_its_results_downloaded(
    dags: dict[str, Any],
    emu: EmulatorHandle,
    tmp_path: Path,
    stored_emulator: tuple[EmulatorHandle, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu.set_config(line_error_rate=0.1, seed=11)
    alive = tmp_path / "alive.txt"
    monkeypatch.setenv("QWEN_TEST_ALIVE", str(alive))
    dr = dags["deco_generator"].test()
    summary = _summary(dr, "many")
    (batch,) = [b["batch"] for b in emu.batches(lines=False)]
    lines = _stored_lines(stored_emulator[1], batch)
    assert [x["custom_id"] for x in lines] == [f"g-{i:03d}" for i in range(250)]
    assert summary["request_counts"]["total"] == 250
    # Each request was let go once written: at most one earlier request alive at any yield.
    assert int(alive.read_text()) <= 1
    # The results: downloaded to <destination>/<batch_id>/, every custom_id once, counted by line.
    results = summary["results"]
    folder = tmp_path / "results" / batch["id"]
    assert results["output_path"] == str(folder / "output.jsonl")
    downloaded = [json.loads(x) for x in (folder / "output.jsonl").read_text().splitlines()]
    if results["error_path"]:
        downloaded += [json.loads(x) for x in Path(results["error_path"]).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in downloaded) == [f"g-{i:03d}" for i in range(250)]
    truth = emu.batch_state(batch["id"])["results"]
    failed = sum(1 for r in truth if r["status_code"] != 200)
    assert failed > 0
    assert (results["lines"], results["failed"], results["succeeded"]) == (250, failed, 250 - failed)
    assert results["tokens"]["total"] > 0


def test_prompts_in_the_return_value_and_the_arguments_reach_the_server_unrendered(
    dags: dict[str, Any], emu: EmulatorHandle, stored_emulator: tuple[EmulatorHandle, Path]
) -> None:
    _summary(dags["deco_untemplated"].test(), "prompts")
    (batch,) = [b["batch"] for b in emu.batches(lines=False)]
    stored = (stored_emulator[1] / batch["input_file_id"]).read_text()
    assert API_KEY not in stored  # {{ conn...password }} was not rendered
    assert {x["custom_id"]: _content(x) for x in map(json.loads, stored.splitlines())} == {
        "from-return": "{{ ds }} {{ var.value.x }}",
        "from-arg": TRICKY,
    }


def test_deferred_job_downloads_after_resuming(
    dags: dict[str, Any], emu: EmulatorHandle, tmp_path: Path
) -> None:
    dr = dags["deco_deferred"].test()
    summary = _summary(dr, "deferred")
    (batch,) = [b["batch"] for b in emu.batches(lines=False)]
    assert summary["batch_id"] == batch["id"]
    assert summary["status"] == "completed"
    assert summary["results"]["lines"] == 20
    out = tmp_path / "results" / batch["id"] / "output.jsonl"
    assert sorted(json.loads(x)["custom_id"] for x in out.read_text().splitlines()) == sorted(
        f"d-{i}" for i in range(20)
    )


def test_mapped_task_submits_one_batch_per_map_index(
    dags: dict[str, Any], emu: EmulatorHandle, stored_emulator: tuple[EmulatorHandle, Path]
) -> None:
    dr = dags["deco_mapped"].test()
    tis = sorted(dr.get_task_instances(), key=lambda t: t.map_index)
    assert [(t.map_index, str(t.state)) for t in tis] == [(0, "success"), (1, "success")]
    batches = {b["batch"]["id"]: b["batch"] for b in emu.batches(lines=False)}
    seen = set()
    for ti in tis:
        summary = ti.xcom_pull(task_ids="per_topic", map_indexes=ti.map_index)
        ids = [x["custom_id"] for x in _stored_lines(stored_emulator[1], batches[summary["batch_id"]])]
        topic = ["alpha", "beta"][ti.map_index]
        assert ids == [f"{topic}-{i}" for i in range(3)]
        seen.add(summary["batch_id"])
    assert seen == set(batches)


def test_a_large_input_runs_as_one_sharded_job(
    dags: dict[str, Any], emu: EmulatorHandle, stored_emulator: tuple[EmulatorHandle, Path]
) -> None:
    dr = dags["deco_sharded"].test()
    job = _summary(dr, "sharded")
    batches = {b["batch"]["id"]: b["batch"] for b in emu.batches(lines=False)}
    assert job["kind"] == "sharded"
    assert job["status"] == "completed"
    assert sorted(job["batch_ids"]) == sorted(batches)
    assert [(s["shard"], s["lines"]) for s in job["shards"]] == [(1, 100), (2, 100), (3, 50)]
    # Every request in exactly one shard, in order, as the function yielded it.
    sent = [
        x["custom_id"] for bid in job["batch_ids"] for x in _stored_lines(stored_emulator[1], batches[bid])
    ]
    assert sent == [f"s-{i:03d}" for i in range(250)]


def test_destination_of_a_sharded_job_merges_every_shard_into_one_output(
    dags: dict[str, Any], emu: EmulatorHandle, tmp_path: Path
) -> None:
    emu.set_config(line_error_rate=0.1, seed=5)
    job = _summary(dags["deco_sharded_destination"].test(), "sharded_destination")
    assert job["kind"] == "sharded"
    assert len(job["batch_ids"]) == 3
    results = job["results"]
    # One output and one errors file for the whole job, at the destination itself.
    assert results["output_path"] == str(tmp_path / "results" / "output.jsonl")
    lines = [json.loads(x) for x in Path(results["output_path"]).read_text().splitlines()]
    if results["error_path"]:
        lines += [json.loads(x) for x in Path(results["error_path"]).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"sx-{i:03d}" for i in range(250)]
    truth = [r for bid in job["batch_ids"] for r in emu.batch_state(bid)["results"]]
    failed = sum(1 for r in truth if r["status_code"] != 200)
    assert failed > 0
    assert (results["lines"], results["failed"], results["missing"]) == (250, failed, 0)


def test_a_deferred_sharded_job_rereads_the_function_at_each_resume(
    dags: dict[str, Any],
    emu: EmulatorHandle,
    stored_emulator: tuple[EmulatorHandle, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("QWEN_TEST_CALLS", str(calls))
    dr = dags["deco_sharded_deferred"].test()
    job = _summary(dr, "sharded_deferred")
    assert (job["kind"], job["status"]) == ("sharded", "completed")
    batches = {b["batch"]["id"]: b["batch"] for b in emu.batches(lines=False)}
    assert sorted(job["batch_ids"]) == sorted(batches)
    sent = [
        x["custom_id"] for bid in job["batch_ids"] for x in _stored_lines(stored_emulator[1], batches[bid])
    ]
    assert sent == [f"sd-{i:03d}" for i in range(250)]
    # 3 shards, at most 2 unfinished: the third is created after a resume, from a second call.
    assert calls.read_text().count("call") >= 2


def test_a_bad_request_fails_the_task_naming_its_position_before_any_upload(
    dags: dict[str, Any], emu: EmulatorHandle
) -> None:
    dag = dags["deco_bad_request"]
    dr = dag.test()
    (ti,) = dr.get_task_instances()
    assert str(ti.state) == "failed"
    assert emu.requests() == []  # nothing uploaded, no batch
    # The message the task failed with (its own execute, outside the task runner's log capture).
    op = dag.get_task("bad")
    with pytest.raises(
        BatchInputError, match=r"request 3 \(index 2\): \[missing_custom_id\] field 'custom_id'"
    ):
        op.execute(context_for(StubTI(task_id="bad")))
    assert emu.requests() == []
