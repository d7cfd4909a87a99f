"""JSONL input validation: every rule names the file, the 1-based line and the rule code."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client import (
    InputLimits,
    InputSummary,
    InputValidationError,
    validate_jsonl_file,
    write_jsonl,
)

CHAT = "/v1/chat/completions"
TEST_URL = "/v1/chat/ds-test"
MODEL = "qwen-flash"
TEST_MODEL = "batch-test-model"


def req(
    cid: Any = "1", *, url: str = CHAT, model: Any = MODEL, method: Any = "POST", **body: Any
) -> dict[str, Any]:
    b: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], **body}
    if model is not None:
        b["model"] = model
    return {"custom_id": cid, "method": method, "url": url, "body": b}


def line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"


def write(tmp_path: Path, *lines: bytes, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return path


def problem(
    path: Path, endpoint: str = CHAT, *, rule: str, line_no: int | None, limits: InputLimits | None = None
) -> InputValidationError:
    """Validate, expect a problem with ``rule`` at ``line_no``; check the message names file, line and rule."""
    kwargs = {"limits": limits} if limits else {}
    with pytest.raises(InputValidationError) as info:
        validate_jsonl_file(path, endpoint, **kwargs)
    err = info.value
    matching = [p for p in err.problems if p.rule == rule]
    assert matching, f"no {rule!r} problem in {err.problems}"
    assert matching[0].line == line_no
    text = str(err)
    assert str(path) in text
    where = f"{path}:{line_no}: [{rule}]" if line_no is not None else f"{path}: [{rule}]"
    assert where in text, text
    return err


def test_valid_file_gives_its_summary(tmp_path: Path) -> None:
    path = write(tmp_path, *(line(req(str(i))) for i in range(1, 6)))
    summary = validate_jsonl_file(path, CHAT)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary == InputSummary(str(path), 5, path.stat().st_size, MODEL, CHAT, sha)


def test_valid_file_with_crlf_and_no_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")).replace(b"\n", b"\r\n"), line(req("2")).rstrip(b"\n"))
    summary = validate_jsonl_file(path, CHAT)
    assert summary.lines == 2
    assert summary.bytes == path.stat().st_size


def test_embeddings_and_test_endpoint_files_are_valid(tmp_path: Path) -> None:
    emb = write(tmp_path, line(req("a", url="/v1/embeddings", model="text-embedding-v4")), name="e.jsonl")
    assert validate_jsonl_file(emb, "/v1/embeddings").model == "text-embedding-v4"
    test = write(tmp_path, line(req("a", url=TEST_URL, model=TEST_MODEL)), name="t.jsonl")
    assert validate_jsonl_file(test, TEST_URL).model == TEST_MODEL


def test_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), b'{"custom_id": "2", "method": \n')
    problem(path, rule="invalid_json", line_no=2)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    bad = line(req("2", content="caf\u00e9")).replace("é".encode(), b"\xe9")
    path = write(tmp_path, line(req("1")), bad)
    err = problem(path, rule="invalid_encoding", line_no=2)
    assert "UTF-8" in str(err)


def test_byte_order_mark(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + line(req("1")), line(req("2")))
    err = problem(path, rule="utf8_bom", line_no=1)
    assert len(err.problems) == 1


def test_blank_line_in_the_middle(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), b"\n", line(req("2")))
    problem(path, rule="empty_line", line_no=2)


def test_whitespace_line_in_the_middle(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), line(req("2")), b"   \t\n", line(req("3")))
    problem(path, rule="empty_line", line_no=3)


def test_trailing_blank_lines_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), line(req("2")), b"\n", b"  \n", b"\r\n")
    summary = validate_jsonl_file(path, CHAT)
    assert summary.lines == 2


def test_summary_bytes_is_the_file_size_even_with_trailing_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), b"\n", b"\n", b"\n")
    assert validate_jsonl_file(path, CHAT).bytes == path.stat().st_size


@pytest.mark.parametrize("value", [[1, 2], "text", 42, None])
def test_line_not_an_object(tmp_path: Path, value: Any) -> None:
    path = write(tmp_path, line(req("1")), line(value))
    problem(path, rule="invalid_request", line_no=2)


@pytest.mark.parametrize("cid", [None, ""])
def test_missing_or_empty_custom_id(tmp_path: Path, cid: Any) -> None:
    obj = req("x")
    if cid is None:
        del obj["custom_id"]
    else:
        obj["custom_id"] = cid
    path = write(tmp_path, line(req("1")), line(obj))
    err = problem(path, rule="missing_custom_id", line_no=2)
    assert "custom_id" in str(err)


@pytest.mark.parametrize("cid", [7, 0, 1.5, ["a"], {"a": 1}, True])
def test_non_string_custom_id(tmp_path: Path, cid: Any) -> None:
    path = write(tmp_path, line(req("1")), line(req(cid)))
    problem(path, rule="invalid_custom_id", line_no=2)


def test_duplicate_custom_id_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("a")), line(req("b")), line(req("c")), line(req("a")))
    err = problem(path, rule="duplicate_custom_id", line_no=4)
    rendered = next(p for p in err.problems if p.rule == "duplicate_custom_id").render(str(path))
    assert f"{path}:4:" in rendered
    assert "line 1" in rendered


@pytest.mark.parametrize("method", ["GET", "post", None])
def test_method_not_post(tmp_path: Path, method: Any) -> None:
    path = write(tmp_path, line(req("1")), line(req("2", method=method)))
    problem(path, rule="invalid_method", line_no=2)


@pytest.mark.parametrize("url", ["/v1/chat/completion", "/v1/completions", None, ""])
def test_url_not_an_endpoint(tmp_path: Path, url: Any) -> None:
    obj = req("2")
    obj["url"] = url
    path = write(tmp_path, line(req("1")), line(obj))
    problem(path, rule="url_not_found", line_no=2)


def test_url_differs_from_batch_endpoint(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), line(req("2", url="/v1/embeddings")))
    err = problem(path, rule="mismatched_url", line_no=2)
    assert CHAT in str(err)


def test_mixed_models(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), line(req("2")), line(req("3", model="qwen-plus")))
    err = problem(path, rule="mismatched_model", line_no=3)
    assert "qwen-plus" in str(err)
    assert "line 1" in str(err)


@pytest.mark.parametrize("model", [None, "", 3])
def test_missing_model(tmp_path: Path, model: Any) -> None:
    obj = req("2", model=model)
    if model is None:
        obj["body"].pop("model", None)
    path = write(tmp_path, line(req("1")), line(obj))
    problem(path, rule="missing_model", line_no=2)


@pytest.mark.parametrize("body", [None, "text", [1], 5])
def test_body_not_an_object(tmp_path: Path, body: Any) -> None:
    obj = req("2")
    obj["body"] = body
    path = write(tmp_path, line(req("1")), line(obj))
    problem(path, rule="invalid_body", line_no=2)


def test_test_model_on_a_normal_endpoint(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1", model=TEST_MODEL)))
    problem(path, rule="mismatched_test_url", line_no=1)


def test_normal_model_on_the_test_endpoint(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1", url=TEST_URL, model="qwen-plus")))
    problem(path, TEST_URL, rule="mismatched_test_url", line_no=1)


def test_test_model_at_most_100_lines(tmp_path: Path) -> None:
    rows = [line(req(str(i), url=TEST_URL, model=TEST_MODEL)) for i in range(100)]
    ok = write(tmp_path, *rows, name="ok.jsonl")
    assert validate_jsonl_file(ok, TEST_URL).lines == 100
    path = write(tmp_path, *rows, line(req("100", url=TEST_URL, model=TEST_MODEL)))
    err = problem(path, TEST_URL, rule="too_many_lines", line_no=None)
    assert "101" in str(err)


def test_test_model_at_most_1mb(tmp_path: Path) -> None:
    pad = "x" * 20_000
    rows = [line(req(str(i), url=TEST_URL, model=TEST_MODEL, pad=pad)) for i in range(60)]
    path = write(tmp_path, *rows)
    assert path.stat().st_size > 1024 * 1024
    err = problem(path, TEST_URL, rule="file_too_large", line_no=None)
    assert str(path.stat().st_size) in str(err)


def test_line_too_large_small_limit_and_boundary(tmp_path: Path) -> None:
    first = line(req("1"))
    limit = len(first) - 1  # the line without its newline is exactly at the limit
    path = write(tmp_path, first, line(req("2", pad="y" * 50)), line(req("3")))
    err = problem(path, rule="line_too_large", line_no=2, limits=InputLimits(max_line_bytes=limit))
    assert [p.line for p in err.problems] == [2]  # line 1 (at the limit) and line 3 are fine


def test_real_line_over_6mb(tmp_path: Path) -> None:
    base = line(req("2", pad=""))
    filler = 6 * 1024 * 1024 + 1 - (len(base) - 1)
    big = line(req("2", pad="z" * filler))
    assert len(big) - 1 == 6 * 1024 * 1024 + 1
    path = write(tmp_path, line(req("1")), big, line(req("3")), line(req("1")))
    err = problem(path, rule="line_too_large", line_no=2)
    assert str(6 * 1024 * 1024 + 1) in str(err)
    # Validation goes on after the oversized line: line 4 reuses line 1's id.
    assert any(p.rule == "duplicate_custom_id" and p.line == 4 for p in err.problems)


def test_line_of_exactly_6mb_is_fine(tmp_path: Path) -> None:
    base = line(req("1", pad=""))
    big = line(req("1", pad="z" * (6 * 1024 * 1024 - (len(base) - 1))))
    assert len(big) - 1 == 6 * 1024 * 1024
    path = write(tmp_path, big)
    assert validate_jsonl_file(path, CHAT).lines == 1


def test_too_many_lines_small_limit(tmp_path: Path) -> None:
    path = write(tmp_path, *(line(req(str(i))) for i in range(6)))
    limits = InputLimits(max_lines=5)
    err = problem(path, rule="too_many_lines", line_no=None, limits=limits)
    assert "6" in str(err)
    assert validate_jsonl_file(path, CHAT, limits=InputLimits(max_lines=6)).lines == 6


def test_file_too_large_small_limit(tmp_path: Path) -> None:
    path = write(tmp_path, *(line(req(str(i))) for i in range(3)))
    size = path.stat().st_size
    err = problem(path, rule="file_too_large", line_no=None, limits=InputLimits(max_bytes=size - 1))
    assert str(size) in str(err)
    assert validate_jsonl_file(path, CHAT, limits=InputLimits(max_bytes=size)).bytes == size


def test_default_limits_are_the_api_limits() -> None:
    limits = InputLimits()
    assert limits.max_bytes == 500 * 1024 * 1024
    assert limits.max_lines == 50_000
    assert limits.max_line_bytes == 6 * 1024 * 1024


def test_empty_file(tmp_path: Path) -> None:
    problem(write(tmp_path), rule="empty_file", line_no=None)


def test_file_of_blank_lines_is_empty(tmp_path: Path) -> None:
    problem(write(tmp_path, b"\n\n"), rule="empty_file", line_no=None)


def test_unreadable_path(tmp_path: Path) -> None:
    problem(tmp_path / "missing.jsonl", rule="unreadable", line_no=None)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    problem(tmp_path, rule="unreadable", line_no=None)


def test_invalid_endpoint_argument(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")))
    err = problem(path, "/v1/chat/completion", rule="invalid_endpoint", line_no=None)
    assert "/v1/chat/completion" in str(err)


def test_many_problems_are_listed_and_capped(tmp_path: Path) -> None:
    path = write(tmp_path, *(b"not json\n" for _ in range(200)))
    with pytest.raises(InputValidationError) as info:
        validate_jsonl_file(path, CHAT)
    assert info.value.first.line == 1
    assert info.value.truncated
    assert 1 <= len(info.value.problems) < 200
    assert "more problems" in str(info.value)


def test_path_like_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")))
    assert validate_jsonl_file(os.fspath(path), CHAT).path == str(path)


# ---- write_jsonl --------------------------------------------------------------------------


def test_write_jsonl_defaults_method_and_url(tmp_path: Path) -> None:
    requests = [{"custom_id": str(i), "body": {"model": MODEL, "messages": []}} for i in range(3)]
    path = tmp_path / "out" / "batch.jsonl"
    summary = write_jsonl(requests, path, CHAT)
    rows = [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines()]
    assert [r["method"] for r in rows] == ["POST"] * 3
    assert [r["url"] for r in rows] == [CHAT] * 3
    assert [r["custom_id"] for r in rows] == ["0", "1", "2"]
    assert summary == validate_jsonl_file(path, CHAT)
    assert summary.bytes == path.stat().st_size
    assert requests[0] == {"custom_id": "0", "body": {"model": MODEL, "messages": []}}  # input untouched


def test_write_jsonl_keeps_non_ascii_text(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    write_jsonl([req("1", content="你好")], path, CHAT)
    assert "你好" in path.read_text(encoding="utf-8")


def _requests_then_bad(bad: dict[str, Any], n_good: int = 3) -> Iterator[dict[str, Any]]:
    for i in range(n_good):
        yield req(f"ok-{i}")
    yield bad


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        (req("ok-0"), "duplicate_custom_id"),
        (req("x", url="/v1/embeddings"), "mismatched_url"),
        (req("x", model="other"), "mismatched_model"),
        (req("x", body_extra={1, 2}), "invalid_json"),
    ],
)
def test_write_jsonl_removes_its_partial_file_on_error(
    tmp_path: Path, bad: dict[str, Any], rule: str
) -> None:
    path = tmp_path / "batch.jsonl"
    with pytest.raises(InputValidationError) as info:
        write_jsonl(_requests_then_bad(bad), path, CHAT)
    assert not path.exists()
    p = next(p for p in info.value.problems if p.rule == rule)
    assert p.line == 4
    # A list is located by request and 0-based index, the way the user looks it up.
    assert f"{path}: request 4 (index 3): [{rule}]" in str(info.value)


def test_a_file_names_lines_and_a_list_names_requests_with_their_index(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (req("a"), req("b"), req("a"))) + "\n")
    with pytest.raises(InputValidationError) as from_file:
        validate_jsonl_file(path, CHAT)
    assert f"{path}:3: [duplicate_custom_id] field 'custom_id': custom_id 'a' already used on line 1" in str(
        from_file.value
    )
    with pytest.raises(InputValidationError) as from_list:
        write_jsonl([req("a"), req("b"), req("a")], tmp_path / "out.jsonl", CHAT, source="requests")
    assert (
        "requests: request 3 (index 2): [duplicate_custom_id] field 'custom_id': "
        "custom_id 'a' already used on request 1 (index 0)"
    ) in str(from_list.value)


def test_write_jsonl_removes_its_partial_file_when_the_source_fails(tmp_path: Path) -> None:
    def source() -> Iterator[dict[str, Any]]:
        yield req("1")
        raise RuntimeError("upstream query failed")

    path = tmp_path / "batch.jsonl"
    with pytest.raises(RuntimeError, match="upstream"):
        write_jsonl(source(), path, CHAT)
    assert not path.exists()


def test_write_jsonl_line_too_large(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    with pytest.raises(InputValidationError) as info:
        write_jsonl([req("1"), req("2", pad="p" * 500)], path, CHAT, limits=InputLimits(max_line_bytes=300))
    assert info.value.first.rule == "line_too_large"
    assert info.value.first.line == 2
    assert not path.exists()


def test_write_jsonl_test_model_limits(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    with pytest.raises(InputValidationError, match="too_many_lines"):
        write_jsonl((req(str(i), url=TEST_URL, model=TEST_MODEL) for i in range(101)), path, TEST_URL)
    assert not path.exists()


def test_write_jsonl_empty_input(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    with pytest.raises(InputValidationError, match="empty_file"):
        write_jsonl([], path, CHAT)
    assert not path.exists()


def test_write_jsonl_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(
        InputValidationError, match=r"table orders: request 2 \(index 1\): \[missing_custom_id\]"
    ):
        write_jsonl([req("1"), {"body": {"model": MODEL}}], tmp_path / "b.jsonl", CHAT, source="table orders")


def test_write_jsonl_unencodable_text_is_an_encoding_problem(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    with pytest.raises(InputValidationError) as info:
        write_jsonl([req("1"), req("2", content="broken \ud800 surrogate")], path, CHAT)
    assert info.value.first.line == 2
    assert info.value.first.rule == "invalid_encoding"
    assert not path.exists()


# ---- NaN / Infinity: Python reads and writes them, JSON (and the server) has no such numbers ----


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_a_file_names_line_and_field(tmp_path: Path, constant: str) -> None:
    bad = line(req("2")).replace(b'"body": {', f'"body": {{"temperature": {constant}, '.encode())
    path = write(tmp_path, line(req("1")), bad)
    err = problem(path, rule="invalid_number", line_no=2)
    assert err.problems[0].field == "body.temperature"
    assert "field 'body.temperature'" in str(err)


def test_nan_inside_a_prompt_text_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1", content="NaN and Infinity are words here")))
    assert validate_jsonl_file(path, CHAT).lines == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinity_in_request_dicts_is_rejected_with_field(tmp_path: Path, value: float) -> None:
    rows = [req("1"), req("2", temperature=0.5)]
    rows[1]["body"]["messages"].append({"role": "user", "content": "x", "weight": value})
    with pytest.raises(InputValidationError) as info:
        write_jsonl(rows, tmp_path / "out.jsonl", CHAT, source="requests")
    (p,) = info.value.problems
    assert (p.line, p.rule, p.field) == (2, "invalid_number", "body.messages[1].weight")
    assert "requests: request 2 (index 1): [invalid_number] field 'body.messages[1].weight'" in str(
        info.value
    )
    assert not (tmp_path / "out.jsonl").exists()


# ---- billing warnings (thinking by default, deprecated max_tokens) ---------------------------


def test_thinking_model_without_enable_thinking_is_one_warning_with_first_line_and_count(
    tmp_path: Path,
) -> None:
    rows = [req("1", model="qwen3.6-plus", enable_thinking=False)] + [
        req(str(i), model="qwen3.6-plus") for i in range(2, 6)
    ]
    path = write(tmp_path, *(line(r) for r in rows))
    summary = validate_jsonl_file(path, CHAT)
    (warning,) = summary.warnings
    assert (warning.rule, warning.first_line, warning.count) == ("thinking_default_on", 2, 4)
    text = warning.render(summary.path)
    assert text.startswith(f"{path}:2: [thinking_default_on] field 'body.enable_thinking':")
    assert "4 requests, the first on line 2" in text


@pytest.mark.parametrize(
    "model", ["qwen3.5-plus", "qwen3.5-flash", "qwen3.6-plus", "qwen3.7-max", "Qwen3.7-plus-2026-06-01"]
)
def test_thinking_series_names(tmp_path: Path, model: str) -> None:
    summary = validate_jsonl_file(write(tmp_path, line(req("1", model=model))), CHAT)
    assert [w.rule for w in summary.warnings] == ["thinking_default_on"]


@pytest.mark.parametrize(
    "model", ["qwen-plus", "qwen3-max", "qwen3.50-plus", "qwen2.5-72b-instruct", "qwen3.8-plus"]
)
def test_other_models_do_not_warn(tmp_path: Path, model: str) -> None:
    assert validate_jsonl_file(write(tmp_path, line(req("1", model=model))), CHAT).warnings == ()


def test_deprecated_max_tokens_warns_and_strict_cost_refuses(tmp_path: Path) -> None:
    path = write(tmp_path, line(req("1")), line(req("2", max_tokens=10)), line(req("3", max_tokens=10)))
    summary = validate_jsonl_file(path, CHAT)
    (warning,) = summary.warnings
    assert (warning.rule, warning.first_line, warning.count) == ("deprecated_max_tokens", 2, 2)
    assert "max_completion_tokens" in warning.message
    with pytest.raises(InputValidationError) as info:
        validate_jsonl_file(path, CHAT, strict_cost=True)
    assert f"{path}:2: [deprecated_max_tokens] field 'body.max_tokens':" in str(info.value)


def test_write_jsonl_warns_with_request_positions_and_strict_cost_removes_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    requests = [req("a", model="qwen3.5-plus", max_tokens=5)]
    summary = write_jsonl(requests, dest, CHAT)
    assert {w.rule for w in summary.warnings} == {"thinking_default_on", "deprecated_max_tokens"}
    assert "request 1 (index 0)" in summary.warnings[0].render(summary.path, "request")
    with pytest.raises(InputValidationError, match=r"request 1 \(index 0\): \[thinking_default_on\]"):
        write_jsonl(requests, dest, CHAT, strict_cost=True)
    assert not dest.exists()


def test_embeddings_never_warn_about_thinking(tmp_path: Path) -> None:
    row = req("e", url="/v1/embeddings", model="qwen3.6-plus")
    assert validate_jsonl_file(write(tmp_path, line(row)), "/v1/embeddings").warnings == ()


@pytest.mark.parametrize("text", ['{"a":1} x', '{"a"', "[1,", '{"custom_id": "1"}}'])
def test_invalid_json_message_is_pythons_own(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    err = problem(write(tmp_path, text.encode() + b"\n"), rule="invalid_json", line_no=1)
    assert str(expected.value) in err.problems[0].message
