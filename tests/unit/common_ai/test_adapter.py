"""QwenBatchAdapter against a mocked DashScope (httpx.MockTransport): what it sends, what it refuses."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

pytest.importorskip("airflow.providers.common.ai.batch.base")

from airflow.providers.common.ai.batch.output_schema import build_output_spec
from airflow.providers.common.ai.exceptions import (
    LLMBatchInputError,
    LLMBatchLimitExceededError,
    LLMBatchModelMismatchError,
)
from pydantic import BaseModel

from airflow_provider_qwenbatch.client.models import BatchResultLine
from airflow_provider_qwenbatch.client.regions import (
    Region,
    batch_model_warning,
    region_of_base_url,
)
from airflow_provider_qwenbatch.client.sync import BatchClient
from airflow_provider_qwenbatch.common_ai.adapter import QwenBatchAdapter, tag_for
from airflow_provider_qwenbatch.common_ai.results import parse_result_line

KEY = "sk-ADAPTERTEST-11aa22bb"
SG = Region.SINGAPORE.base_url
KEY16 = "0123456789abcdef"


class Server:
    """A tiny DashScope: records uploads and creates, answers like the real API."""

    def __init__(self) -> None:
        self.uploads: list[bytes] = []
        self.creates: list[dict[str, Any]] = []
        self.order: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/files") and request.method == "POST":
            self.order.append("upload")
            self.uploads.append(request.read())
            return httpx.Response(
                200,
                json={
                    "id": "file-batch-1",
                    "object": "file",
                    "bytes": 1,
                    "purpose": "batch",
                    "filename": "x",
                    "created_at": 1,
                },
            )
        if path.endswith("/batches") and request.method == "POST":
            self.order.append("create")
            body = json.loads(request.read())
            self.creates.append(body)
            return httpx.Response(
                200,
                json={
                    "id": "batch_1",
                    "status": "validating",
                    "input_file_id": body["input_file_id"],
                    "metadata": body["metadata"],
                    "created_at": 1,
                },
            )
        return httpx.Response(404, json={"error": {"message": "no", "code": "not_found"}})


def _adapter(server: Server, base_url: str = SG) -> QwenBatchAdapter:
    client = BatchClient(KEY, base_url, transport=httpx.MockTransport(server))
    return QwenBatchAdapter(api_key=KEY, base_url=base_url, client=client)


def _lines(upload: bytes) -> list[dict[str, Any]]:
    # The JSONL file inside the multipart body: one request per line.
    return [json.loads(x.strip()) for x in upload.split(b"\n") if x.strip().startswith(b'{"custom_id"')]


class Answer(BaseModel):
    label: str


def test_submit_sends_dashscope_lines_and_the_tag() -> None:
    server = Server()
    result = _adapter(server).submit(
        [{"prompt": "a"}, {"prompt": "b", "max_tokens": 7, "params": {"temperature": 0.1}}],
        model="qwen-plus",
        idempotency_key=KEY16,
        input_fingerprint="f" * 64,
        output_spec=build_output_spec(Answer),
        system_prompt="sys",
        max_tokens=100,
        request_params={"enable_thinking": False},
    )
    assert result.batch_id == "batch_1" and result.provider_input_ref == "file-batch-1"
    lines = _lines(server.uploads[0])
    assert [line["custom_id"] for line in lines] == [f"{KEY16}-0", f"{KEY16}-1"]
    first, second = (line["body"] for line in lines)
    assert first["model"] == "qwen-plus"
    assert first["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "a"}]
    assert first["enable_thinking"] is False  # the user's parameter reaches the server unchanged
    assert (first["max_completion_tokens"], second["max_completion_tokens"]) == (100, 7)
    assert "max_tokens" not in first  # deprecated by DashScope in compatible mode
    assert second["temperature"] == 0.1
    assert first["response_format"]["type"] == "json_schema"
    assert first["response_format"]["json_schema"]["schema"]["properties"]["label"]["type"] == "string"
    (create,) = server.creates
    assert create["endpoint"] == "/v1/chat/completions"
    # No task context here: the tag falls back to the key, still a valid provider tag.
    assert tag_for(KEY16).matches(create["metadata"]["ds_name"])
    assert create["metadata"]["ds_description"] == f"common.ai {KEY16} {'f' * 16}"


def test_model_off_the_region_list_warns_before_upload_and_still_uploads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server()
    with caplog.at_level(logging.WARNING, logger="airflow_provider_qwenbatch.common_ai.adapter"):
        _adapter(server).submit(
            [{"prompt": "a"}],
            model="qwen-long",
            idempotency_key=KEY16,
            input_fingerprint="f" * 64,
            output_spec=build_output_spec(str),
        )
    (record,) = [r for r in caplog.records if "not on the singapore region's list" in r.getMessage()]
    assert "qwen-long" in record.getMessage()
    assert server.order == ["upload", "create"]
    # On the region's list: no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="airflow_provider_qwenbatch.common_ai.adapter"):
        _adapter(Server()).submit(
            [{"prompt": "a"}],
            model="qwen-flash",
            idempotency_key=KEY16,
            input_fingerprint="f" * 64,
            output_spec=build_output_spec(str),
        )
    assert not [r for r in caplog.records if "region's list" in r.getMessage()]


def test_validation_names_the_line_and_rule_before_any_call() -> None:
    server = Server()
    adapter = _adapter(server)
    spec = build_output_spec(str)
    with pytest.raises(LLMBatchInputError, match=r"requests: request 2 \(index 1\): \[invalid_json\]"):
        adapter.validate_requests(
            [{"prompt": "ok"}, {"prompt": "bad", "params": {"x": {1, 2}}}],
            model="qwen-plus",
            output_spec=spec,
            idempotency_key=KEY16,
        )
    with pytest.raises(LLMBatchModelMismatchError, match=r"Request 1 sets model='openai:gpt-5'"):
        adapter.validate_requests(
            [{"prompt": "a"}, {"prompt": "b", "model": "openai:gpt-5"}],
            model="qwen-plus",
            output_spec=spec,
            idempotency_key=KEY16,
        )
    with pytest.raises(LLMBatchModelMismatchError, match=r"mismatched_model.*one model per batch"):
        adapter.validate_requests(
            [{"prompt": "a"}, {"prompt": "b", "model": "alibaba:qwen-max"}],
            model="qwen-plus",
            output_spec=spec,
            idempotency_key=KEY16,
        )
    with pytest.raises(
        LLMBatchLimitExceededError, match=r"requests: request 1 \(index 0\): \[line_too_large\]"
    ):
        adapter.validate_requests(
            [{"prompt": "x" * (6 * 1024 * 1024 + 1)}],
            model="qwen-plus",
            output_spec=spec,
            idempotency_key=KEY16,
        )
    with pytest.raises(LLMBatchLimitExceededError, match=r"at most 50000 requests.*\.expand\(\)"):
        adapter.validate_requests(
            [{"prompt": "a"}] * 50_001, model="qwen-plus", output_spec=spec, idempotency_key=KEY16
        )
    assert server.order == []


def test_refused_create_is_not_reconciled() -> None:
    # A 400 is a definite answer: nothing was created, so no look-up and no second create.
    class Refusing(Server):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/batches") and request.method == "POST":
                self.order.append("create")
                return httpx.Response(400, json={"error": {"message": "bad window", "code": "invalid_value"}})
            if request.method == "GET":
                self.order.append("list")
            return super().__call__(request)

    server = Refusing()
    from airflow_provider_qwenbatch.client.errors import BadRequestError

    with pytest.raises(BadRequestError, match="bad window"):
        _adapter(server).submit(
            [{"prompt": "a"}],
            model="qwen-plus",
            idempotency_key=KEY16,
            input_fingerprint="f" * 64,
            output_spec=build_output_spec(str),
        )
    assert server.order == ["upload", "create"]


def test_regions_of_base_urls_and_model_advice() -> None:
    assert (
        region_of_base_url("https://ws-1.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1")
        is Region.SINGAPORE
    )
    assert region_of_base_url(SG) is Region.SINGAPORE
    assert region_of_base_url("https://dashscope.aliyuncs.com/compatible-mode/v1/") is Region.BEIJING
    assert region_of_base_url("http://127.0.0.1:8000/compatible-mode/v1") is None  # emulator: no advice
    assert batch_model_warning(Region.SINGAPORE, "qwen-plus") is None
    assert batch_model_warning(Region.BEIJING, "deepseek-v3") is None
    assert batch_model_warning(Region.SINGAPORE, "deepseek-v3") is not None
    assert batch_model_warning(Region.US, "anything") is None  # no documented list
    assert batch_model_warning(Region.SINGAPORE, "batch-test-model") is None


def _line(**kw: Any) -> BatchResultLine:
    return BatchResultLine.model_validate(kw)


def test_result_lines_map_to_common_ai_items() -> None:
    ok = parse_result_line(
        _line(
            custom_id=f"{KEY16}-4",
            response={
                "status_code": 200,
                "body": {
                    "model": "qwen-plus",
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5},
                    "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                },
            },
        )
    )
    assert (ok.index, ok.provider_status, ok.raw, ok.finish_reason) == (4, "success", "hi", "stop")
    assert ok.usage == {"input_tokens": 3, "output_tokens": 5}
    # A refusal in the OUTPUT file is an error, not a success.
    refused = parse_result_line(
        _line(
            custom_id=f"{KEY16}-0",
            response={
                "status_code": 400,
                "request_id": "rid-9",
                "body": {
                    "error": {
                        "code": "data_inspection_failed",
                        "message": "Input data may contain inappropriate content.",
                    }
                },
            },
        )
    )
    assert refused.provider_status == "errored"
    assert refused.error is not None and refused.error["provider_code"] == "data_inspection_failed"
    assert refused.error["request_id"] == "rid-9"
    cancelled = parse_result_line(
        _line(custom_id=f"{KEY16}-1", error={"code": "batch_cancelled", "message": "x"})
    )
    assert cancelled.provider_status == "cancelled"
    expired = parse_result_line(
        _line(custom_id=f"{KEY16}-2", error={"code": "batch_expired", "message": "x"})
    )
    assert expired.provider_status == "expired"
    with pytest.raises(ValueError, match="not one this adapter wrote"):
        parse_result_line(_line(custom_id="someone-elses"))
