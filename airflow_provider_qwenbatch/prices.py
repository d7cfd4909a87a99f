"""The user's price table from Airflow's ``[qwenbatch] prices`` option (the client reads no config)."""

from __future__ import annotations

from airflow_provider_qwenbatch.client.cost import PriceTable


def configured_price_table() -> PriceTable | None:
    """The table of ``[qwenbatch] prices`` (JSON), or ``None`` when the option is not set.

    :raises ValueError: naming the option and what in it is wrong.
    """
    from airflow_provider_qwenbatch.compat import conf

    raw = conf.get("qwenbatch", "prices", fallback="") or ""
    if not raw.strip():
        return None
    try:
        return PriceTable.from_json(raw)
    except ValueError as exc:
        raise ValueError(f"[qwenbatch] prices: {exc}") from None
