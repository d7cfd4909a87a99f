"""Price table, cost from token counts, the documented token estimate and the max_input_tokens guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_qwenbatch.client import InputValidationError
from airflow_provider_qwenbatch.client.cost import (
    PriceTable,
    check_max_input_tokens,
    estimate_file_tokens,
    estimate_request_tokens,
    estimate_text_tokens,
)

TABLE = {
    "qwen-plus": {"input": 0.0008, "output": 0.002, "unit": 1000, "currency": "CNY", "batch_discount": 0.5}
}


def test_cost_uses_the_table_and_its_discount() -> None:
    table = PriceTable.from_json(json.dumps(TABLE))
    cost = table.cost("qwen-plus", prompt_tokens=10_000, completion_tokens=2_000)
    assert cost.currency == "CNY"
    assert cost.amount == pytest.approx((10 * 0.0008 + 2 * 0.002) * 0.5)
    no_discount = PriceTable.from_json({"m": {"input": 1.0, "output": 2.0, "unit": 1_000_000}})
    assert no_discount.cost("m", 1_000_000, 500_000).amount == pytest.approx(2.0)
    with pytest.raises(KeyError, match="qwen-max"):
        table.cost("qwen-max", 1)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "JSON object of models"),
        ({"m": 3}, r"prices\['m'\] must be an object"),
        ({"m": {"input": "1"}}, r"prices\['m'\].input must be a number"),
        ({"m": {"input": 1, "unit": 0}}, "unit must be > 0"),
        ({"m": {"input": 1, "cost": 2}}, "unknown keys"),
        ({"m": {"output": 1}}, r"prices\['m'\].input must be a number"),
    ],
)
def test_bad_tables_are_named(table: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PriceTable.from_json(json.dumps(table))


def test_token_estimate_latin_and_cjk() -> None:
    assert estimate_text_tokens("abcdefgh") == 2  # 8 bytes / 4
    assert estimate_text_tokens("你好世界") == 4  # one a CJK character, not 12 bytes / 4
    assert estimate_text_tokens("ab你") == 2  # 1 + ceil(2 / 4)
    body = {
        "messages": [
            {"role": "user", "content": "abcdefgh"},
            {"role": "user", "content": [{"type": "text", "text": "你好"}]},
        ]
    }
    assert estimate_request_tokens(body) == (4 + 2) + (4 + 2)
    assert estimate_request_tokens({"model": "text-embedding-v4", "input": ["abcd", "abcd"]}) == 2


def test_file_estimate_and_guard_before_upload(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [
        {
            "custom_id": str(i),
            "body": {
                "model": "m",
                "messages": [{"role": "user", "content": "x" * 400}],
                "max_completion_tokens": 50,
            },
        }
        for i in range(10)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    est = estimate_file_tokens(path)
    assert (est.requests, est.input_tokens, est.max_output_tokens) == (10, 10 * 104, 500)
    check_max_input_tokens(est, 1040, str(path))
    with pytest.raises(InputValidationError) as info:
        check_max_input_tokens(est, 1000, str(path))
    assert f"{path}: [too_many_input_tokens]" in str(info.value)
    rows[0]["body"].pop("max_completion_tokens")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert estimate_file_tokens(path).max_output_tokens is None  # one unbounded request: no upper bound
