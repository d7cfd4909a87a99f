"""The values generated for a JSON schema validate against the pydantic models users write."""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from airflow_provider_qwenbatch.emulator.structured import value_for_schema


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    name: str
    qty: int = Field(gt=0, lt=10)
    color: Color


class Node(BaseModel):
    label: str
    children: list[Node] = Field(default_factory=list)


class Order(BaseModel):
    id: uuid.UUID
    when: datetime.datetime
    day: datetime.date
    items: list[Item] = Field(min_length=2, max_length=3)
    notes: str | None
    extra: dict[str, int]
    kind: Item | Literal["none"]
    tree: Node
    pair: tuple[int, str]
    ratio: float = Field(gt=0, lt=1)
    code: str = Field(min_length=12, max_length=12)


@pytest.mark.parametrize("model", [Item, Node, Order])
def test_generated_value_validates(model: type[BaseModel]) -> None:
    value = value_for_schema(model.model_json_schema(), "abcd1234")
    model.model_validate(value)
    assert value_for_schema(model.model_json_schema(), "abcd1234") == value  # deterministic


def test_enum_takes_the_first_value_and_required_fields_are_present() -> None:
    order = Order.model_validate(value_for_schema(Order.model_json_schema(), "t"))
    assert order.items[0].color is Color.RED
    assert len(order.items) == 2
    assert order.notes is not None  # optional-but-listed properties are filled too
    schema = {"type": "object", "required": ["a"], "properties": {}}
    assert set(value_for_schema(schema, "t")) == {"a"}
