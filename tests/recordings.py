"""Load the real DashScope exchanges recorded in ``tests/fixtures/dashscope-recordings``.

Each exchange ``NAME`` is up to four files: ``NAME.request.header.txt`` (request line and
headers), ``NAME.request.body.json|txt``, ``NAME.response.header.txt`` (status line and
headers) and ``NAME.response.body.txt``. Two of them begin with a UTF-8 byte-order mark,
so everything is read as ``utf-8-sig``.

Usage::

    from tests.recordings import load, serve

    ex = load("get-inprogress-batch")           # the "-compatible-nosse" suffix is optional
    ex.method, ex.api_path, ex.query, ex.json()  # what was sent and answered
    httpx.MockTransport(lambda request: ex.response(request))
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx

RECORDINGS_DIR = Path(__file__).parent / "fixtures" / "dashscope-recordings"
BASE_PATH = "/compatible-mode/v1"
SUFFIX = "-compatible-nosse"
ENCODING = "utf-8-sig"
# Headers describing the recorded wire encoding; the bodies are stored decoded, so a mock
# must not repeat them (httpx would try to gunzip plain text).
_WIRE_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}


@dataclass(frozen=True)
class Exchange:
    """One recorded request/response pair."""

    name: str
    method: str
    url: httpx.URL
    request_headers: dict[str, str]
    request_body: str | None
    status_code: int
    reason: str
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: str = ""

    @property
    def api_path(self) -> str:
        """The path below the compatible-mode base URL, e.g. ``/batches/batch_1/cancel``."""
        path = self.url.path
        return path[len(BASE_PATH) :] if path.startswith(BASE_PATH) else path

    @property
    def query(self) -> dict[str, str]:
        """The request's query parameters, decoded."""
        return dict(self.url.params)

    @property
    def request_id(self) -> str | None:
        """The response's ``x-request-id``."""
        for key, value in self.response_headers:
            if key.lower() == "x-request-id":
                return value
        return None

    def json(self) -> Any:
        """The response body, decoded as JSON."""
        return json.loads(self.response_body)

    def json_lines(self) -> list[Any]:
        """The response body as JSON lines (for file content)."""
        return [json.loads(line) for line in self.response_body.splitlines() if line.strip()]

    def request_json(self) -> Any:
        """The request body, decoded as JSON (``None`` when there was none)."""
        return json.loads(self.request_body) if self.request_body and self.request_body.strip() else None

    def serving_headers(self) -> list[tuple[str, str]]:
        """Response headers fit to serve the stored (decoded) body again."""
        return [(k, v) for k, v in self.response_headers if k.lower() not in _WIRE_HEADERS]

    def response(self, request: httpx.Request | None = None, **overrides: Any) -> httpx.Response:
        """The recorded answer as an ``httpx.Response`` (for an ``httpx.MockTransport`` handler)."""
        kwargs: dict[str, Any] = {
            "status_code": self.status_code,
            "headers": self.serving_headers(),
            "content": self.response_body.encode("utf-8"),
        }
        kwargs.update(overrides)
        if request is not None:
            kwargs["request"] = request
        return httpx.Response(**kwargs)


def _read(path: Path) -> str | None:
    return path.read_text(encoding=ENCODING) if path.exists() else None


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        if ":" in line:
            key, value = line.split(":", 1)
            out.append((key.strip(), value.strip()))
    return out


def full_name(name: str) -> str:
    """``get-file`` -> ``get-file-compatible-nosse`` (a full name is returned unchanged)."""
    if (RECORDINGS_DIR / f"{name}.response.body.txt").exists() or (
        RECORDINGS_DIR / f"{name}.request.header.txt"
    ).exists():
        return name
    return name + SUFFIX


@cache
def load(name: str) -> Exchange:
    """Load the exchange ``name`` (with or without the ``-compatible-nosse`` suffix)."""
    name = full_name(name)
    head = _read(RECORDINGS_DIR / f"{name}.request.header.txt")
    if head is None:
        raise FileNotFoundError(f"no recording named {name!r} in {RECORDINGS_DIR}")
    req_lines = [line for line in head.splitlines() if line.strip()]
    method, target = req_lines[0].split()[:2]
    req_headers = dict(_parse_headers(req_lines[1:]))
    if target.startswith("http"):
        url = httpx.URL(target)
    else:
        host = next((v for k, v in req_headers.items() if k.lower() == "host"), "dashscope.aliyuncs.com")
        url = httpx.URL(f"https://{host}{target}")
    body = _read(RECORDINGS_DIR / f"{name}.request.body.json")
    if body is None:
        body = _read(RECORDINGS_DIR / f"{name}.request.body.txt")
    resp_head = _read(RECORDINGS_DIR / f"{name}.response.header.txt") or "HTTP/1.1 200 OK"
    resp_lines = [line for line in resp_head.splitlines() if line.strip()]
    status_parts = resp_lines[0].split(" ", 2)
    return Exchange(
        name=name,
        method=method.upper(),
        url=url,
        request_headers=req_headers,
        request_body=body,
        status_code=int(status_parts[1]),
        reason=status_parts[2] if len(status_parts) > 2 else "",
        response_headers=_parse_headers(resp_lines[1:]),
        response_body=_read(RECORDINGS_DIR / f"{name}.response.body.txt") or "",
    )


def names() -> list[str]:
    """Every recorded exchange's full name, sorted."""
    return sorted(p.name[: -len(".request.header.txt")] for p in RECORDINGS_DIR.glob("*.request.header.txt"))


def response_body_files() -> list[Path]:
    """Every recorded response body file, sorted."""
    return sorted(RECORDINGS_DIR.glob("*.response.body.txt"))


def exchanges() -> Iterator[Exchange]:
    """Every exchange."""
    for name in names():
        yield load(name)
