"""The input of the sharded system scenarios: 100 chat requests, split into 5 shards of 20 lines."""

from __future__ import annotations

from typing import Any

SHARDS = 5
LINES_PER_SHARD = 20
# The same requests at every parse: a retried or resumed task re-splits into the same shards.
REQUESTS: list[dict[str, Any]] = [
    {
        "custom_id": f"s-{i}",
        "body": {"model": "qwen-plus", "messages": [{"role": "user", "content": f"shard line {i}"}]},
    }
    for i in range(SHARDS * LINES_PER_SHARD)
]
