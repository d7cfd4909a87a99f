"""The logger interface the client needs: a stdlib logger or Airflow's structured one both fit."""

from __future__ import annotations

from typing import Any, Protocol


class LoggerLike(Protocol):
    """Anything with ``info`` and ``warning`` taking printf-style arguments."""

    def info(self, msg: str, /, *args: Any) -> Any:
        """Log at INFO."""

    def warning(self, msg: str, /, *args: Any) -> Any:
        """Log at WARNING."""
