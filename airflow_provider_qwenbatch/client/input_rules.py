"""The rules of one batch input: limits, and the checker every reader of an input feeds line by line.

Every rule the service checks (and a few it checks late, after billing has begun) lives in
:class:`Checker`; each problem names the file, the 1-based line and the rule. Rule codes
mirror the server's where it has one (``url_not_found``, ``mismatched_model``,
``duplicate_custom_id``, ``mismatched_test_url``). The readers (a file, a list of dicts, a
split into shards) are in :mod:`.jsonl` and :mod:`.shards`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic_core import from_json

from airflow_provider_qwenbatch.client.billing import (
    MAX_TOKENS_MESSAGE,
    THINKING_MESSAGE,
    InputWarning,
    thinks_by_default,
)
from airflow_provider_qwenbatch.client.errors import InputValidationError, ValidationProblem, position
from airflow_provider_qwenbatch.client.models import ENDPOINTS, TEST_ENDPOINT, TEST_MODEL

MAX_FILE_BYTES = 500 * 1024 * 1024
MAX_LINES = 50_000
MAX_LINE_BYTES = 6 * 1024 * 1024
TEST_MAX_FILE_BYTES = 1024 * 1024
TEST_MAX_LINES = 100
# Stop collecting after this many problems: the first ones are what a person fixes first.
MAX_PROBLEMS = 50
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class InputLimits:
    """The size limits of an input file.

    :param max_bytes: whole file.
    :param max_lines: request lines.
    :param max_line_bytes: one line.
    """

    max_bytes: int = MAX_FILE_BYTES
    max_lines: int = MAX_LINES
    max_line_bytes: int = MAX_LINE_BYTES


DEFAULT_LIMITS = InputLimits()


@dataclass(frozen=True)
class InputSummary:
    """What a valid input file holds.

    :param path: the file.
    :param lines: number of requests.
    :param bytes: size in bytes.
    :param model: the one model every line uses.
    :param endpoint: the endpoint every line calls.
    :param sha256: hex SHA-256 of the file's bytes, hashed in the same pass (the input fingerprint's base).
    :param warnings: billing surprises found (see :class:`InputWarning`); log them before upload.
    """

    path: str
    lines: int
    bytes: int
    model: str | None
    endpoint: str
    sha256: str = ""
    warnings: tuple[InputWarning, ...] = ()


class IdIndex(Protocol):
    """Where the checker remembers each ``custom_id``'s first position (a dict, or a compact table)."""

    def setdefault(self, key: str, default: int, /) -> int:
        """Remember ``key`` at ``default`` unless known; return its first position."""


class _NonFinite(float):
    """``NaN``/``Infinity`` as read from a file: JSON has no such numbers and the server rejects them."""


def _parse_constant(name: str) -> float:
    return _NonFinite(name)


# One decoder for every line: ``json.loads(..., parse_constant=...)`` builds a new one per call,
# a tenth of the time of a large input's pass.
_DECODER = json.JSONDecoder(parse_constant=_parse_constant)


def _decode(text: str) -> Any:
    """``json.loads`` without its two whitespace scans in the usual case (same errors otherwise)."""
    if text[:1].isspace():
        return _DECODER.decode(text)
    obj, end = _DECODER.raw_decode(text)
    if end != len(text) and not text[end:].isspace():
        return _DECODER.decode(text)  # raises "Extra data" exactly as json.loads does
    return obj


def _non_finite_path(value: Any, path: str, literal: bool = False) -> str | None:
    """The dotted path of the first NaN/Infinity inside ``value``, or None.

    :param literal: only a ``NaN``/``Infinity`` token read from text counts (a number too large for
        a double, ``1e400``, is valid JSON that Python reads as infinity: it is sent as written).
    """
    if isinstance(value, float) and (
        isinstance(value, _NonFinite) or (not literal and not math.isfinite(value))
    ):
        return path
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_finite_path(item, f"{path}.{key}" if path else str(key), literal)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _non_finite_path(item, f"{path}[{i}]", literal)
            if found:
                return found
    return None


class Checker:
    """Checks lines one at a time; keeps only the seen ids, never the lines."""

    def __init__(
        self,
        source: str,
        endpoint: str,
        limits: InputLimits,
        unit: str = "line",
        *,
        strict_cost: bool = False,
        seen: IdIndex | None = None,
    ) -> None:
        self.source = source
        self.unit = unit
        self.endpoint = endpoint
        self.limits = limits
        self.strict_cost = strict_cost
        self.problems: list[ValidationProblem] = []
        self.truncated = False
        self.seen: IdIndex = {} if seen is None else seen
        # rule -> [first position, count, field, message]: one warning per rule, never one per line.
        self.notes: dict[str, list[Any]] = {}
        self.model: str | None = None
        self.model_line = 0
        self.lines = 0
        self.bytes = 0
        # The common shape's fast path (see check_request): the model a line must have to take it,
        # set once a line of that model has passed every model rule; and whether it thinks by default.
        self._fast_model: str | None = None
        self._fast_thinks = False
        if endpoint not in ENDPOINTS:
            self.add(None, "invalid_endpoint", f"endpoint {endpoint!r} is not one of {', '.join(ENDPOINTS)}")

    def add(self, line: int | None, rule: str, message: str, field: str | None = None) -> None:
        """Record one problem (the first :data:`MAX_PROBLEMS` are kept)."""
        if len(self.problems) >= MAX_PROBLEMS:
            self.truncated = True
            return
        self.problems.append(ValidationProblem(line, rule, message, field))

    def check_raw(self, n: int, raw: bytes) -> None:
        """Check one physical line (its newline may be left on).

        The usual line is parsed by pydantic-core's ``from_json`` (Rust, about 3x faster than
        :mod:`json` here). It refuses everything :mod:`json` refuses and more (NaN, lone surrogate
        escapes, nesting over 200 levels), giving the same value when it accepts (a differential
        test holds it to that); a line it refuses (a ``NaN``/``Infinity`` token included) or a
        first line with a BOM takes :meth:`check_raw_full`, whose rules and messages decide.
        """
        if n != 1 or not raw.startswith(_BOM):
            try:
                # Keys only: caching values would keep thousands of (unique) ids alive, and be slower.
                obj = from_json(raw, allow_inf_nan=False, cache_strings="keys")
            except ValueError:
                pass
            else:
                self.check_request(n, obj)
                return
        self.check_raw_full(n, raw.rstrip(b"\r\n"))

    def check_raw_full(self, n: int, raw: bytes) -> None:
        """Check one physical line (without its newline) with :mod:`json`: every rule, every message."""
        if n == 1 and raw.startswith(_BOM):
            self.add(
                n, "utf8_bom", "the file starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM"
            )
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.add(n, "invalid_encoding", f"not valid UTF-8 at byte {exc.start} of the line")
            return
        if not text.strip():
            self.add(n, "empty_line", "blank line; every line must be one JSON request")
            return
        try:
            obj = _decode(text)
        except ValueError as exc:
            self.add(n, "invalid_json", f"not valid JSON: {exc}")
            return
        # Python reads NaN/Infinity; the server does not. Only walk the line when one was read.
        if ("NaN" in text or "Infinity" in text) and self.check_finite(n, obj, literal=True):
            return
        self.check_request(n, obj)

    def check_finite(self, n: int, obj: Any, *, literal: bool = False) -> bool:
        """Report a NaN/Infinity number (not valid JSON); returns whether one was found.

        :param literal: only a ``NaN``/``Infinity`` token read from a file counts (see ``_non_finite_path``).
        """
        path = _non_finite_path(obj, "", literal)
        if path is None:
            return False
        self.add(
            n,
            "invalid_number",
            f"{path} is NaN or Infinity, which is not valid JSON and the server rejects it; use a number or null",
            path,
        )
        return True

    def check_request(self, n: int, obj: Any) -> None:
        """Check one decoded request against the API's rules."""
        model = self._fast_model
        if model is not None and type(obj) is dict:
            # The common shape: a new non-empty string id, POST to the batch endpoint, a body of the
            # model already checked, nothing to note. Every rule of check_request_rules holds for it;
            # anything else (a duplicate included) goes through them.
            cid = obj.get("custom_id")
            body = obj.get("body")
            if (
                type(cid) is str
                and cid
                and type(body) is dict
                and body.get("model") == model
                and obj.get("method") == "POST"
                and obj.get("url") == self.endpoint
                and "max_tokens" not in body
                and ("enable_thinking" in body or not self._fast_thinks)
                and self.seen.setdefault(cid, n) == n
            ):
                return
        self.check_request_rules(n, obj)

    def check_request_rules(self, n: int, obj: Any) -> None:
        """Check one decoded request against every rule of the API, one by one."""
        if not isinstance(obj, dict):
            self.add(n, "invalid_request", f"a line must be a JSON object, got {type(obj).__name__}")
            return
        cid = obj.get("custom_id")
        if cid is None or cid == "":
            self.add(n, "missing_custom_id", "custom_id is missing or empty", "custom_id")
        elif not isinstance(cid, str):
            self.add(
                n, "invalid_custom_id", f"custom_id must be a string, got {type(cid).__name__}", "custom_id"
            )
        else:
            first = self.seen.setdefault(cid, n)
            if first != n:
                self.add(
                    n,
                    "duplicate_custom_id",
                    f"custom_id {cid!r} already used on {position(first, self.unit)}",
                    "custom_id",
                )
        method = obj.get("method")
        if method != "POST":
            self.add(n, "invalid_method", f"method must be 'POST', got {method!r}", "method")
        url = obj.get("url")
        if url not in ENDPOINTS:
            self.add(n, "url_not_found", f"url {url!r} is not supported by the Batch API", "url")
        elif url != self.endpoint:
            self.add(
                n, "mismatched_url", f"url {url!r} differs from the batch endpoint {self.endpoint!r}", "url"
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            self.add(n, "invalid_body", f"body must be a JSON object, got {type(body).__name__}", "body")
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self.add(n, "missing_model", "body.model is missing or not a string", "body.model")
            return
        self.check_cost(n, model, body)
        if self.model is None:
            self.model, self.model_line = model, n
        elif model != self.model:
            self.add(
                n,
                "mismatched_model",
                f"model {model!r} differs from {self.model!r} on {position(self.model_line, self.unit)}; one model per file",
                "body.model",
            )
        is_test_model = model == TEST_MODEL
        if is_test_model != (self.endpoint == TEST_ENDPOINT):
            self.add(
                n,
                "mismatched_test_url",
                f"model {TEST_MODEL!r} goes only with endpoint {TEST_ENDPOINT!r}, and that endpoint only "
                f"with that model (got model {model!r}, endpoint {self.endpoint!r})",
                "url",
            )
        elif model == self.model and self.endpoint in ENDPOINTS:
            self._fast_model = model
            self._fast_thinks = self.endpoint != "/v1/embeddings" and thinks_by_default(model)

    def check_cost(self, n: int, model: str, body: Mapping[str, Any]) -> None:
        """Note the billing surprises of one request body (warnings, not errors)."""
        if "enable_thinking" not in body and self.endpoint != "/v1/embeddings" and thinks_by_default(model):
            self.note(n, "thinking_default_on", THINKING_MESSAGE.format(model=model), "body.enable_thinking")
        if "max_tokens" in body:
            self.note(n, "deprecated_max_tokens", MAX_TOKENS_MESSAGE, "body.max_tokens")

    def note(self, n: int, rule: str, message: str, field: str) -> None:
        """Count one request that has a billing surprise (the first one's position is kept)."""
        entry = self.notes.get(rule)
        if entry is None:
            self.notes[rule] = [n, 1, field, message]
        else:
            entry[1] += 1

    @property
    def warnings(self) -> tuple[InputWarning, ...]:
        """The billing warnings noted so far, one per rule."""
        return tuple(
            InputWarning(rule, message, first, count, field)
            for rule, (first, count, field, message) in self.notes.items()
        )

    def finish(self, *, whole_file: bool = True) -> None:
        """Whole-file rules, after the last line.

        :param whole_file: check the per-file size limits (False when the input is split into batches
            that each keep them).
        """
        if self.strict_cost:
            for warning in self.warnings:
                self.add(
                    warning.first_line,
                    warning.rule,
                    f"{warning.message} ({warning.count} in all; refused because strict_cost is set)",
                    warning.field,
                )
        if self.lines == 0:
            self.add(None, "empty_file", "the input has no request lines")
        if whole_file:
            self.check_file_limits()
        if self.problems:
            raise InputValidationError(self.source, self.problems, truncated=self.truncated, unit=self.unit)

    def check_file_limits(self) -> None:
        """The per-file size limits (the API's, and the test model's)."""
        limits = self.limits
        if self.model == TEST_MODEL:
            if self.lines > TEST_MAX_LINES:
                self.add(
                    None,
                    "too_many_lines",
                    f"{TEST_MODEL} takes at most {TEST_MAX_LINES} lines, got {self.lines}",
                )
            if self.bytes > TEST_MAX_FILE_BYTES:
                self.add(None, "file_too_large", f"{TEST_MODEL} takes at most 1 MB, got {self.bytes} bytes")
        if self.lines > limits.max_lines:
            self.add(None, "too_many_lines", f"at most {limits.max_lines} lines per file, got {self.lines}")
        if self.bytes > limits.max_bytes:
            self.add(None, "file_too_large", f"at most {limits.max_bytes} bytes per file, got {self.bytes}")
