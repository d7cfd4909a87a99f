"""Structured output: a deterministic JSON value shaped by a request's ``response_format`` or tool.

The real models honour ``response_format`` (``json_object``, ``json_schema``) and function
tools; the emulator answers with a value that validates against the schema, so code that
parses structured output (pydantic models, ``output_type``) runs offline.

Values per JSON Schema keyword: ``const`` and ``enum`` (its first value) win; ``object`` has
every property (required or not); ``array`` has ``max(minItems, 1)`` items (bounded by
``maxItems``; only ``minItems`` deep inside, so recursive models end); ``string`` honours ``format`` (date, date-time, time, email, uri, uuid) and
``minLength``/``maxLength``; numbers sit inside their bounds; ``boolean`` is ``true``;
``anyOf``/``oneOf`` take the first option that is not ``null``; ``allOf`` is merged;
``$ref`` follows ``#/$defs/...`` and ``#/definitions/...`` (what pydantic generates).
Strings carry a short digest of the request, so different requests get different text.
"""

from __future__ import annotations

import hashlib
from typing import Any

_MAX_DEPTH = 12
_ITEMS_DEPTH = 6
_FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "emulated@example.com",
    "uri": "https://example.com/emulated",
    "url": "https://example.com/emulated",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
}


def request_tag(seed: int, body: Any) -> str:
    """A short digest of a request, used inside generated strings.

    :param seed: the emulator's seed.
    :param body: the request body.
    """
    return hashlib.sha256(f"{seed}\x1f{body!r}".encode()).hexdigest()[:8]


def json_object_answer(tag: str) -> dict[str, Any]:
    """The answer to ``response_format: {"type": "json_object"}`` (no schema given).

    :param tag: from :func:`request_tag`.
    """
    return {"answer": f"Emulated answer {tag}.", "emulated": True}


def value_for_schema(schema: Any, tag: str, *, root: Any = None) -> Any:
    """A deterministic value that validates against ``schema``.

    :param schema: a JSON Schema (a dict; ``True``/``{}`` mean anything).
    :param tag: from :func:`request_tag`, put into strings.
    :param root: the document that ``$ref`` points into (``schema`` itself when omitted).
    """
    return _Builder(root if root is not None else schema, tag).value(schema, "value", 0)


class _Builder:
    def __init__(self, root: Any, tag: str) -> None:
        self.root = root
        self.tag = tag

    def resolve(self, ref: str) -> Any:
        node = self.root
        if not ref.startswith("#"):
            return {}
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return {}
            node = node[part]
        return node

    def value(self, schema: Any, name: str, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return None if depth > _MAX_DEPTH else f"emulated {name} {self.tag}"
        if "$ref" in schema:
            merged = {**self.resolve(str(schema["$ref"])), **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.value(merged, name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        if "default" in schema and schema["default"] is not None:
            return schema["default"]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                chosen = next((o for o in options if not _is_null(o)), options[0])
                return self.value(chosen, name, depth + 1)
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
                if isinstance(part, dict):
                    merged.setdefault("properties", {}).update(part.get("properties", {}))
                    merged.update({k: v for k, v in part.items() if k != "properties"})
            return self.value(merged, name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            props = schema.get("properties") or {}
            out = {key: self.value(sub, key, depth + 1) for key, sub in props.items()}
            for key in schema.get("required") or []:
                out.setdefault(key, f"emulated {key} {self.tag}")
            return out
        if kind == "array":
            low = int(schema.get("minItems", 0) or 0)
            # One item shows the shape; deep down (recursive models) only what is required.
            wanted = max(low, 1 if depth < _ITEMS_DEPTH else 0)
            count = min(wanted, int(schema.get("maxItems", wanted)))
            items = schema.get("items", {})
            if isinstance(schema.get("prefixItems"), list):
                return [self.value(s, f"{name}[{i}]", depth + 1) for i, s in enumerate(schema["prefixItems"])]
            return [self.value(items, f"{name}[{i}]", depth + 1) for i in range(count)]
        if kind in ("integer", "number"):
            return self.number(schema, kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.string(schema, name)

    @staticmethod
    def number(schema: dict[str, Any], integer: bool) -> int | float:
        step = 1 if integer else 0.5
        value: float = 1 if integer else 1.5
        if isinstance(schema.get("minimum"), (int, float)):
            value = max(value, schema["minimum"]) if "maximum" not in schema else schema["minimum"]
        if isinstance(schema.get("exclusiveMinimum"), (int, float)):
            value = max(value, schema["exclusiveMinimum"] + step)
        if isinstance(schema.get("maximum"), (int, float)):
            value = min(value, schema["maximum"])
        if isinstance(schema.get("exclusiveMaximum"), (int, float)):
            value = min(value, schema["exclusiveMaximum"] - step)
        return int(value) if integer else float(value)

    def string(self, schema: dict[str, Any], name: str) -> str:
        text = _FORMATS.get(str(schema.get("format")), f"emulated {name} {self.tag}")
        low = schema.get("minLength")
        high = schema.get("maxLength")
        if isinstance(low, int) and len(text) < low:
            text = text + "x" * (low - len(text))
        if isinstance(high, int) and len(text) > high:
            text = text[:high]
        return text


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"
