"""Real-time chat completions and embeddings, and structured output (batch and real time).

Driven by the real ``openai`` SDK over loopback, as a user's own code would call the service.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from airflow_provider_qwenbatch.emulator import EmulatorHandle


class Address(BaseModel):
    city: str
    zip_code: str = Field(min_length=5, max_length=5)


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    score: float = Field(ge=0, le=1)
    stars: int = Field(ge=1, le=5)
    tags: list[str] = Field(min_length=2)
    spam: bool
    address: Address
    nickname: str | None = None


@pytest.fixture
def sdk(emu: EmulatorHandle) -> OpenAI:
    return OpenAI(api_key=emu.api_key, base_url=emu.base_url, max_retries=0)


def test_chat_completion_with_the_openai_sdk(sdk: OpenAI, emu: EmulatorHandle) -> None:
    messages: Any = [{"role": "user", "content": "Hello?"}]
    r = sdk.chat.completions.create(model="qwen-plus", messages=messages)
    assert r.object == "chat.completion"
    assert r.model == "qwen-plus"
    assert r.id.startswith("chatcmpl-")
    assert r.created > 0
    assert r.choices[0].index == 0
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage is not None
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    # Deterministic: the same request gets the same answer; another one another answer.
    again = sdk.chat.completions.create(model="qwen-plus", messages=messages)
    assert again.choices[0].message.content == r.choices[0].message.content
    other = sdk.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "Bye"}])
    assert other.choices[0].message.content != r.choices[0].message.content
    assert [e["status"] for e in emu.requests(endpoint="chat_completions")] == [200, 200, 200]


def test_realtime_answer_equals_the_batch_answer(sdk: OpenAI, http: httpx.Client, helpers: Any) -> None:
    final = helpers.run_batch(http, helpers.chat_lines(1, model="qwen-flash"))
    line = helpers.jsonl(http.get(f"/files/{final['output_file_id']}/content").text)[0]
    batch_content = line["response"]["body"]["choices"][0]["message"]["content"]
    r = sdk.chat.completions.create(model="qwen-flash", messages=[{"role": "user", "content": "Question 0?"}])
    assert r.choices[0].message.content == batch_content


def test_realtime_refuses_unknown_models_and_bad_keys(emu: EmulatorHandle, sdk: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="qwen-plsu", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    assert "qwen-plsu" in err.value.message
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="text-embedding-v9", input="x")
    with pytest.raises(openai.NotFoundError):  # the test model exists only inside the Batch API
        sdk.chat.completions.create(model="batch-test-model", messages=[{"role": "user", "content": "x"}])
    bad = OpenAI(api_key="sk-wrong", base_url=emu.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="qwen-plus", messages=[])


def test_realtime_faults_apply(emu: EmulatorHandle, sdk: OpenAI) -> None:
    emu.set_faults({"chat_completions": {"fail_next": ["429"]}})
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "x"}])
    assert sdk.chat.completions.create(model="qwen-plus", messages=[{"role": "user", "content": "x"}])


def test_embeddings_with_the_openai_sdk(sdk: OpenAI) -> None:
    r = sdk.embeddings.create(model="text-embedding-v4", input=["one", "two"], dimensions=8)
    assert r.object == "list"
    assert r.model == "text-embedding-v4"
    assert [d.index for d in r.data] == [0, 1]
    assert all(d.object == "embedding" and len(d.embedding) == 8 for d in r.data)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.total_tokens > 0
    single = sdk.embeddings.create(model="text-embedding-v4", input="one", dimensions=8)
    assert single.data[0].embedding == r.data[0].embedding


def test_json_object_response_format(sdk: OpenAI) -> None:
    r = sdk.chat.completions.create(
        model="qwen-plus",
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_json_schema_response_format_parses_into_the_pydantic_model(sdk: OpenAI) -> None:
    # The SDK's own structured-output path: it sends the model's JSON schema, then validates.
    r = sdk.chat.completions.parse(
        model="qwen-plus",
        messages=[{"role": "user", "content": "Review this."}],
        response_format=Review,
    )
    review = r.choices[0].message.parsed
    assert isinstance(review, Review)
    assert review.sentiment == "positive"  # enum -> its first value
    assert 0 <= review.score <= 1
    assert 1 <= review.stars <= 5
    assert len(review.tags) >= 2
    assert len(review.address.zip_code) == 5


def test_tool_call_for_structured_output(sdk: OpenAI) -> None:
    # What pydantic-ai sends for an output_type: a final_result tool the model must call.
    tool: Any = {
        "type": "function",
        "function": {"name": "final_result", "parameters": Review.model_json_schema()},
    }
    r = sdk.chat.completions.create(
        model="qwen-plus",
        messages=[{"role": "user", "content": "Review this."}],
        tools=[tool],
        tool_choice="required",
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    call: Any = choice.message.tool_calls[0]
    assert call.function.name == "final_result"
    Review.model_validate_json(call.function.arguments)


def test_streaming_chat_completion(sdk: OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Hello?"}]
    plain = sdk.chat.completions.create(model="qwen-plus", messages=messages)
    stream = sdk.chat.completions.create(
        model="qwen-plus", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None


def test_batch_lines_honour_response_format(http: httpx.Client, helpers: Any) -> None:
    schema = Review.model_json_schema()
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "qwen-plus",
                "messages": [{"role": "user", "content": f"Review {i}"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "Review", "schema": schema},
                },
            },
        }
        for i in range(3)
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    final = helpers.run_batch(http, data)
    assert final["status"] == "completed"
    out = helpers.jsonl(http.get(f"/files/{final['output_file_id']}/content").text)
    reviews = [
        Review.model_validate_json(x["response"]["body"]["choices"][0]["message"]["content"]) for x in out
    ]
    assert len(reviews) == 3
    # Strings carry a digest of the request, so rows differ.
    assert len({r.address.city for r in reviews}) == 3
