"""The price table from Airflow's ``[qwenbatch] prices`` option (read through Airflow's real conf)."""

from __future__ import annotations

import json

import pytest

TABLE = {
    "qwen-plus": {"input": 0.0008, "output": 0.002, "unit": 1000, "currency": "CNY", "batch_discount": 0.5}
}


def test_price_table_from_airflow_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_qwenbatch.prices import configured_price_table

    monkeypatch.delenv("AIRFLOW__QWENBATCH__PRICES", raising=False)
    assert configured_price_table() is None
    monkeypatch.setenv("AIRFLOW__QWENBATCH__PRICES", json.dumps(TABLE))
    table = configured_price_table()
    assert table is not None and table.prices["qwen-plus"].batch_discount == 0.5
    monkeypatch.setenv("AIRFLOW__QWENBATCH__PRICES", '{"qwen-plus": {"input": -1}}')
    with pytest.raises(ValueError, match=r"\[qwenbatch\] prices: prices\['qwen-plus'\].input"):
        configured_price_table()
