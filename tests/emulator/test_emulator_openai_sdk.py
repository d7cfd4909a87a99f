"""The official openai SDK, unchanged, works against the emulator."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest
from openai import OpenAI

from airflow_provider_qwenbatch.emulator import EmulatorHandle


@pytest.fixture
def sdk(emu: EmulatorHandle) -> OpenAI:
    return OpenAI(api_key=emu.api_key, base_url=emu.base_url, max_retries=0)


def _input(n: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "custom_id": str(i),
                "method": "POST",
                "url": "/v1/chat/ds-test",
                "body": {"model": "batch-test-model", "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        + "\n"
        for i in range(n)
    ).encode()


def test_full_flow_with_the_openai_sdk(sdk: OpenAI) -> None:
    f = sdk.files.create(file=("in.jsonl", io.BytesIO(_input(5))), purpose="batch")
    assert f.id.startswith("file-batch-")
    assert sdk.files.retrieve(f.id).bytes == f.bytes
    b = sdk.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/ds-test",  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"ds_name": "sdk run af-123", "ds_description": "from the sdk"},
    )
    assert b.status == "validating"
    assert b.expires_at is None
    deadline = time.monotonic() + 10
    while b.status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
        b = sdk.batches.retrieve(b.id)
    assert b.request_counts is not None
    assert b.request_counts.completed == 5
    assert b.output_file_id is not None
    assert b.error_file_id is None
    lines = [json.loads(x) for x in sdk.files.content(b.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [str(i) for i in range(5)]
    assert {x["response"]["body"]["choices"][0]["message"]["content"] for x in lines} == {
        "This is a test result."
    }

    page = sdk.batches.list(limit=10, extra_query={"ds_name": "af-123", "status": "completed"})
    assert [x.id for x in page.data] == [b.id]
    page = sdk.batches.list(extra_query={"input_file_ids": f.id})
    assert [x.id for x in page.data] == [b.id]
    assert sdk.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(f.id)


def test_cancel_with_the_openai_sdk(sdk: OpenAI, emu: EmulatorHandle) -> None:
    emu.set_config(lines_per_second=20)
    f = sdk.files.create(file=("in.jsonl", io.BytesIO(_input(100))), purpose="batch")
    b = sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/ds-test", completion_window="24h")  # type: ignore[arg-type]
    c = sdk.batches.cancel(b.id)
    assert c.status == "cancelling"
    assert c.cancelling_at is None
    deadline = time.monotonic() + 10
    while c.status != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.02)
        c = sdk.batches.retrieve(b.id)
    assert c.cancelling_at is not None
    assert c.cancelled_at is not None


def test_sdk_sees_auth_errors(emu: EmulatorHandle) -> None:
    bad = OpenAI(api_key="sk-wrong", base_url=emu.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.batches.list()
    assert info.value.code == "invalid_api_key"
