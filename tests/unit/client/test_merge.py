"""Merging many shards' results, picking retryable failures, last outcome wins, input order.

Result lines are built by the emulator's own answer builders (the shapes it serves)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.merge import ResultFiles, merge_results, write_resubmission
from airflow_provider_qwenbatch.client.results import classify_line, count_results
from airflow_provider_qwenbatch.emulator.answers import answer_line, unfinished_line

CHAT = "/v1/chat/completions"
BODY = {"model": "qwen-flash", "messages": [{"role": "user", "content": "hi"}]}


def result(cid: str, outcome: str) -> dict[str, Any]:
    if outcome in ("batch_cancelled", "batch_expired"):
        return unfinished_line(cid, outcome)  # type: ignore[arg-type]
    return answer_line(
        custom_id=cid, body=BODY, endpoint=CHAT, outcome=outcome, seed=1, now=0, embedding_dimensions=8
    )  # type: ignore[arg-type]


def jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    return str(path)


def ids(path: str) -> list[str]:
    return [json.loads(line)["custom_id"] for line in Path(path).read_bytes().splitlines()]


def input_file(path: Path, cids: list[str]) -> str:
    return jsonl(path, [{"custom_id": c, "method": "POST", "url": CHAT, "body": BODY} for c in cids])


@pytest.mark.parametrize(
    ("outcome", "retryable"),
    [
        ("ok", False),
        ("error", True),  # HTTP 500 internal_error
        ("soft_error", False),  # 400 content refusal inside the output file
        ("batch_expired", True),
        ("batch_cancelled", True),
    ],
)
def test_classification_of_the_emulator_lines(outcome: str, retryable: bool) -> None:
    o = classify_line(json.dumps(result("x", outcome)))
    assert o.ok is (outcome == "ok")
    assert o.retryable is retryable


def test_defensive_codes_and_statuses() -> None:
    def line(status: int | None, code: str | None) -> bytes:
        response = {"status_code": status, "body": {}} if status is not None else None
        error = {"code": code, "message": "m"} if code else None
        return json.dumps({"custom_id": "x", "response": response, "error": error}).encode()

    assert classify_line(line(None, "BatchExpired")).retryable  # DashScope spelling UNCONFIRMED
    assert classify_line(line(None, "RequestTimeOut")).retryable
    assert classify_line(line(503, None)).retryable
    assert classify_line(line(429, "Throttling.RateQuota")).retryable
    assert not classify_line(line(400, "invalid_parameter")).retryable
    assert not classify_line(line(400, "batch_expired")).retryable  # a 4xx status is a content error
    assert not classify_line(line(None, "batch_cancelled"), retry_cancelled=False).retryable
    assert not classify_line(b"{not json").retryable


def test_merge_of_shards_counts_per_shard_and_in_total(tmp_path: Path) -> None:
    s1 = ResultFiles(
        1,
        jsonl(tmp_path / "o1", [result("a", "ok"), result("b", "soft_error")]),
        jsonl(tmp_path / "e1", [result("c", "error")]),
    )
    s2 = ResultFiles(
        2, jsonl(tmp_path / "o2", [result("d", "ok")]), jsonl(tmp_path / "e2", [result("e", "batch_expired")])
    )
    summary = merge_results([s1, s2], tmp_path / "output.jsonl", tmp_path / "errors.jsonl")
    assert ids(summary.output_path) == ["a", "d"]
    assert ids(summary.errors_path) == ["b", "c", "e"]
    assert (summary.total.lines, summary.total.succeeded, summary.total.failed, summary.retryable) == (
        5,
        2,
        3,
        2,
    )
    assert (summary.per_shard[1].succeeded, summary.per_shard[1].failed) == (1, 2)
    assert (summary.per_shard[2].succeeded, summary.per_shard[2].failed) == (1, 1)
    # The token sums are the ones results.py counts from the same lines.
    direct = count_results(s1.output_path)  # type: ignore[arg-type]
    direct.add(count_results(s2.output_path))  # type: ignore[arg-type]
    assert summary.total.total_tokens == direct.total_tokens > 0
    # Lines are copied byte for byte.
    assert (
        Path(summary.output_path).read_bytes().splitlines()[0]
        == Path(s1.output_path).read_bytes().splitlines()[0]
    )  # type: ignore[arg-type]


def test_resubmission_picks_only_retryable_failures_and_missing_lines(tmp_path: Path) -> None:
    shard1 = input_file(tmp_path / "in1", ["a", "b", "c"])
    shard2 = input_file(tmp_path / "in2", ["d", "e", "f", "g"])
    first = [
        ResultFiles(
            1,
            jsonl(tmp_path / "o1", [result("a", "ok"), result("b", "soft_error")]),
            jsonl(tmp_path / "e1", [result("c", "error")]),
        ),
        ResultFiles(
            2,
            jsonl(tmp_path / "o2", [result("d", "ok")]),
            jsonl(tmp_path / "e2", [result("e", "batch_expired"), result("f", "batch_cancelled")]),
        ),
        # "g" has no result line at all
    ]
    resub = write_resubmission(first, [shard1, shard2], tmp_path / "retry.jsonl")
    assert ids(resub.path) == ["c", "e", "f", "g"]
    assert (resub.lines, resub.retryable, resub.missing) == (4, 3, 1)
    # The lines are the original input lines, unchanged.
    originals = {json.loads(x)["custom_id"]: x for x in Path(shard2).read_bytes().splitlines()}
    assert Path(resub.path).read_bytes().splitlines()[1] == originals["e"]
    # A person's cancel: cancelled requests are not retried; nor missing ones when asked.
    resub = write_resubmission(
        first, [shard1, shard2], tmp_path / "r2.jsonl", retry_cancelled=False, include_missing=False
    )
    assert ids(resub.path) == ["c", "e"]


def test_final_merge_keeps_each_custom_id_once_with_its_last_outcome(tmp_path: Path) -> None:
    first = [
        ResultFiles(
            1,
            jsonl(tmp_path / "o1", [result("a", "ok")]),
            jsonl(tmp_path / "e1", [result("b", "error"), result("c", "batch_expired")]),
        ),
    ]
    retry = ResultFiles(
        None,
        jsonl(tmp_path / "o2", [result("b", "ok")]),
        jsonl(tmp_path / "e2", [result("c", "soft_error")]),
        attempt=2,
    )
    summary = merge_results([*first, retry], tmp_path / "out.jsonl", tmp_path / "err.jsonl")
    assert sorted(ids(summary.output_path)) == ["a", "b"]
    assert ids(summary.errors_path) == ["c"]
    err = json.loads(Path(summary.errors_path).read_text())
    assert err["response"]["status_code"] == 400  # the last outcome, not the expired one
    assert (summary.total.lines, summary.total.succeeded, summary.total.failed, summary.replaced) == (
        3,
        2,
        1,
        2,
    )
    assert summary.retryable == 0
    assert summary.per_shard == {1: summary.total}  # resubmitted lines count under their shard


def test_results_in_input_order(tmp_path: Path) -> None:
    order = [f"r{i}" for i in range(30)]
    in1 = input_file(tmp_path / "in1", order[:15])
    in2 = input_file(tmp_path / "in2", order[15:])
    shuffled = order[::-1]
    files = [
        ResultFiles(2, jsonl(tmp_path / "o2", [result(c, "ok") for c in shuffled[:15]])),
        ResultFiles(
            1,
            jsonl(tmp_path / "o1", [result(c, "ok") for c in shuffled[15:] if c != "r3"]),
            jsonl(tmp_path / "e1", [result("r3", "error"), result("zz", "ok")]),
        ),
    ]
    summary = merge_results(
        files, tmp_path / "out.jsonl", tmp_path / "err.jsonl", order="input", inputs=[in1, in2]
    )
    assert ids(summary.output_path) == [c for c in order if c != "r3"] + ["zz"]  # unknown id last
    assert ids(summary.errors_path) == ["r3"]
    with pytest.raises(ValueError, match="inputs"):
        merge_results(files, tmp_path / "o", tmp_path / "e", order="input")


def test_unreadable_result_lines_are_kept_as_errors(tmp_path: Path) -> None:
    path = tmp_path / "o"
    path.write_bytes(json.dumps(result("a", "ok")).encode() + b"\n{broken\n")
    for order in ("results", "input"):
        summary = merge_results(
            [ResultFiles(1, str(path))],
            tmp_path / "out",
            tmp_path / "err",
            order=order,
            inputs=[input_file(tmp_path / "in", ["a"])],
        )  # type: ignore[arg-type]
        assert Path(summary.errors_path).read_bytes() == b"{broken\n"
        assert (summary.total.unreadable, summary.total.failed_examples[0]["custom_id"]) == (1, "<line 2>")


@pytest.mark.parametrize("order", ["results", "input"])
def test_merge_memory_does_not_grow_with_the_files(tmp_path: Path, order: str) -> None:
    """~50 MB of results merge with a bounded amount of Python memory (streaming or the on-disk index)."""
    pad = "y" * 400
    cids = [f"m{i}" for i in range(60_000)]
    line = json.dumps(result("CID", "ok")).replace('"content": "', f'"content": "{pad}', 1)
    out = tmp_path / "o"
    with out.open("w") as fh:
        for c in reversed(cids):
            fh.write(line.replace('"CID"', json.dumps(c)) + "\n")
    assert out.stat().st_size > 40_000_000
    inp = input_file(tmp_path / "in", cids)
    tracemalloc.start()
    summary = merge_results(
        [ResultFiles(1, str(out))], tmp_path / "m.jsonl", tmp_path / "e.jsonl", order=order, inputs=[inp]
    )  # type: ignore[arg-type]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert summary.total.succeeded == 60_000
    assert peak < 8 * 1024 * 1024, peak


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        {"prompt_tokens": 3},
        "not an object",
        {"prompt_tokens": "3"},
        None,
    ],
)
def test_success_shortcut_agrees_with_the_model(usage: object) -> None:
    from airflow_provider_qwenbatch.client.models import BatchResultLine

    raw = json.dumps(
        {"custom_id": "x", "response": {"status_code": 200, "body": {"usage": usage}}, "error": None}
    )
    line = BatchResultLine.model_validate_json(raw)
    o = classify_line(raw)
    u = line.usage
    assert o.ok is line.ok is True
    assert o.usage == ((u.prompt_tokens, u.completion_tokens, u.total_tokens) if u else (0, 0, 0))
