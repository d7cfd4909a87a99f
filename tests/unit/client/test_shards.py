"""Splitting an input into shards in the validating pass: every limit, whole-input rules, no loss."""

from __future__ import annotations

import hashlib
import json
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client import InputLimits, InputValidationError, validate_jsonl_file
from airflow_provider_qwenbatch.client.idtable import CompactIdIndex
from airflow_provider_qwenbatch.client.shards import split_jsonl_file, split_requests

CHAT = "/v1/chat/completions"
TEST_URL = "/v1/chat/ds-test"


def req(cid: str, model: str = "qwen-flash", url: str = CHAT, text: str = "hi") -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    return path


def test_split_by_lines_keeps_every_line_in_order_and_each_shard_validates(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [req(f"c{i}") for i in range(1, 251)])
    plan = split_jsonl_file(src, CHAT, folder=tmp_path / "out", max_lines_per_batch=100)
    assert [(s.number, s.summary.lines, s.first_line, s.last_line) for s in plan.shards] == [
        (1, 100, 1, 100),
        (2, 100, 101, 200),
        (3, 50, 201, 250),
    ]
    assert plan.total_lines == 250
    # Nothing lost, nothing changed: the shards concatenated are the input's bytes.
    joined = b"".join(Path(s.path).read_bytes() for s in plan.shards)
    assert joined == src.read_bytes()
    for shard in plan.shards:
        data = Path(shard.path).read_bytes()
        assert shard.summary.sha256 == hashlib.sha256(data).hexdigest()
        assert shard.summary.bytes == len(data)
        assert validate_jsonl_file(shard.path, CHAT).sha256 == shard.summary.sha256


def test_exact_line_boundary_makes_no_empty_shard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    src = write(tmp_path / "in.jsonl", [req(f"c{i}") for i in range(200)])
    plan = split_jsonl_file(
        src, CHAT, folder=tmp_path / "out", max_lines_per_batch=100, logger=logging.getLogger("qb.split")
    )
    logged = [r.getMessage() for r in caplog.records if r.name == "qb.split"]
    assert logged[1].startswith("shard 2: 100 lines") and logged[1].endswith("(input lines 101-200)")
    assert [s.summary.lines for s in plan.shards] == [100, 100]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-00001.jsonl", "shard-00002.jsonl"]


def test_split_by_bytes_at_the_exact_boundary(tmp_path: Path) -> None:
    rows = [req(f"c{i:03d}") for i in range(10)]
    src = write(tmp_path / "in.jsonl", rows)
    size = len(src.read_bytes().splitlines(keepends=True)[0])  # every line has the same size
    limits = InputLimits(max_bytes=3 * size, max_lines=50_000, max_line_bytes=size)
    plan = split_jsonl_file(src, CHAT, folder=tmp_path / "out", limits=limits)
    assert [s.summary.lines for s in plan.shards] == [3, 3, 3, 1]
    assert all(s.summary.bytes <= 3 * size for s in plan.shards)
    # One byte less per batch: only two lines fit.
    limits = InputLimits(max_bytes=3 * size - 1, max_lines=50_000, max_line_bytes=size)
    plan = split_jsonl_file(src, CHAT, folder=tmp_path / "out2", limits=limits)
    assert [s.summary.lines for s in plan.shards] == [2, 2, 2, 2, 2]


def test_default_cap_is_the_api_line_limit_and_bigger_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [req("a")])
    with pytest.raises(ValueError, match="between 1 and 50000"):
        split_jsonl_file(src, CHAT, max_lines_per_batch=50_001)
    with pytest.raises(ValueError):
        split_requests([req("a")], CHAT, max_lines_per_batch=0)


def test_more_than_50000_lines_become_batches_of_50000(tmp_path: Path) -> None:
    plan = split_requests(
        ({"custom_id": str(i), "body": {"model": "qwen-flash", "input": "x"}} for i in range(50_001)),
        "/v1/embeddings",
        folder=tmp_path,
    )
    assert [s.summary.lines for s in plan.shards] == [50_000, 1]
    assert plan.shards[1].first_line == 50_001


def test_test_model_limits_apply_per_shard(tmp_path: Path) -> None:
    rows = [req(f"t{i}", model="batch-test-model", url=TEST_URL) for i in range(250)]
    plan = split_jsonl_file(write(tmp_path / "in.jsonl", rows), TEST_URL, folder=tmp_path / "out")
    assert [s.summary.lines for s in plan.shards] == [100, 100, 50]
    # 1 MB per file: lines of ~300 KB go three to a shard.
    big = [req(f"b{i}", model="batch-test-model", url=TEST_URL, text="x" * 300_000) for i in range(7)]
    plan = split_jsonl_file(write(tmp_path / "big.jsonl", big), TEST_URL, folder=tmp_path / "out2")
    assert [s.summary.lines for s in plan.shards] == [3, 3, 1]
    assert all(s.summary.bytes <= 1024 * 1024 for s in plan.shards)


def test_test_model_line_over_1mb_is_named(tmp_path: Path) -> None:
    rows = [
        req("a", model="batch-test-model", url=TEST_URL),
        req("b", model="batch-test-model", url=TEST_URL, text="x" * 1_100_000),
    ]
    src = write(tmp_path / "in.jsonl", rows)
    with pytest.raises(InputValidationError) as info:
        split_jsonl_file(src, TEST_URL, folder=tmp_path / "out")
    assert f"{src}:2: [line_too_large]" in str(info.value)


def test_duplicate_across_shards_names_the_original_lines_and_keeps_no_shard(tmp_path: Path) -> None:
    rows = [req(f"c{i}") for i in range(1, 301)]
    rows[249] = req("c7")  # line 250, in the third shard, repeats line 7 of the first
    src = write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the caller's own file")
    with pytest.raises(InputValidationError) as info:
        split_jsonl_file(src, CHAT, folder=out, max_lines_per_batch=100)
    text = str(info.value)
    assert (
        f"{src}:250: [duplicate_custom_id] field 'custom_id': custom_id 'c7' already used on line 7" in text
    )
    assert "shard-0" not in text
    # All or nothing: no shard file is left to be uploaded; the caller's file stays.
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_problem_in_a_late_shard_removes_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(json.dumps(req(f"c{i}")).encode() + b"\n" for i in range(250)) + b"{oops\n")
    with pytest.raises(InputValidationError) as info:
        split_jsonl_file(src, CHAT, max_lines_per_batch=100)
    assert f"{src}:251: [invalid_json]" in str(info.value)
    assert list(temp.iterdir()) == []
    # A valid input gets its own temporary folder, removed by cleanup().
    src.write_bytes(b"".join(json.dumps(req(f"c{i}")).encode() + b"\n" for i in range(250)))
    plan = split_jsonl_file(src, CHAT, max_lines_per_batch=100)
    assert Path(plan.folder).parent == temp and len(plan.shards) == 3
    plan.cleanup()
    assert list(temp.iterdir()) == []


def test_request_list_errors_name_the_list_position(tmp_path: Path) -> None:
    rows = [req(f"c{i}") for i in range(150)] + [req("c3")]
    with pytest.raises(InputValidationError) as info:
        split_requests(rows, CHAT, folder=tmp_path, max_lines_per_batch=100)
    assert "requests: request 151 (index 150): [duplicate_custom_id]" in str(info.value)
    assert "already used on request 4 (index 3)" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_whole_input_larger_than_one_file_is_fine_but_one_model(tmp_path: Path) -> None:
    rows = [req(f"c{i}") for i in range(120)] + [req("other", model="qwen-plus")]
    with pytest.raises(InputValidationError) as info:
        split_requests(rows, CHAT, folder=tmp_path, max_lines_per_batch=100)
    assert "[mismatched_model]" in str(info.value)


def test_fingerprints_per_shard_are_stable_and_distinct(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [req(f"c{i}") for i in range(300)])
    a = split_jsonl_file(src, CHAT, folder=tmp_path / "a", max_lines_per_batch=100)
    b = split_jsonl_file(src, CHAT, folder=tmp_path / "b", max_lines_per_batch=100)
    fa = [s.fingerprint("24h") for s in a.shards]
    assert fa == [s.fingerprint("1d") for s in b.shards]  # same input, another folder: same batches
    assert len(set(fa)) == 3
    assert a.shards[0].fingerprint("48h") != fa[0]


def test_crlf_and_missing_final_newline_are_kept_and_terminated(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps(req("a")).encode() + b"\r\n" + json.dumps(req("b")).encode())
    plan = split_jsonl_file(src, CHAT, folder=tmp_path / "o")
    assert Path(plan.shards[0].path).read_bytes() == src.read_bytes() + b"\n"


def test_warnings_cover_the_whole_input_with_original_first_line(tmp_path: Path) -> None:
    rows = [req(f"c{i}", model="qwen3.6-plus") for i in range(150)]
    for r in rows[120:]:
        r["body"]["enable_thinking"] = False
    plan = split_requests(rows, CHAT, folder=tmp_path, max_lines_per_batch=100)
    (w,) = plan.warnings
    assert (w.rule, w.first_line, w.count) == ("thinking_default_on", 1, 120)


def test_compact_id_index_behaves_like_a_dict() -> None:
    index, ref = CompactIdIndex(), {}
    for n in range(1, 20_001):
        key = f"id-{n % 15_000}"
        assert index.setdefault(key, n) == ref.setdefault(key, n)
    assert len(index) == len(ref) == 15_000


def test_compact_id_index_keeps_every_id_when_reserved_mid_way() -> None:
    index, ref = CompactIdIndex(), {}
    for n in range(1, 5_001):
        assert index.setdefault(f"id-{n}", n) == ref.setdefault(f"id-{n}", n)
    index.reserve(200_000)
    index.reserve(10)  # never shrinks
    for n in range(1, 20_001):
        key = f"id-{n % 12_000}"
        assert index.setdefault(key, 100_000 + n) == ref.setdefault(key, 100_000 + n)
    assert len(index) == len(ref)


def test_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    """A ~50 MB input splits with a few MB of Python allocations (the id table is 16 bytes a slot)."""
    src = tmp_path / "big.jsonl"
    pad = "x" * 900
    with src.open("wb") as fh:
        for i in range(50_000):
            fh.write(json.dumps(req(f"m{i}", text=pad)).encode() + b"\n")
    assert src.stat().st_size > 45_000_000
    tracemalloc.start()
    plan = split_jsonl_file(src, CHAT, folder=tmp_path / "out", max_lines_per_batch=10_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert plan.total_lines == 50_000
    assert peak < 4 * 1024 * 1024, peak


def test_strict_cost_refuses_a_split_and_keeps_no_shard(tmp_path: Path) -> None:
    rows = [req(f"c{i}") for i in range(150)]
    rows[120]["body"]["max_tokens"] = 5
    with pytest.raises(InputValidationError) as info:
        split_requests(rows, CHAT, folder=tmp_path, max_lines_per_batch=100, strict_cost=True)
    assert "request 121 (index 120): [deprecated_max_tokens]" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unencodable_request_is_named_by_position(tmp_path: Path) -> None:
    rows = [req("a"), req("b")]
    rows[1]["body"]["temperature"] = float("nan")
    with pytest.raises(InputValidationError, match=r"request 2 \(index 1\): \[invalid_number\]"):
        split_requests(rows, CHAT, folder=tmp_path)


def test_warnings_are_logged_once_per_rule(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from airflow_provider_qwenbatch.client.jsonl import log_input_warnings, validate_jsonl_file

    rows = [req(f"c{i}", model="qwen3.7-max") for i in range(30)]
    summary = validate_jsonl_file(write(tmp_path / "in.jsonl", rows), CHAT)
    log_input_warnings(summary, logging.getLogger("qwenbatch.test"))
    warnings = [r.getMessage() for r in caplog.records if r.name == "qwenbatch.test"]
    assert len(warnings) == 1
    assert "in.jsonl:1: [thinking_default_on]" in warnings[0] and "30 requests" in warnings[0]
