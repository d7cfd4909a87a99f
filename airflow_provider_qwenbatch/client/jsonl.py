"""Batch input files: build them from request dicts, and validate them in one streaming pass.

Every rule the service checks (and a few it checks late, after billing has begun) is checked
here before anything is uploaded, and each problem names the file, the 1-based line and the
rule. Rule codes mirror the server's where it has one (``url_not_found``,
``mismatched_model``, ``duplicate_custom_id``, ``mismatched_test_url``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from pydantic_core import from_json

from airflow_provider_qwenbatch.client.billing import (
    MAX_TOKENS_MESSAGE,
    THINKING_MESSAGE,
    InputWarning,
    thinks_by_default,
)
from airflow_provider_qwenbatch.client.errors import InputValidationError, ValidationProblem, position
from airflow_provider_qwenbatch.client.logs import LoggerLike
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


def validate_jsonl_file(
    path: str | os.PathLike[str],
    endpoint: str,
    *,
    limits: InputLimits = DEFAULT_LIMITS,
    source: str | None = None,
    strict_cost: bool = False,
) -> InputSummary:
    """Check a JSONL input file against every rule of the Batch API, in one streaming pass.

    Memory holds one line (at most 6 MB) and the set of ``custom_id`` values, whatever the file's size.
    Billing surprises (a thinking-by-default model without ``enable_thinking``, the deprecated
    ``max_tokens``) are returned as :attr:`InputSummary.warnings`, not raised.

    :param path: the file.
    :param endpoint: the batch endpoint every line's ``url`` must equal.
    :param limits: size limits (the API's by default).
    :param source: how to name the file in errors (default: the path), e.g. the URI it was copied from.
    :param strict_cost: refuse the billing surprises as problems instead of warning about them.
    :raises InputValidationError: listing each problem with the file, line and rule.
    """
    local = os.fspath(path)
    source = source or local
    checker = Checker(source, endpoint, limits, strict_cost=strict_cost)
    fh = open_input(local, source)
    # The file's SHA-256 is computed from the very bytes read for validation: no second pass.
    digest = hashlib.sha256()
    with fh:
        scan_lines(fh, checker, digest.update)
    checker.finish()
    return InputSummary(
        source, checker.lines, checker.bytes, checker.model, endpoint, digest.hexdigest(), checker.warnings
    )


def open_input(local: str, source: str) -> IO[bytes]:
    """Open an input file for reading; an unreadable file is a validation problem, not an OSError.

    :param local: the path.
    :param source: how to name the file in errors.
    """
    try:
        return open(local, "rb")
    except OSError as exc:
        raise InputValidationError(source, [ValidationProblem(None, "unreadable", str(exc))]) from None


def scan_lines(
    fh: IO[bytes],
    checker: Checker,
    hash_bytes: Callable[[bytes], object] | None = None,
    on_request: Callable[[int, bytes], None] | None = None,
) -> None:
    """Read an input file line by line and check each line; the one reading loop of every pass.

    :param fh: the open file.
    :param checker: checks each line and collects problems.
    :param hash_bytes: called with every byte read, in order (for the file's SHA-256).
    :param on_request: called after each request line is checked, with its position and its bytes
        as read (newline included when the file has one): a splitter writes them out unchanged.
    """
    # The hot loop of every pass over a file: locals, not attributes; counts written back at the end.
    max_line = checker.limits.max_line_bytes
    readline = fh.readline
    check = checker.check_raw
    n = lines = 0
    total = checker.bytes
    try:
        while True:
            raw = readline(max_line + 2)
            if not raw:
                break
            if hash_bytes is not None:
                hash_bytes(raw)
            n += 1
            total += len(raw)
            if len(raw) > max_line:
                if not raw.endswith(b"\n"):
                    # Over-long line: skip the rest of it without holding it in memory.
                    extra = _skip_rest_of_line(fh, hash_bytes)
                    total += extra
                    checker.add(n, "line_too_large", f"line is {len(raw) + extra} bytes; at most {max_line}")
                    lines += 1
                    continue
                length = len(raw.rstrip(b"\r\n"))
                if length > max_line:
                    checker.add(n, "line_too_large", f"line is {length} bytes; at most {max_line}")
                    lines += 1
                    continue
            if raw.isspace():  # (the same bytes as ``not raw.strip()``, without the copy)
                tail = _blank_rest(fh)
                if tail is not None:
                    # Trailing blank lines at the end of a file are harmless (but still bytes of it).
                    for chunk in tail:
                        if hash_bytes is not None:
                            hash_bytes(chunk)
                        total += len(chunk)
                    break
            lines += 1
            check(n, raw)
            if on_request is not None:
                on_request(n, raw)
    finally:
        checker.lines += lines
        checker.bytes = total


def _skip_rest_of_line(fh: IO[bytes], hash_bytes: Callable[[bytes], object] | None) -> int:
    skipped = 0
    while True:
        chunk = fh.readline(1024 * 1024)
        if hash_bytes is not None:
            hash_bytes(chunk)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _blank_rest(fh: IO[bytes]) -> list[bytes] | None:
    """The rest of the file if it is all whitespace (then consumed), else None (position kept)."""
    pos = fh.tell()
    chunks: list[bytes] = []
    while True:
        chunk = fh.read(64 * 1024)
        if not chunk:
            return chunks
        if chunk.strip():
            fh.seek(pos)
            return None
        chunks.append(chunk)


def encode_request(checker: Checker, n: int, request: Any) -> bytes | None:
    """Check one request dict and encode it as one JSONL line (newline included); None when it cannot be.

    ``method`` and ``url`` left out default to ``POST`` and the checker's endpoint; nothing else
    is changed. The one encoder of :func:`write_jsonl` and the splitter.

    :param checker: checks the request and collects problems.
    :param n: the request's 1-based position.
    :param request: the request dict.
    """
    obj: Any = dict(request) if isinstance(request, Mapping) else request
    if isinstance(obj, dict):
        obj.setdefault("method", "POST")
        obj.setdefault("url", checker.endpoint)
    checker.check_request(n, obj)
    try:
        # allow_nan=False: Python would write NaN/Infinity, which the server rejects.
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        checker.add(n, "invalid_encoding", f"request is not valid UTF-8 text: {exc.reason}")
        return None
    except (TypeError, ValueError) as exc:
        if not (isinstance(exc, ValueError) and checker.check_finite(n, obj)):
            checker.add(n, "invalid_json", f"request cannot be encoded as JSON: {exc}")
        return None
    limit = checker.limits.max_line_bytes
    if len(data) > limit:
        checker.add(n, "line_too_large", f"line is {len(data)} bytes; at most {limit}")
    checker.lines = n
    checker.bytes += len(data) + 1
    return data + b"\n"


def write_jsonl(
    requests: Iterable[Mapping[str, Any]],
    path: str | os.PathLike[str],
    endpoint: str,
    *,
    limits: InputLimits = DEFAULT_LIMITS,
    source: str | None = None,
    strict_cost: bool = False,
) -> InputSummary:
    """Write request dicts as a JSONL input file, checking each one as it is written.

    On any problem the partial file is removed and :class:`InputValidationError` names the
    request's position (``request 5 (index 4)``: 1-based, then the 0-based list index).

    :param requests: dicts ``{custom_id, method, url, body}``; ``method`` and ``url`` may be left
        out and default to ``POST`` and ``endpoint``.
    :param path: where to write.
    :param endpoint: the batch endpoint.
    :param limits: size limits.
    :param source: how to name the input in errors (default: the path).
    :param strict_cost: refuse the billing surprises (:class:`InputWarning`) instead of returning them.
    """
    dest = Path(path)
    checker = Checker(source or os.fspath(dest), endpoint, limits, unit="request", strict_cost=strict_cost)
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dest.open("wb") as out:
            for n, request in enumerate(requests, start=1):
                data = encode_request(checker, n, request)
                if data is not None and not checker.problems:
                    out.write(data)
                    digest.update(data)
        checker.finish()
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return InputSummary(
        os.fspath(dest),
        checker.lines,
        checker.bytes,
        checker.model,
        endpoint,
        digest.hexdigest(),
        checker.warnings,
    )


def log_input_warnings(summary: InputSummary, logger: LoggerLike, *, unit: str = "line") -> None:
    """Log each billing warning of a validated input (before upload, so the log says it before it is paid).

    :param summary: the validated input.
    :param logger: where to warn.
    :param unit: ``line`` for a file, ``request`` for a list of request dicts.
    """
    for warning in summary.warnings:
        logger.warning("%s", warning.render(summary.path, unit))


def warn_if_model_not_in_region(
    summary: InputSummary, base_url: str | None, logger: LoggerLike
) -> str | None:
    """Log a warning (never refuse) when the input's model is not on the base URL's region list.

    Called after validation and before upload, so the task log says it before anything is paid.

    :param summary: the validated input (its one model).
    :param base_url: the base URL the batch goes to; its region decides the list.
    :param logger: where to warn.
    :return: the warning, or ``None``.
    """
    from airflow_provider_qwenbatch.client.regions import batch_model_warning, region_of_base_url

    warning = batch_model_warning(region_of_base_url(base_url), summary.model)
    if warning:
        logger.warning("%s: %s", summary.path, warning)
    return warning
