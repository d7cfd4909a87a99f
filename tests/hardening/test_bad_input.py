"""Malformed input through SubmitBatchOperator: a clear error naming the place, and not one request sent.

Each case runs ``execute()`` with a stub context against the emulator and then reads the
emulator's request log: a bad input must not cost even an upload.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client.identity import BatchTag
from airflow_provider_qwenbatch.compat import AirflowException
from airflow_provider_qwenbatch.emulator.server import EmulatorHandle
from airflow_provider_qwenbatch.exceptions import BatchInputError
from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator
from tests.hardening.helpers import StubTI, chat_rows, context, write_jsonl

CHAT = "/v1/chat/completions"
LIST_SOURCE = "requests (list given to the operator)"


def row(i: int = 0, **changes: Any) -> dict[str, Any]:
    r = chat_rows(i + 1)[i]
    for key, value in changes.items():
        if value is _DROP:
            r.pop(key, None)
        else:
            r[key] = value
    return r


def body(**changes: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": "qwen-flash", "messages": [{"role": "user", "content": "hi"}]}
    for key, value in changes.items():
        if value is _DROP:
            b.pop(key, None)
        else:
            b[key] = value
    return b


_DROP = object()


def raw_file(name: str, data: bytes) -> Callable[[Path], dict[str, Any]]:
    def make(tmp: Path) -> dict[str, Any]:
        path = tmp / name
        path.write_bytes(data)
        return {"input_path": str(path)}

    return make


def rows_file(name: str, rows: list[Any], **op: Any) -> Callable[[Path], dict[str, Any]]:
    def make(tmp: Path) -> dict[str, Any]:
        return {"input_path": str(write_jsonl(tmp / name, rows)), **op}

    return make


def good_lines(n: int = 3) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in chat_rows(n)).encode()


def big_line_file(tmp: Path) -> dict[str, Any]:
    path = tmp / "huge-line.jsonl"
    with path.open("wb") as fh:
        fh.write(json.dumps(row(0)).encode() + b"\n")
        fh.write(
            json.dumps(
                row(1, body=body(messages=[{"role": "user", "content": "x" * (6 * 1024 * 1024)}]))
            ).encode()
        )
        fh.write(b"\n")
    return {"input_path": str(path)}


def ds_test_rows(n: int, content: str = "hi") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"t{i}",
            "method": "POST",
            "url": "/v1/chat/ds-test",
            "body": {"model": "batch-test-model", "messages": [{"role": "user", "content": content}]},
        }
        for i in range(n)
    ]


def requests_list(items: Any, **op: Any) -> Callable[[Path], dict[str, Any]]:
    return lambda tmp: {"requests": items, **op}


# (id, operator kwargs builder, fragments the message must hold)
FILE_CASES: list[tuple[str, Callable[[Path], dict[str, Any]], list[str]]] = [
    (
        "invalid-json",
        raw_file("a.jsonl", good_lines(1) + b'{"custom_id": "x",\n'),
        ["a.jsonl:2", "[invalid_json]"],
    ),
    (
        "truncated-json",
        raw_file("a.jsonl", good_lines(2) + good_lines(1)[:40]),
        ["a.jsonl:3", "[invalid_json]"],
    ),
    (
        "non-utf8",
        raw_file("a.jsonl", good_lines(1) + b'{"custom_id": "\xff\xfe"}\n'),
        ["a.jsonl:2", "[invalid_encoding]"],
    ),
    (
        "latin1-file",
        raw_file(
            "a.jsonl", json.dumps(row(0, custom_id="caf\u00e9"), ensure_ascii=False).encode("latin-1") + b"\n"
        ),
        ["a.jsonl:1", "[invalid_encoding]"],
    ),
    ("bom", raw_file("a.jsonl", b"\xef\xbb\xbf" + good_lines(2)), ["a.jsonl:1", "[utf8_bom]"]),
    ("empty-file", raw_file("empty.jsonl", b""), ["empty.jsonl", "[empty_file]"]),
    ("only-blank-lines", raw_file("blank.jsonl", b"\n\n  \n"), ["blank.jsonl", "[empty_file]"]),
    (
        "blank-line-inside",
        raw_file("a.jsonl", good_lines(1) + b"\n" + good_lines(1).replace(b"req-0", b"req-9")),
        ["a.jsonl:2", "[empty_line]"],
    ),
    (
        "missing-custom-id",
        rows_file("a.jsonl", [row(0), row(1, custom_id=_DROP)]),
        ["a.jsonl:2", "[missing_custom_id]", "'custom_id'"],
    ),
    ("empty-custom-id", rows_file("a.jsonl", [row(0, custom_id="")]), ["a.jsonl:1", "[missing_custom_id]"]),
    (
        "custom-id-not-string",
        rows_file("a.jsonl", [row(0, custom_id=17)]),
        ["a.jsonl:1", "[invalid_custom_id]", "'custom_id'"],
    ),
    (
        "duplicate-custom-id",
        rows_file("a.jsonl", [row(0), row(1), row(0)]),
        ["a.jsonl:3", "[duplicate_custom_id]", "line 1"],
    ),
    (
        "method-get",
        rows_file("a.jsonl", [row(0, method="GET")]),
        ["a.jsonl:1", "[invalid_method]", "'method'"],
    ),
    (
        "method-missing",
        rows_file("a.jsonl", [row(0), row(1, method=_DROP)]),
        ["a.jsonl:2", "[invalid_method]"],
    ),
    ("method-lowercase", rows_file("a.jsonl", [row(0, method="post")]), ["a.jsonl:1", "[invalid_method]"]),
    (
        "url-unknown",
        rows_file("a.jsonl", [row(0, url="/v1/completions")]),
        ["a.jsonl:1", "[url_not_found]", "'url'"],
    ),
    ("url-missing", rows_file("a.jsonl", [row(0), row(1, url=_DROP)]), ["a.jsonl:2", "[url_not_found]"]),
    (
        "url-absolute",
        rows_file(
            "a.jsonl", [row(0, url="https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions")]
        ),
        ["a.jsonl:1", "[url_not_found]"],
    ),
    (
        "url-mixed",
        rows_file("a.jsonl", [row(0), row(1, url="/v1/embeddings")]),
        ["a.jsonl:2", "[mismatched_url]"],
    ),
    (
        "url-other-than-endpoint",
        rows_file("a.jsonl", [row(0)], endpoint="/v1/embeddings"),
        ["a.jsonl:1", "[mismatched_url]"],
    ),
    (
        "models-mixed",
        rows_file("a.jsonl", [row(0), row(1), row(2, body=body(model="qwen-plus"))]),
        ["a.jsonl:3", "[mismatched_model]", "line 1"],
    ),
    (
        "model-missing",
        rows_file("a.jsonl", [row(0, body=body(model=_DROP))]),
        ["a.jsonl:1", "[missing_model]", "'body.model'"],
    ),
    (
        "model-not-string",
        rows_file("a.jsonl", [row(0, body=body(model=42))]),
        ["a.jsonl:1", "[missing_model]"],
    ),
    ("body-list", rows_file("a.jsonl", [row(0, body=[1, 2])]), ["a.jsonl:1", "[invalid_body]", "'body'"]),
    ("body-string", rows_file("a.jsonl", [row(0), row(1, body="hello")]), ["a.jsonl:2", "[invalid_body]"]),
    ("body-missing", rows_file("a.jsonl", [row(0, body=_DROP)]), ["a.jsonl:1", "[invalid_body]"]),
    ("line-is-array", rows_file("a.jsonl", [row(0), [1, 2, 3]]), ["a.jsonl:2", "[invalid_request]"]),
    ("line-is-string", rows_file("a.jsonl", ["just text"]), ["a.jsonl:1", "[invalid_request]"]),
    ("line-over-6mb", big_line_file, ["huge-line.jsonl:2", "[line_too_large]"]),
    (
        "test-model-on-chat-endpoint",
        rows_file("a.jsonl", [row(0, body=body(model="batch-test-model"))]),
        ["a.jsonl:1", "[mismatched_test_url]"],
    ),
    (
        "test-endpoint-with-real-model",
        rows_file("a.jsonl", [row(0, url="/v1/chat/ds-test")], endpoint="/v1/chat/ds-test"),
        ["a.jsonl:1", "[mismatched_test_url]"],
    ),
    # More lines or bytes than one batch holds are split into shards now (tests/unit/client/
    # test_shards.py, tests/integration/test_sharded_submit.py); one line over a batch's limit
    # cannot be split and is still refused.
    (
        "test-model-line-over-1mb",
        rows_file("t.jsonl", ds_test_rows(1, "y" * 1_100_000), endpoint="/v1/chat/ds-test"),
        ["t.jsonl:1", "[line_too_large]"],
    ),
    ("path-missing", lambda tmp: {"input_path": str(tmp / "nope.jsonl")}, ["nope.jsonl", "[unreadable]"]),
    ("path-is-folder", lambda tmp: {"input_path": str(tmp)}, ["[unreadable]"]),
    (
        "file-uri-missing",
        lambda tmp: {"input_path": f"file://{tmp}/gone.jsonl"},
        ["gone.jsonl", "[unreadable]"],
    ),
    (
        "list-item-not-object",
        requests_list([row(0), "oops"]),
        [f"{LIST_SOURCE}: request 2 (index 1)", "[invalid_request]"],
    ),
    (
        "list-missing-custom-id",
        requests_list([row(0), row(1), {"body": body()}]),
        [f"{LIST_SOURCE}: request 3 (index 2)", "[missing_custom_id]"],
    ),
    (
        "list-not-json-serialisable",
        requests_list([row(0, body=body(temperature={1, 2}))]),
        [f"{LIST_SOURCE}: request 1 (index 0)", "[invalid_json]"],
    ),
    (
        "list-lone-surrogate",
        requests_list([row(0, custom_id="a\ud800b")]),
        [f"{LIST_SOURCE}: request 1 (index 0)", "[invalid_encoding]"],
    ),
    ("list-empty", requests_list([]), [LIST_SOURCE, "[empty_file]"]),
    (
        "list-duplicate-ids",
        requests_list([row(0), row(0)]),
        [f"{LIST_SOURCE}: request 2 (index 1)", "[duplicate_custom_id]"],
    ),
    (
        "list-mixed-models",
        requests_list([row(0), row(1, body=body(model="qwen-max"))]),
        [f"{LIST_SOURCE}: request 2 (index 1)", "[mismatched_model]"],
    ),
    (
        "requests-rendered-to-string",
        requests_list("[{'custom_id': 'a'}]"),
        ["requests must be request dicts", "got str", "not templated"],
    ),
    (
        "ds-description-too-long",
        rows_file("a.jsonl", [row(0)], metadata={"ds_description": "d" * 201}),
        ["metadata.ds_description", "201", "200"],
    ),
    (
        "metadata-value-not-string",
        rows_file("a.jsonl", [row(0)], metadata={"ds_name": 5}),
        ["metadata.ds_name"],
    ),
    (
        "metadata-not-a-dict",
        rows_file("a.jsonl", [row(0)], metadata="ds_name=x"),
        ["metadata must be a dict"],
    ),
    (
        "ds-description-not-string",
        rows_file("a.jsonl", [row(0)], metadata={"ds_description": ["a"]}),
        ["metadata.ds_description"],
    ),
]


def _run(op: SubmitBatchOperator) -> BaseException:
    with pytest.raises(AirflowException) as info:
        op.execute(context(StubTI("hardening_bad_input", "run-1", op.task_id)))
    return info.value


@pytest.mark.parametrize(("make", "fragments"), [pytest.param(m, f, id=i) for i, m, f in FILE_CASES])
def test_bad_input_is_refused_before_any_request(
    emulator: EmulatorHandle, tmp_path: Path, make: Callable[[Path], dict[str, Any]], fragments: list[str]
) -> None:
    op = SubmitBatchOperator(task_id="submit", **make(tmp_path))
    err = _run(op)
    message = str(err)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # Input problems are final (AirflowFailException): a retry would meet the same input.
    assert isinstance(err, BatchInputError), type(err)
    # Reported once: no chained client exception whose traceback would repeat the same text.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), repr(
        err.__cause__
    )
    assert emulator.requests() == []


@pytest.mark.parametrize("window", ["25x", "12h", "400h", "0d", "15d", "24", "h24", "1.5d", " "])
def test_bad_completion_window(emulator: EmulatorHandle, window: str) -> None:
    # At parse time, when literal...
    with pytest.raises(BatchInputError, match=r"submit: completion_window") as info:
        SubmitBatchOperator(task_id="submit", requests=[row(0)], completion_window=window)
    assert repr(window) in str(info.value)
    # ...and at execute, when it came from a template.
    op = SubmitBatchOperator(task_id="submit", requests=[row(0)], completion_window="{{ params.window }}")
    op.completion_window = window  # what rendering the template does
    err = _run(op)
    assert isinstance(err, BatchInputError)
    assert "completion_window" in str(err) and repr(window) in str(err)
    assert emulator.requests() == []


def test_valid_windows_pass(emulator: EmulatorHandle) -> None:
    for window in ("24h", "1d", "7d", "14d", "336h"):
        SubmitBatchOperator(task_id="submit", requests=[row(0)], completion_window=window)


def test_unknown_conn_id(emulator: EmulatorHandle) -> None:
    op = SubmitBatchOperator(task_id="submit", requests=[row(0)], conn_id="qwen_no_such_conn")
    err = _run(op)
    assert "qwen_no_such_conn" in str(err)
    assert emulator.requests() == []


def test_missing_api_key(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_QWEN_NOKEY", json.dumps({"conn_type": "qwen_batch", "host": emulator.base_url})
    )
    op = SubmitBatchOperator(task_id="submit", requests=[row(0)], conn_id="qwen_nokey")
    err = _run(op)
    assert "'qwen_nokey'" in str(err) and "no API key" in str(err) and "DASHSCOPE_API_KEY" in str(err)
    assert emulator.requests() == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [({"region": "mars"}, "extra 'region'"), ({"timeout": "soon"}, "extra 'timeout'")],
)
def test_bad_connection_extra(
    emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], fragment: str
) -> None:
    conn = {
        "conn_type": "qwen_batch",
        "host": emulator.base_url,
        "password": emulator.api_key,
        "extra": extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_QWEN_BADEXTRA", json.dumps(conn))
    err = _run(SubmitBatchOperator(task_id="submit", requests=[row(0)], conn_id="qwen_badextra"))
    assert "'qwen_badextra'" in str(err) and fragment in str(err)
    assert emulator.requests() == []


def test_long_user_ds_name_is_shortened_not_refused(emulator: EmulatorHandle) -> None:
    user_name = "n" * 300
    op = SubmitBatchOperator(
        task_id="submit", requests=[row(0)], metadata={"ds_name": user_name}, wait_for_completion=False
    )
    ti = StubTI("hardening_bad_input", "run-1", "submit")
    summary = op.execute(context(ti))
    (entry,) = emulator.batches(lines=False)
    ds_name = entry["batch"]["metadata"]["ds_name"]
    assert entry["batch"]["id"] == summary["batch_id"]
    assert len(ds_name) <= 100
    assert ds_name.startswith("n" * 45 + "…")  # 100 minus the 53-character tag with its input part
    assert BatchTag("hardening_bad_input", "run-1", "submit").matches(ds_name)


def test_unknown_endpoint_is_refused_when_the_operator_is_built(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    # Like completion_window, the endpoint is checked when the DAG is parsed: no run ever starts.
    with pytest.raises(BatchInputError, match=r"submit: endpoint '/v1/completions' is not one of /v1/chat"):
        SubmitBatchOperator(
            task_id="submit", **rows_file("a.jsonl", [row(0)], endpoint="/v1/completions")(tmp_path)
        )
    assert emulator.requests() == []
