"""The ``completion_window`` rule: an integer with ``h`` or ``d``, from 24 h to 336 h."""

from __future__ import annotations

import re
from datetime import timedelta

MIN_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(hours=336)
_WINDOW_RE = re.compile(r"^([1-9][0-9]*)([hd])$")


def parse_completion_window(value: str) -> timedelta:
    """Parse a ``completion_window`` such as ``"24h"``, ``"7d"`` or ``"336h"``.

    :param value: the window as the API takes it.
    :raises ValueError: naming the value and the rule it breaks.
    """
    match = _WINDOW_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"completion_window {value!r} is not valid: use a whole number followed by 'h' or 'd', "
            "e.g. '24h', '7d', '14d'"
        )
    amount, unit = int(match.group(1)), match.group(2)
    window = timedelta(hours=amount) if unit == "h" else timedelta(days=amount)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise ValueError(f"completion_window {value!r} is out of range: it must be from 24h to 336h (14d)")
    return window
