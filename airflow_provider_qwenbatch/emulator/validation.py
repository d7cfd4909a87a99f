"""Server-side validation of a batch input file, as the real service does it in ``validating``.

One streaming pass over the file on disk (run in a worker thread): it returns either the
errors (``errors.data[]`` items ``{code, message, param, line}``, ``line`` 1-based) or the byte
offset and ``custom_id`` of every request line, which is all processing needs later.
Codes and messages copy the real service where a recording shows them (``url_not_found``,
``mismatched_test_url``); the others follow the same style.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_qwenbatch.client.models import ENDPOINTS, TEST_ENDPOINT, TEST_MODEL
from airflow_provider_qwenbatch.emulator.models import model_not_found_message

MAX_ERRORS = 100
"""Errors reported per batch at most (the first ones are what a person fixes first)."""


@dataclass(frozen=True)
class Limits:
    """Input limits applied at validation.

    :param max_file_bytes: whole file.
    :param max_lines: request lines.
    :param max_line_bytes: one line.
    :param test_max_bytes: whole file with ``batch-test-model``.
    :param test_max_lines: request lines with ``batch-test-model``.
    :param models: model names that exist; ``None`` accepts any.
    """

    max_file_bytes: int
    max_lines: int
    max_line_bytes: int
    test_max_bytes: int
    test_max_lines: int
    models: frozenset[str] | None


@dataclass
class ScanResult:
    """What one validation pass found.

    :param errors: the ``errors.data`` items; empty when the file is valid.
    :param offsets: byte offset of each request line.
    :param custom_ids: ``custom_id`` of each request line.
    :param model: the model of the file.
    :param size: bytes of the file.
    """

    errors: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    custom_ids: list[str] = field(default_factory=list)
    model: str | None = None
    size: int = 0


def _error(code: str, message: str, param: str | None, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


class _Scanner:
    def __init__(self, endpoint: str, limits: Limits) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self.result = ScanResult()
        self.seen: set[str] = set()
        self.first_model: str | None = None

    def add(self, code: str, message: str, param: str | None, line: int | None) -> None:
        if len(self.result.errors) < MAX_ERRORS:
            self.result.errors.append(_error(code, message, param, line))

    def check(self, n: int, offset: int, raw: bytes) -> None:
        if len(raw) > self.limits.max_line_bytes:
            self.add(
                "line_too_large",
                f"Line {n} is {len(raw)} bytes; a line may hold at most {self.limits.max_line_bytes} bytes.",
                None,
                n,
            )
            return
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            # A BOM on line 1 lands here too: the real service reads UTF-8 without BOM only.
            self.add("invalid_json_line", "This line is not parseable as valid JSON.", None, n)
            return
        if not isinstance(obj, dict):
            self.add("invalid_json_line", "This line is not a JSON object.", None, n)
            return
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            self.add("missing_required_parameter", "The request is missing 'custom_id'.", "custom_id", n)
            cid = None
        elif cid in self.seen:
            self.add(
                "duplicate_custom_id",
                f"The custom_id '{cid}' is used more than once in the input file.",
                "custom_id",
                n,
            )
        else:
            self.seen.add(cid)
        if obj.get("method") != "POST":
            self.add(
                "invalid_method", f"The provided method '{obj.get('method')}' is not supported.", "method", n
            )
        url = obj.get("url")
        body = obj.get("body")
        model = body.get("model") if isinstance(body, dict) else None
        if url not in ENDPOINTS:
            self.add(
                "url_not_found", f"The provided url '{url}' is not supported by the Batch API.", "url", n
            )
        elif (model == TEST_MODEL) != (url == TEST_ENDPOINT):
            self.add(
                "mismatched_test_url",
                f"The provided URL '{url}' does not match the test model '{TEST_MODEL}'.",
                "url",
                n,
            )
        elif url != self.endpoint:
            self.add(
                "mismatched_url",
                f"The provided url '{url}' does not match the batch endpoint '{self.endpoint}'.",
                "url",
                n,
            )
        if not isinstance(body, dict):
            self.add("missing_required_parameter", "The request is missing 'body'.", "body", n)
        elif not isinstance(model, str) or not model:
            self.add("missing_required_parameter", "The request body is missing 'model'.", "body.model", n)
        else:
            if self.limits.models is not None and model not in self.limits.models:
                self.add(
                    "model_not_found",
                    model_not_found_message(model),
                    "body.model",
                    n,
                )
            if self.first_model is None:
                self.first_model = model
            elif model != self.first_model:
                self.add(
                    "mismatched_model",
                    f"The model '{model}' does not match the model '{self.first_model}' of the other "
                    "requests; all requests of a batch must use the same model.",
                    "body.model",
                    n,
                )
        if cid is not None:
            self.result.offsets.append(offset)
            self.result.custom_ids.append(cid)

    def finish(self) -> None:
        lines = len(self.result.offsets)
        limits, size = self.limits, self.result.size
        if self.first_model == TEST_MODEL:
            if lines > limits.test_max_lines:
                self.add(
                    "too_many_lines",
                    f"The test model takes at most {limits.test_max_lines} lines, got {lines}.",
                    None,
                    None,
                )
            if size > limits.test_max_bytes:
                self.add(
                    "file_too_large",
                    f"The test model takes at most {limits.test_max_bytes} bytes, got {size}.",
                    None,
                    None,
                )
        if lines > limits.max_lines:
            self.add(
                "too_many_lines",
                f"A file may hold at most {limits.max_lines} lines, got {lines}.",
                None,
                None,
            )
        if not self.result.errors and lines == 0:
            self.add("empty_file", "The input file has no requests.", None, None)
        self.result.model = self.first_model


def scan_input(path: str | os.PathLike[str], endpoint: str, limits: Limits) -> ScanResult:
    """Validate an input file in one streaming pass (memory: one line plus the custom ids).

    :param path: the file on disk.
    :param endpoint: the batch endpoint.
    :param limits: the limits to apply.
    """
    scanner = _Scanner(endpoint, limits)
    size = os.path.getsize(path)
    scanner.result.size = size
    if size > limits.max_file_bytes:
        # Refuse before reading: the real service does not read past its limit either.
        scanner.add(
            "file_too_large",
            f"The input file is {size} bytes; a file may hold at most {limits.max_file_bytes} bytes.",
            None,
            None,
        )
        return scanner.result
    blank_at: int | None = None
    with open(path, "rb") as fh:
        n = 0
        offset = 0
        while True:
            raw = fh.readline(limits.max_line_bytes + 2)
            if not raw:
                break
            n += 1
            start = offset
            offset += len(raw)
            if not raw.endswith(b"\n") and len(raw) > limits.max_line_bytes:
                while True:  # skip the rest of an over-long line without holding it
                    more = fh.readline(1024 * 1024)
                    offset += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                scanner.add(
                    "line_too_large",
                    f"Line {n} is {offset - start} bytes; a line may hold at most {limits.max_line_bytes} bytes.",
                    None,
                    n,
                )
                continue
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                # Blank lines are only harmless at the very end of the file.
                if blank_at is None:
                    blank_at = n
                continue
            if blank_at is not None:
                scanner.add("invalid_json_line", "This line is not parseable as valid JSON.", None, blank_at)
                blank_at = None
            scanner.check(n, start, line)
    scanner.finish()
    return scanner.result
