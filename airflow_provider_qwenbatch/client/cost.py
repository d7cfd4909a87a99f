"""What a batch costs: a price table the user supplies, and an ESTIMATE of an input's tokens.

The provider ships no prices (they change, and differ by region and contract). The user gives
them, e.g. in Airflow's ``[qwenbatch] prices`` option, as JSON per model::

    {"qwen-plus": {"input": 0.0004, "output": 0.0012, "unit": 1000, "currency": "CNY",
                   "batch_discount": 0.5}}

``input``/``output`` are prices per ``unit`` tokens; ``batch_discount`` multiplies them (the
Batch API bills 50% of the real-time price: give 0.5 with real-time prices, or 1 with batch
prices). It is part of the table, never assumed.

The token estimate is a rough guard, not a count (the real tokenizer is not shipped): each CJK
character (Chinese, Japanese kana, Korean, fullwidth forms) counts 1 token, every other UTF-8
byte 1/4 token, plus 4 tokens per chat message. It reads the prompt text only (``messages``
contents, or embeddings' ``input``); images and tool schemas are not counted.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_qwenbatch.client.errors import InputValidationError, ValidationProblem

_CJK = re.compile(
    "[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
)
_PER_MESSAGE = 4
_KINDS = ("input", "output")


@dataclass(frozen=True)
class Price:
    """The price of one model.

    :param input: price of ``unit`` prompt tokens.
    :param output: price of ``unit`` completion tokens (thinking tokens are completion tokens).
    :param unit: tokens the prices are for (e.g. 1000).
    :param currency: e.g. ``CNY``.
    :param batch_discount: factor applied to both prices (0.5: half the real-time price).
    """

    input: float
    output: float
    unit: int = 1000
    currency: str = ""
    batch_discount: float = 1.0


@dataclass(frozen=True)
class Cost:
    """An amount of money.

    :param amount: the amount.
    :param currency: its currency.
    """

    amount: float
    currency: str


class PriceTable:
    """Prices per model, as the user gave them.

    :param prices: model name -> :class:`Price`.
    """

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)

    @classmethod
    def from_json(cls, value: str | Mapping[str, Any]) -> PriceTable:
        """Parse the table (JSON text, or the decoded mapping).

        :param value: ``{"model": {"input": .., "output": .., "unit": .., "currency": .., "batch_discount": ..}}``.
        :raises ValueError: naming the model and key that is wrong.
        """
        data = json.loads(value) if isinstance(value, str) else value
        if not isinstance(data, Mapping):
            raise ValueError(f"prices must be a JSON object of models, got {type(data).__name__}")
        prices: dict[str, Price] = {}
        for model, entry in data.items():
            if not isinstance(entry, Mapping):
                raise ValueError(f"prices[{model!r}] must be an object, got {type(entry).__name__}")
            unknown = set(entry) - {*_KINDS, "unit", "currency", "batch_discount"}
            if unknown:
                raise ValueError(f"prices[{model!r}] has unknown keys {sorted(unknown)}")
            numbers: dict[str, float] = {}
            for key, default in (("input", None), ("output", 0.0), ("unit", 1000), ("batch_discount", 1.0)):
                raw = entry.get(key, default)
                if (
                    isinstance(raw, bool)
                    or not isinstance(raw, (int, float))
                    or not math.isfinite(raw)
                    or raw < 0
                ):
                    raise ValueError(f"prices[{model!r}].{key} must be a number >= 0, got {raw!r}")
                numbers[key] = float(raw)
            if numbers["unit"] <= 0:
                raise ValueError(f"prices[{model!r}].unit must be > 0")
            currency = entry.get("currency", "")
            if not isinstance(currency, str):
                raise ValueError(f"prices[{model!r}].currency must be a string")
            prices[str(model)] = Price(
                numbers["input"], numbers["output"], int(numbers["unit"]), currency, numbers["batch_discount"]
            )
        return cls(prices)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int = 0) -> Cost:
        """The cost of tokens of ``model``.

        :param model: the model.
        :param prompt_tokens: input tokens.
        :param completion_tokens: output tokens (thinking included).
        :raises KeyError: when the table has no price for ``model``.
        """
        price = self.prices.get(model)
        if price is None:
            raise KeyError(
                f"no price for model {model!r} in the price table ({', '.join(self.prices) or 'empty'})"
            )
        amount = (prompt_tokens * price.input + completion_tokens * price.output) / price.unit
        return Cost(amount * price.batch_discount, price.currency)


def estimate_text_tokens(text: str) -> int:
    """Estimate the tokens of a text: 1 a CJK character, 1 per 4 other UTF-8 bytes (rounded up).

    :param text: the text.
    """
    cjk = len(_CJK.findall(text))
    other = len(text.encode("utf-8", "surrogatepass")) - 3 * cjk
    return cjk + math.ceil(max(0, other) / 4)


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                yield part
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]


def estimate_request_tokens(body: Mapping[str, Any]) -> int:
    """Estimate the prompt tokens of one request body (chat ``messages`` or embeddings ``input``).

    :param body: the request's ``body``.
    """
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                total += _PER_MESSAGE + sum(estimate_text_tokens(t) for t in _texts(message.get("content")))
    total += sum(estimate_text_tokens(t) for t in _texts(body.get("input")))
    return total


@dataclass(frozen=True)
class TokenEstimate:
    """An input's estimated tokens.

    :param requests: requests read.
    :param input_tokens: estimated prompt tokens of them all.
    :param max_output_tokens: the sum of ``max_completion_tokens`` (or ``max_tokens``), or
        ``None`` when some request sets no cap (its output, thinking included, is unbounded).
    """

    requests: int
    input_tokens: int
    max_output_tokens: int | None


def estimate_file_tokens(path: str | os.PathLike[str]) -> TokenEstimate:
    """Estimate the tokens of a JSONL input file (already validated), streaming it line by line.

    :param path: the file (or a shard).
    """
    requests = tokens = out = 0
    bounded = True
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            body = json.loads(raw).get("body") or {}
            requests += 1
            tokens += estimate_request_tokens(body)
            cap = body.get("max_completion_tokens", body.get("max_tokens"))
            if isinstance(cap, int) and not isinstance(cap, bool):
                out += cap
            else:
                bounded = False
    return TokenEstimate(requests, tokens, out if bounded else None)


def check_max_input_tokens(estimate: TokenEstimate, max_input_tokens: int, source: str) -> None:
    """Refuse an input whose estimated prompt tokens exceed the user's cap, before anything is uploaded.

    :param estimate: from :func:`estimate_file_tokens` (summed over the shards).
    :param max_input_tokens: the cap.
    :param source: the input, as named in the error.
    :raises InputValidationError: rule ``too_many_input_tokens``.
    """
    if estimate.input_tokens > max_input_tokens:
        raise InputValidationError(
            source,
            [
                ValidationProblem(
                    None,
                    "too_many_input_tokens",
                    f"about {estimate.input_tokens} prompt tokens in {estimate.requests} requests (an "
                    f"estimate: 1 a CJK character, 1 per 4 other bytes), over max_input_tokens={max_input_tokens}",
                )
            ],
        )
