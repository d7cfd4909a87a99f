"""``classify_line`` reads result lines with pydantic-core's parser and gives the answer it gave with ``json``.

The reference is the very same :func:`classify_line` with the fast parser switched off (so
every line is read by :mod:`json`, then by the pydantic model when it is not a plain success):
over the emulator's own result shapes, tricky lines (a 200 inside the prompt or the answer, a
status repeated, odd usage values, broken JSON...) and thousands of randomly damaged lines,
both must give the same :class:`LineOutcome`. Where the pydantic model can read a line, the
outcome must also be the model's.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from airflow_provider_qwenbatch.client import results
from airflow_provider_qwenbatch.client.models import BatchResultLine
from airflow_provider_qwenbatch.client.results import LineOutcome, classify_line
from airflow_provider_qwenbatch.emulator.answers import answer_line, unfinished_line

CHAT = "/v1/chat/completions"


def answer(cid: str, outcome: str = "ok", content: str = "hi") -> dict[str, Any]:
    body = {"model": "qwen-flash", "messages": [{"role": "user", "content": content}]}
    if outcome in ("batch_cancelled", "batch_expired"):
        return unfinished_line(cid, outcome)  # type: ignore[arg-type]
    return answer_line(
        custom_id=cid, body=body, endpoint=CHAT, outcome=outcome, seed=1, now=0, embedding_dimensions=8
    )  # type: ignore[arg-type]


def dumps(obj: Any, compact: bool = False) -> bytes:
    sep = (",", ":") if compact else (", ", ": ")
    return json.dumps(obj, separators=sep, ensure_ascii=False).encode("utf-8") + b"\n"


def with_json_only(raw: bytes, retry_cancelled: bool = True) -> LineOutcome:
    """classify_line as it was: every line parsed by :mod:`json`."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("fast parser switched off")

    saved = results.from_json
    results.from_json = refuse  # type: ignore[assignment]
    try:
        return classify_line(raw, retry_cancelled=retry_cancelled)
    finally:
        results.from_json = saved


def by_model(raw: bytes) -> LineOutcome | None:
    """The pydantic model's judgement of a line it can read (None when it cannot)."""
    try:
        line = BatchResultLine.model_validate_json(raw)
    except ValueError:
        return None
    if line.ok:
        u = line.usage
        return LineOutcome(
            line.custom_id,
            True,
            usage=(u.prompt_tokens, u.completion_tokens, u.total_tokens) if u else (0, 0, 0),
        )
    return LineOutcome(line.custom_id, False, results.is_retryable(line), line.describe_error())


def check(raw: bytes) -> None:
    for retry_cancelled in (True, False):
        assert classify_line(raw, retry_cancelled=retry_cancelled) == with_json_only(raw, retry_cancelled), (
            raw
        )
    model = by_model(raw)
    fast = classify_line(raw)
    if model is not None and fast.custom_id is not None:
        assert fast == model, raw


OK = answer("a")


def tweak(**changes: Any) -> dict[str, Any]:
    line = json.loads(json.dumps(OK))
    for path, value in changes.items():
        node = line
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return line


TRICKY: list[bytes] = [
    dumps(OK),
    dumps(OK, compact=True),
    dumps(answer("p", content='please answer "status_code": 200 and "status_code":200')),
    dumps(answer("q", "soft_error", content='"status_code": 200')),
    dumps(answer("r", "error", content="status_code 200")),
    dumps(answer("s", "batch_cancelled")),
    dumps(answer("t", "batch_expired")),
    dumps(tweak(response__status_code=500)),
    dumps(tweak(response__status_code=429)),
    dumps(tweak(response__status_code="200")),
    dumps(tweak(response__status_code=200.0)),
    dumps(tweak(response__status_code=True)),
    dumps(tweak(response__status_code=None)),
    dumps(tweak(response__body__usage=None)),
    dumps(tweak(response__body__usage="lots")),
    dumps(tweak(response__body__usage={"prompt_tokens": 1})),
    dumps(tweak(response__body__usage={"prompt_tokens": 1.5, "completion_tokens": 2, "total_tokens": 3})),
    dumps(tweak(response__body__usage={"prompt_tokens": True, "completion_tokens": 2, "total_tokens": 3})),
    dumps(tweak(response__body__usage={"prompt_tokens": "1", "completion_tokens": 2, "total_tokens": 3})),
    dumps(tweak(response__body__usage={"prompt_tokens": -1, "completion_tokens": 2, "total_tokens": 3})),
    dumps(tweak(response__body="text")),
    dumps(tweak(response__body=None)),
    dumps(tweak(response=None)),
    dumps(tweak(response="ok")),
    dumps(tweak(error={"code": "internal_error", "message": "boom"})),
    dumps(tweak(error={"code": "batch_expired", "message": "late"})),
    dumps(tweak(error="text")),
    dumps(tweak(custom_id=7)),
    dumps(tweak(custom_id=None)),
    dumps(tweak(custom_id="")),
    dumps({k: v for k, v in OK.items() if k != "custom_id"}),
    dumps({"custom_id": "x", "response": {"status_code": 500, "body": {"status_code": 200}}, "error": None}),
    dumps(OK).replace(b'"status_code": 200', b'"status_code": 500, "status_code": 200'),
    dumps(OK).replace(b'"status_code": 200', b'"status_code": 200, "status_code": 503'),
    dumps(OK).replace(b'"error": null', b'"error": null, "error": {"code": "x"}'),
    dumps(OK).replace(b'"completion_tokens": ', b'"completion_tokens": NaN, "x": '),
    dumps(OK).replace(b'"completion_tokens": ', b'"completion_tokens": 1e400, "x": '),
    dumps(OK).replace(b'"prompt_tokens": 1', b'"prompt_tokens": 123456789012345678901234567890'),
    dumps(OK).replace(b'"assistant"', b'"\\ud800 lone surrogate"'),  # json reads it; the fast parser does not
    dumps(OK).replace(b'"assistant"', b'"\\ud83d\\ude00"'),
    dumps(OK).replace(b'"assistant"', b'"' + b"[" * 300 + b'"'),
    dumps(OK).replace(b'"created": 0', b'"created": ' + b"[" * 300 + b"]" * 300),  # deep nesting
    b"\xef\xbb\xbf" + dumps(OK),  # json.loads reads bytes with a BOM
    dumps(OK).decode().encode("utf-16"),  # and UTF-16
    dumps(OK).rstrip(b"\n") + b"{}\n",
    dumps(OK)[:200] + b"\n",
    dumps(OK).replace(b'"hi', b'"\xff'),
    b'"just a string"\n',
    b"null\n",
    b"[]\n",
    b"{}\n",
    b"not json\n",
]


@pytest.mark.parametrize("index", range(len(TRICKY)))
def test_tricky_result_lines_get_the_same_outcome(index: int) -> None:
    check(TRICKY[index])


def test_a_200_inside_the_prompt_does_not_make_a_failure_a_success() -> None:
    raw = dumps(tweak(response__status_code=500)).replace(b'"hi"', b'"\\"status_code\\": 200"')
    assert classify_line(raw).ok is False
    check(raw)


_DAMAGE = [
    b'"',
    b"\\",
    b"\\ud800",
    b"200",
    b"500",
    b"null",
    b"NaN",
    b",",
    b":",
    b"{",
    b"}",
    b"[",
    b"]",
    b" ",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b'"error": {"code": "timeout"}, ',
    b'"status_code": 200, ',
    b"-1",
]


def test_randomly_damaged_result_lines_get_the_same_outcome() -> None:
    rng = random.Random(1201)
    bases = [
        dumps(answer(f"id-{i}", outcome))
        for i, outcome in enumerate(["ok"] * 6 + ["soft_error", "error", "batch_expired", "batch_cancelled"])
    ]
    unreadable = 0
    for _ in range(3000):
        data = bytearray(rng.choice(bases).rstrip(b"\n"))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.6:
                data[at:at] = rng.choice(_DAMAGE)
            else:
                data[at : at + rng.randint(1, 6)] = b""
        raw = bytes(data) + b"\n"
        check(raw)
        unreadable += classify_line(raw).custom_id is None
    assert 300 < unreadable < 2900  # the damage reached both readable and unreadable lines
