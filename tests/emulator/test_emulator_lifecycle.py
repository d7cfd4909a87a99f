"""Batch lifecycle: transitions, validation codes, per-line failures, cancel at each status, expiry."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.emulator import EmulatorConfig, EmulatorHandle, running_emulator


def _line(cid: Any = "a", model: Any = "qwen-flash", url: Any = "/v1/chat/completions", **extra: Any) -> str:
    obj = {"custom_id": cid, "method": "POST", "url": url, "body": {"model": model, "messages": []}}
    obj.update(extra)
    return json.dumps(obj)


def test_every_transition_in_order(http: httpx.Client, helpers: Any, emu: EmulatorHandle) -> None:
    emu.set_config(validation_delay=0.3, lines_per_second=40, finalize_delay=0.3)
    f = helpers.upload(http, helpers.chat_lines(12))
    b = helpers.create(http, f["id"])
    seen = [b["status"]]
    counts = []
    while seen[-1] != "completed":
        cur = http.get(f"/batches/{b['id']}").json()
        if cur["status"] != seen[-1]:
            seen.append(cur["status"])
        if cur["status"] == "in_progress":
            counts.append(cur["request_counts"]["completed"])
            assert cur["request_counts"]["total"] == 12
            assert cur["in_progress_at"] is not None
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert counts == sorted(counts)
    assert len(set(counts)) > 2
    assert cur["finalizing_at"] is not None
    assert cur["completed_at"] >= cur["finalizing_at"]
    assert cur["failed_at"] is None
    assert cur["expires_at"] is None


@pytest.mark.parametrize(
    ("lines", "code", "param", "line"),
    [
        ([_line(url="/v1/chat/completion")], "url_not_found", "url", 1),
        ([_line("a"), _line("b", model="qwen-plus")], "mismatched_model", "body.model", 2),
        ([_line("a"), _line("a")], "duplicate_custom_id", "custom_id", 2),
        ([_line(model="batch-test-model")], "mismatched_test_url", "url", 1),
        ([_line(model="gpt-4o")], "model_not_found", "body.model", 1),
        ([_line("a"), "{not json"], "invalid_json_line", None, 2),
        ([_line(url="/v1/embeddings")], "mismatched_url", "url", 1),
        ([_line(cid=None)], "missing_required_parameter", "custom_id", 1),
        ([_line(method="GET")], "invalid_method", "method", 1),
        ([_line("a"), "", _line("b")], "invalid_json_line", None, 2),
        (["\ufeff" + _line()], "invalid_json_line", None, 1),
    ],
)
def test_validation_codes(
    http: httpx.Client, helpers: Any, lines: list[str], code: str, param: Any, line: int
) -> None:
    b = helpers.run_batch(http, ("\n".join(lines) + "\n").encode())
    assert b["status"] == "failed"
    assert b["failed_at"] is not None
    assert b["in_progress_at"] is None
    assert b["output_file_id"] is None
    assert b["error_file_id"] is None
    assert b["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert {"code": code, "param": param, "line": line} in [
        {k: e[k] for k in ("code", "param", "line")} for e in b["errors"]["data"]
    ]


def test_url_not_found_message_matches_the_service(http: httpx.Client, helpers: Any) -> None:
    b = helpers.run_batch(
        http, (_line(model="batch-test-model", url="/v1/chat/completion") + "\n").encode(), "/v1/chat/ds-test"
    )
    assert b["errors"]["data"] == [
        {
            "code": "url_not_found",
            "message": "The provided url '/v1/chat/completion' is not supported by the Batch API.",
            "param": "url",
            "line": 1,
        }
    ]


def test_trailing_blank_lines_are_fine(http: httpx.Client, helpers: Any) -> None:
    assert helpers.run_batch(http, helpers.chat_lines(2) + b"\n\n")["status"] == "completed"


def test_size_limits() -> None:
    cfg = EmulatorConfig.fast(max_lines=3, max_line_bytes=300, max_file_bytes=2000, test_model_max_lines=2)
    with (
        running_emulator(cfg) as emu,
        httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"}) as http,
    ):
        from emulator_helpers import chat_lines, run_batch

        def codes(data: bytes, endpoint: str = "/v1/chat/completions") -> list[Any]:
            b = run_batch(http, data, endpoint)
            assert b["status"] == "failed"
            return [(e["code"], e["line"]) for e in b["errors"]["data"]]

        assert codes(chat_lines(4)) == [("too_many_lines", None)]
        assert codes(chat_lines(3, model="batch-test-model", url="/v1/chat/ds-test"), "/v1/chat/ds-test") == [
            ("too_many_lines", None)
        ]
        long = json.dumps(
            {
                "custom_id": "x",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "qwen-flash", "p": "y" * 400},
            }
        )
        assert codes((long + "\n").encode()) == [("line_too_large", 1)]
        assert codes(b"x" * 2500) == [("file_too_large", None)]
        assert run_batch(http, chat_lines(3))["status"] == "completed"


def test_empty_file_fails(http: httpx.Client, helpers: Any) -> None:
    b = helpers.run_batch(http, b"\n")
    assert [e["code"] for e in b["errors"]["data"]] == ["empty_file"]


def test_line_failures_and_soft_errors() -> None:
    cfg = EmulatorConfig.fast(line_error_rate=0.2, line_soft_error_rate=0.2, seed=7)
    with (
        running_emulator(cfg) as emu,
        httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"}) as http,
    ):
        from emulator_helpers import chat_lines, jsonl, run_batch

        b = run_batch(http, chat_lines(200))
        counts = b["request_counts"]
        out = jsonl(http.get(f"/files/{b['output_file_id']}/content").text)
        err = jsonl(http.get(f"/files/{b['error_file_id']}/content").text)
        assert b["error_file_id"].startswith("file-batch_output-")
        assert counts["total"] == 200
        assert counts["failed"] == len(err)
        assert counts["completed"] == len(out)
        assert 20 < len(err) < 60
        soft = [x for x in out if x["response"]["status_code"] != 200]
        assert 20 < len(soft) < 60  # non-200 lines inside the OUTPUT file, not counted as failed
        assert all(x["error"] is None for x in out)
        assert all(
            x["error"]["code"] and x["error"]["message"] and x["response"]["status_code"] != 200 for x in err
        )
        assert sorted(x["custom_id"] for x in out + err) == sorted(f"req-{i}" for i in range(200))
        # Zero lines lost: the admin view lists every line once.
        state = emu.batch_state(b["id"])
        assert sorted(r["line"] for r in state["results"]) == list(range(1, 201))
        # Deterministic by seed: a second run fails the same custom ids.
        b2 = run_batch(http, chat_lines(200))
        err2 = jsonl(http.get(f"/files/{b2['error_file_id']}/content").text)
        assert {x["custom_id"] for x in err2} == {x["custom_id"] for x in err}


def test_answers_are_deterministic_and_plausible(http: httpx.Client, helpers: Any) -> None:
    b1 = helpers.run_batch(http, helpers.chat_lines(3))
    b2 = helpers.run_batch(http, helpers.chat_lines(3))

    def answers(b: dict[str, Any]) -> dict[str, Any]:
        lines = helpers.jsonl(http.get(f"/files/{b['output_file_id']}/content").text)
        return {x["custom_id"]: x["response"]["body"] for x in lines}

    a1, a2 = answers(b1), answers(b2)
    for cid, body in a1.items():
        assert body["choices"][0]["message"]["content"] == a2[cid]["choices"][0]["message"]["content"]
        u = body["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0
        assert body["model"] == "qwen-flash"
    assert len({b["choices"][0]["message"]["content"] for b in a1.values()}) == 3


def test_embeddings(http: httpx.Client, helpers: Any) -> None:
    data = "".join(
        json.dumps(
            {
                "custom_id": str(i),
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-v4", "input": f"text {i}", "dimensions": 8},
            }
        )
        + "\n"
        for i in range(2)
    ).encode()
    b = helpers.run_batch(http, data, "/v1/embeddings")
    lines = helpers.jsonl(http.get(f"/files/{b['output_file_id']}/content").text)
    vectors = {x["custom_id"]: x["response"]["body"]["data"][0]["embedding"] for x in lines}
    assert all(len(v) == 8 for v in vectors.values())
    assert vectors["0"] != vectors["1"]


def test_cancel_while_validating(http: httpx.Client, helpers: Any, emu: EmulatorHandle) -> None:
    emu.set_config(validation_delay=5)
    f = helpers.upload(http, helpers.chat_lines(3))
    b = helpers.create(http, f["id"])
    reply = http.post(f"/batches/{b['id']}/cancel").json()
    assert reply["status"] == "cancelling"
    assert reply["cancelling_at"] is None
    done = helpers.wait_status(http, b["id"], "cancelled")
    assert done["cancelling_at"] is not None
    assert done["cancelled_at"] is not None
    assert done["output_file_id"] is None
    assert done["error_file_id"] is None


def test_cancel_in_progress_keeps_finished_lines(
    http: httpx.Client, helpers: Any, emu: EmulatorHandle
) -> None:
    emu.set_config(lines_per_second=100, cancel_delay=0.5)
    f = helpers.upload(http, helpers.chat_lines(2000))
    b = helpers.create(http, f["id"])
    helpers.wait_for(http, b["id"], lambda x: x["request_counts"]["completed"] >= 20)
    reply = http.post(f"/batches/{b['id']}/cancel").json()
    assert reply["status"] == "cancelling"
    assert reply["cancelling_at"] is None
    # Cancelling again answers the batch unchanged.
    again = http.post(f"/batches/{b['id']}/cancel")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelling"
    assert http.get(f"/batches/{b['id']}").json()["status"] == "cancelling"
    done = helpers.wait_status(http, b["id"], "cancelled")
    counts = done["request_counts"]
    assert counts["total"] == 2000
    assert counts["completed"] + counts["failed"] == 2000
    assert 20 <= counts["completed"] < 2000
    out = helpers.jsonl(http.get(f"/files/{done['output_file_id']}/content").text)
    err = helpers.jsonl(http.get(f"/files/{done['error_file_id']}/content").text)
    assert len(out) == counts["completed"]
    assert len(err) == counts["failed"]
    assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
    assert done["error_file_id"].startswith("file-batch_output-")


def test_cancel_while_finalizing(http: httpx.Client, helpers: Any, emu: EmulatorHandle) -> None:
    emu.set_config(finalize_delay=5)
    f = helpers.upload(http, helpers.chat_lines(3))
    b = helpers.create(http, f["id"])
    helpers.wait_status(http, b["id"], "finalizing")
    assert http.post(f"/batches/{b['id']}/cancel").json()["status"] == "cancelling"
    done = helpers.wait_status(http, b["id"], "cancelled")
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert done["output_file_id"]
    assert done["error_file_id"] is None


def test_cancel_terminal_batch_is_400(http: httpx.Client, helpers: Any) -> None:
    done = helpers.run_batch(http, helpers.chat_lines(1))
    r = http.post(f"/batches/{done['id']}/cancel")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_batch_status"
    assert r.headers["x-request-id"]
    assert http.post("/batches/batch_missing/cancel").status_code == 404


def test_expiry_with_time_scale() -> None:
    # 24 h at 3600x pass in 24 s; at 200,000x in about 0.43 s.
    cfg = EmulatorConfig.fast(time_scale=200_000, lines_per_second=50)
    with (
        running_emulator(cfg) as emu,
        httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"}) as http,
    ):
        from emulator_helpers import chat_lines, create, jsonl, upload, wait_status

        f = upload(http, chat_lines(500))
        b = create(http, f["id"])
        done = wait_status(http, b["id"], "expired")
        assert done["expired_at"] is not None
        assert done["completed_at"] is None
        counts = done["request_counts"]
        assert counts["completed"] < 500
        assert counts["completed"] + counts["failed"] == 500
        err = jsonl(http.get(f"/files/{done['error_file_id']}/content").text)
        assert {x["error"]["code"] for x in err} == {"batch_expired"}
        processed = emu.batch_state(b["id"])["results"]
        ran = [r for r in processed if r["outcome"] != "batch_expired"]
        assert len(ran) == counts["completed"]  # unprocessed lines were not run
