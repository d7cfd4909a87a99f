"""Billing surprises of an input: requests the server accepts but that cost more than they seem to.

The validator of :mod:`.jsonl` notes them as :class:`InputWarning` (one per rule, with the
first position and a count); ``strict_cost=True`` refuses them instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from airflow_provider_qwenbatch.client.errors import ValidationProblem, position


@dataclass(frozen=True)
class InputWarning:
    """A billing surprise found in an input: not an error (the server accepts it), but it costs money.

    One warning per rule for the whole input, naming its first line and how many requests have it.

    :param rule: ``thinking_default_on`` or ``deprecated_max_tokens``.
    :param message: what the requests do and how to change it.
    :param first_line: 1-based position of the first request concerned.
    :param count: how many requests are concerned.
    :param field: the JSON field concerned.
    """

    rule: str
    message: str
    first_line: int
    count: int
    field: str | None = None

    def render(self, source: str, unit: str = "line") -> str:
        """Render as ``source:line: [rule] field: message (N requests, the first on line L)``.

        :param source: the file or input named in the message.
        :param unit: ``line`` for a file, ``request`` for a list of request dicts.
        """
        many = f"{self.count} request{'s' if self.count != 1 else ''}, the first on {position(self.first_line, unit)}"
        return ValidationProblem(self.first_line, self.rule, f"{self.message} ({many})", self.field).render(
            source, unit
        )


# Models that think by default and bill the thinking tokens unless the body says
# ``enable_thinking`` (API-FACTS, "Added 2026-12"): qwen3.5-plus, qwen3.6-plus, qwen3.7-max...
_THINKING_BY_DEFAULT = re.compile(r"qwen3\.[567](?:[-.]|$)")
THINKING_MESSAGE = (
    "model {model!r} thinks by default and bills the thinking tokens (several times the estimate); "
    'set "enable_thinking": false (or true) at the top level of body to choose'
)
MAX_TOKENS_MESSAGE = "max_tokens is deprecated by DashScope (since 2026-05-30); use max_completion_tokens"


@lru_cache(maxsize=64)
def thinks_by_default(model: str) -> bool:
    """Whether ``model`` (e.g. ``qwen3.6-plus``) has thinking mode on unless the body turns it off.

    :param model: the body's ``model``.
    """
    return _THINKING_BY_DEFAULT.match(model.lower()) is not None
