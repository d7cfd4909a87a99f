"""The validator's fast paths (pydantic-core's parser, the common request shape) give the full path's answer.

Each line is checked twice: by :class:`Checker` as a pass over a file does it (fast paths on),
and by a reference checker that always takes the full path (``json`` and every rule one by
one). Both must record the same problems, notes, model and ids, line after line, for ordinary
lines, tricky ones, and thousands of randomly damaged ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_qwenbatch.client import InputValidationError, validate_jsonl_file
from airflow_provider_qwenbatch.client.idtable import CompactIdIndex
from airflow_provider_qwenbatch.client.jsonl import DEFAULT_LIMITS, Checker

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
TEST_URL = "/v1/chat/ds-test"


class FullPathChecker(Checker):
    """The reference: every line through ``json`` and every rule, no fast path."""

    def check_raw(self, n: int, raw: bytes) -> None:
        self.check_raw_full(n, raw.rstrip(b"\r\n"))

    def check_request(self, n: int, obj: Any) -> None:
        self.check_request_rules(n, obj)


def pair(endpoint: str = CHAT, *, compact: bool = False) -> tuple[Checker, Checker]:
    seen = (CompactIdIndex(), CompactIdIndex()) if compact else (None, None)
    return (
        Checker("in.jsonl", endpoint, DEFAULT_LIMITS, seen=seen[0]),
        FullPathChecker("in.jsonl", endpoint, DEFAULT_LIMITS, seen=seen[1]),
    )


def state(checker: Checker) -> tuple[Any, ...]:
    problems = [(p.line, p.rule, p.field, p.message) for p in checker.problems]
    return problems, checker.warnings, checker.model, checker.model_line


def assert_same(fast: Checker, full: Checker, what: object) -> None:
    assert state(fast) == state(full), what
    # Problems are capped at 50: compare line by line, then start again from none.
    fast.problems.clear()
    full.problems.clear()


def req(
    cid: Any = "1", *, url: Any = CHAT, model: Any = "qwen-flash", method: Any = "POST", **body: Any
) -> Any:
    b: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], **body}
    if model is not None:
        b["model"] = model
    return {"custom_id": cid, "method": method, "url": url, "body": b}


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


GOOD = encode(req("base"))

# Lines the fast parser must refuse (or read exactly as json does); each after a good line.
TRICKY: list[bytes] = [
    GOOD.replace(b'"hi"', b'"\xff"'),  # invalid UTF-8
    GOOD.replace(b'"hi"', b'"\xed\xa0\x80"'),  # a surrogate encoded in UTF-8
    GOOD.replace(b'"hi"', b'"\xc0\x80"'),  # overlong NUL
    GOOD.replace(b'"hi"', b'"\\ud800"'),  # a lone surrogate escape: json reads it, the fast parser refuses
    GOOD.replace(b'"hi"', b'"\\ud83d\\ude00"'),  # a surrogate pair
    GOOD.replace(b'"hi"', b'"\x01"'),  # a raw control character
    GOOD.replace(b'"hi"', b'"tab\there"'),
    GOOD.replace(b'"hi"', b'"\\x41"'),  # an invalid escape
    GOOD.replace(b'"hi"', b'"NaN and Infinity are words"'),
    GOOD.replace(b'"messages"', b'"temperature":NaN,"messages"'),
    GOOD.replace(b'"messages"', b'"temperature":Infinity,"messages"'),
    GOOD.replace(b'"messages"', b'"temperature":-Infinity,"messages"'),
    GOOD.replace(b'"messages"', b'"temperature":1e400,"messages"'),
    GOOD.replace(b'"messages"', b'"temperature":1e400,"note":"Infinity","messages"'),
    GOOD.replace(b'"messages"', b'"temperature":01,"messages"'),
    GOOD.replace(b'"messages"', b'"temperature":1.,"messages"'),
    GOOD.replace(b'"messages"', b'"temperature":.5,"messages"'),
    GOOD.replace(b'"messages"', b'"temperature":+1,"messages"'),
    GOOD.replace(b'"messages"', b'"seed":123456789012345678901234567890,"messages"'),
    GOOD.replace(b'"messages"', b'"deep":' + b"[" * 300 + b"]" * 300 + b',"messages"'),
    GOOD.replace(b'"custom_id":"base"', b'"custom_id":"a","custom_id":"b"'),  # duplicate key: last wins
    GOOD.replace(b'"custom_id":"base"', b'"custom_id":"x\\u0000y"'),
    GOOD.replace(b'"custom_id":"base"', b'"custom_id":"\\u00e9t\\u00e9"'),
    GOOD.replace(b'"custom_id":"base"', '"custom_id":"été"'.encode()),  # same id, written raw
    GOOD.replace(b'"custom_id":"base"', b'"custom_id":"base"'),  # a duplicate of the good line
    GOOD.replace(b'"hi"}]', b'"hi"},]'),  # trailing comma
    GOOD.rstrip(b"\n") + b" \t\r\n",
    GOOD.rstrip(b"\n") + b"\x0c\n",  # a form feed after the object: json's pass accepts it
    GOOD.rstrip(b"\n") + "\u00a0\n".encode(),
    GOOD.rstrip(b"\n") + b"{}\n",
    GOOD.rstrip(b"\n") + b"\x00\n",
    b"  " + GOOD,
    b"\x0c" + GOOD,
    b"\xef\xbb\xbf" + GOOD,  # a BOM past the first line
    GOOD.rstrip(b"\n") + b"\r\r\n",
    b"[1, 2]\n",
    b'"just a string"\n',
    b"null\n",
    b"{}\n",
    b" \t\n",
    b"{'custom_id': 'single'}\n",
    b"{custom_id: 1}\n",
    GOOD.replace(b"true", b"True"),
]


def test_the_fast_path_is_taken_for_the_common_line() -> None:
    fast, _ = pair()
    fast.check_raw(1, encode(req("a")))
    fast.check_raw(2, encode(req("b")))
    assert fast._fast_model == "qwen-flash"


@pytest.mark.parametrize("index", range(len(TRICKY)))
def test_tricky_lines_get_the_full_paths_answer(index: int) -> None:
    fast, full = pair()
    for checker in (fast, full):
        checker.check_raw(1, GOOD)
        checker.check_raw(2, TRICKY[index])
        checker.check_raw(3, encode(req("after")))
    assert_same(fast, full, TRICKY[index])


def test_a_bom_on_the_first_line_is_refused_by_both() -> None:
    fast, full = pair()
    for checker in (fast, full):
        checker.check_raw(1, b"\xef\xbb\xbf" + GOOD)
    assert [p.rule for p in fast.problems] == ["utf8_bom"]
    assert_same(fast, full, "bom")


# Request shapes: each differs from the common one in one place the fast shape test looks at.
SHAPES: list[Any] = [
    req("a"),
    req("a"),  # duplicate of the one before
    req(""),
    req(None),
    req(7),
    req(["x"]),
    req("m1", method="post"),
    req("m2", method=None),
    req("u1", url="/v1/embeddings"),
    req("u2", url="/v1/other"),
    req("u3", url=None),
    {"custom_id": "b1", "method": "POST", "url": CHAT, "body": [1]},
    {"custom_id": "b2", "method": "POST", "url": CHAT},
    req("o1", model="qwen-plus"),
    req("o2", model=None),
    req("o3", model=""),
    req("o4", model=5),
    req("t1", max_tokens=5),
    req("t2", model="qwen3.6-plus"),
    req("t3", model="qwen3.6-plus", enable_thinking=False),
    req("t4", model="batch-test-model"),
    req("t5", url=TEST_URL, model="batch-test-model"),
    req("z"),
]


@pytest.mark.parametrize("endpoint", [CHAT, EMBED, TEST_URL, "/v1/nope"])
@pytest.mark.parametrize("first_model", ["qwen-flash", "qwen3.6-plus", "batch-test-model"])
def test_request_shapes_get_the_full_rules_answer(endpoint: str, first_model: str) -> None:
    """The fast shape test refuses whatever the rules refuse or note, after any first line."""
    fast, full = pair(endpoint, compact=True)
    for n, shape in enumerate([req("first", url=endpoint, model=first_model), *SHAPES], start=1):
        if isinstance(shape, dict) and shape.get("url") == CHAT:
            shape = {**shape, "url": endpoint}
        for checker in (fast, full):
            checker.check_raw(n, encode(shape))  # a file's line
            checker.check_request(1000 + n, json.loads(json.dumps(shape)))  # a request dict
        assert_same(fast, full, (n, shape))


_DAMAGE = [
    b'"',
    b"\\",
    b"\\u",
    b"d800",
    b"\\ud800",
    b"NaN",
    b"Infinity",
    b"-",
    b"1e400",
    b"0",
    b"01",
    b".",
    b",",
    b":",
    b"{",
    b"}",
    b"[",
    b"]",
    b" ",
    b"\t",
    b"\r",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xff",
    b"\xc3",
    b"\xc3\xa9",
    b"\xe2\x80\xa8",
    b"\xef\xbb\xbf",
    b"true",
    b"null",
    b"POST",
    b"qwen-flash",
    b"e5",
    b"E",
]


def damaged(rng: random.Random, line: bytes) -> bytes:
    data = bytearray(line.rstrip(b"\n"))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        how = rng.random()
        if how < 0.4:
            data[at:at] = rng.choice(_DAMAGE)
        elif how < 0.7:
            data[at : at + rng.randint(1, 4)] = b""
        else:
            data[at : at + 1] = rng.choice(_DAMAGE)
    return bytes(data) + b"\n"


def test_randomly_damaged_lines_get_the_full_paths_answer() -> None:
    rng = random.Random(20261201)
    bases = [
        encode(req(f"id-{i}", temperature=0.5, messages=[{"role": "user", "content": f"q{i} é 200"}]))
        for i in range(50)
    ]
    fast, full = pair(compact=True)
    refused = 0
    for n in range(1, 6001):
        line = damaged(rng, rng.choice(bases)) if n % 4 else rng.choice(bases)
        for checker in (fast, full):
            checker.check_raw(n, line)
        refused += bool(full.problems)
        assert_same(fast, full, (n, line))
    assert refused > 2000  # the damage did reach the rules


def test_a_number_too_large_for_a_double_is_sent_as_written(tmp_path: Path) -> None:
    """``1e400`` is valid JSON; only a NaN/Infinity token is refused, whatever words the prompt holds."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        encode(req("1", temperature=0.5)).replace(b"0.5", b"1e400")
        + encode(req("2", messages=[{"role": "user", "content": "Infinity"}])).replace(
            b'"messages"', b'"seed":1e400,"messages"'
        )
    )
    assert validate_jsonl_file(path, CHAT).lines == 2
    path.write_bytes(encode(req("1")).replace(b'"messages"', b'"seed":Infinity,"messages"'))
    with pytest.raises(InputValidationError) as info:
        validate_jsonl_file(path, CHAT)
    assert (info.value.first.rule, info.value.first.field) == ("invalid_number", "body.seed")
