"""Reading result files: per-line success, failures and token usage, in one streaming pass."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError

from airflow_provider_qwenbatch.client.models import BatchResultLine


@dataclass
class ResultCounts:
    """What a result file holds, judged line by line (not from ``request_counts``).

    :param lines: result lines read.
    :param succeeded: lines with HTTP 200 and no error.
    :param failed: lines with an error or a non-200 status (even inside the output file).
    :param unreadable: lines that are not valid result JSON (counted as failed too).
    :param prompt_tokens: summed over successful lines.
    :param completion_tokens: summed over successful lines.
    :param total_tokens: summed over successful lines.
    :param failed_examples: the first few failures (custom_id and error), for the log.
    """

    lines: int = 0
    succeeded: int = 0
    failed: int = 0
    unreadable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    failed_examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, other: ResultCounts) -> None:
        """Add another file's counts to these."""
        for name in (
            "lines",
            "succeeded",
            "failed",
            "unreadable",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed_examples.extend(other.failed_examples[: max(0, 5 - len(self.failed_examples))])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for XCom."""
        return asdict(self)


def count_results(path: str | os.PathLike[str], *, examples: int = 5) -> ResultCounts:
    """Count successes, failures and tokens of a downloaded result file.

    :param path: a JSONL result file (output or error file).
    :param examples: how many failures to keep as examples.
    """
    counts = ResultCounts()
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            counts.lines += 1
            try:
                line = BatchResultLine.model_validate(json.loads(raw))
            except (ValueError, ValidationError) as exc:
                counts.failed += 1
                counts.unreadable += 1
                if len(counts.failed_examples) < examples:
                    counts.failed_examples.append(
                        {"custom_id": f"<line {n}>", "error": f"unreadable: {exc}"[:200]}
                    )
                continue
            if line.ok:
                counts.succeeded += 1
                usage = line.usage
                if usage is not None:
                    counts.prompt_tokens += usage.prompt_tokens
                    counts.completion_tokens += usage.completion_tokens
                    counts.total_tokens += usage.total_tokens
            else:
                counts.failed += 1
                if len(counts.failed_examples) < examples:
                    counts.failed_examples.append(
                        {"custom_id": line.custom_id, "error": line.describe_error()[:200]}
                    )
    return counts
