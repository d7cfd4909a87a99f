"""The Batch API's endpoints: which ones exist, and the rule a batch's ``endpoint`` must follow.

Kept free of pydantic and httpx: operators check the endpoint when a DAG file is parsed.
"""

from __future__ import annotations

ENDPOINTS: tuple[str, ...] = ("/v1/chat/completions", "/v1/embeddings", "/v1/chat/ds-test")
TEST_MODEL = "batch-test-model"
TEST_ENDPOINT = "/v1/chat/ds-test"


def check_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if the Batch API serves it.

    :param endpoint: e.g. ``/v1/chat/completions``.
    :raises ValueError: naming the value and the endpoints that exist.
    """
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint {endpoint!r} is not one of {', '.join(ENDPOINTS)}")
    return endpoint
