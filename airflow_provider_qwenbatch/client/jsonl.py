"""Batch input files: build them from request dicts, and validate them in one streaming pass.

The rules themselves (limits, the per-line :class:`~.input_rules.Checker`) are in
:mod:`.input_rules`; this module reads files and request dicts through them, before anything
is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from airflow_provider_qwenbatch.client.errors import InputValidationError, ValidationProblem
from airflow_provider_qwenbatch.client.input_rules import (
    DEFAULT_LIMITS,
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    MAX_LINES,
    MAX_PROBLEMS,
    TEST_MAX_FILE_BYTES,
    TEST_MAX_LINES,
    Checker,
    IdIndex,
    InputLimits,
    InputSummary,
)
from airflow_provider_qwenbatch.client.logs import LoggerLike

# The limits and the checker live in input_rules; callers keep importing them from here.
__all__ = [
    "DEFAULT_LIMITS",
    "MAX_FILE_BYTES",
    "MAX_LINES",
    "MAX_LINE_BYTES",
    "MAX_PROBLEMS",
    "TEST_MAX_FILE_BYTES",
    "TEST_MAX_LINES",
    "Checker",
    "IdIndex",
    "InputLimits",
    "InputSummary",
    "encode_request",
    "log_input_warnings",
    "open_input",
    "scan_lines",
    "validate_jsonl_file",
    "warn_if_model_not_in_region",
    "write_jsonl",
]


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
