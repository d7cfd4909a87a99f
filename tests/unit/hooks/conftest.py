from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_qwenbatch.hooks import qwen_batch


@pytest.fixture(autouse=True)
def _fresh_env_key_notice() -> Iterator[None]:
    # The "key from the environment" notice is once per (conn, task); each test starts afresh.
    qwen_batch._ENV_KEY_LOGGED.clear()
    yield
    qwen_batch._ENV_KEY_LOGGED.clear()
