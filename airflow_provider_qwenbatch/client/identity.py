"""Batch identity: the short, deterministic tag every batch the provider creates carries.

``metadata.ds_name`` holds at most 100 characters and the list filter matches substrings,
while Airflow's dag and task ids can be 250 characters each. So the tag is hashed:
``af-<run part>-<task part>``, where the run part comes from (dag_id, run_id) and the task
part from (task_id, map_index); the try number is left out so a retry finds the batch of
an earlier try. A substring search for ``af-<run part>-`` finds every batch of a run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

DS_NAME_MAX = 100
_RUN_LEN = 12
_TASK_LEN = 8
_TAG_RE = re.compile(rf"af-[0-9a-f]{{{_RUN_LEN}}}-[0-9a-f]{{{_TASK_LEN}}}")


def _digest(*parts: str, length: int) -> str:
    # \x1f (unit separator) cannot occur ambiguously at a boundary: ("a", "bc") != ("ab", "c").
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:length]


def run_tag(dag_id: str, run_id: str) -> str:
    """The part of the tag shared by every batch of one DAG run (``af-<12 hex>-``).

    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    """
    return f"af-{_digest(dag_id, run_id, length=_RUN_LEN)}-"


@dataclass(frozen=True)
class BatchTag:
    """The identity of the batch of one task instance (any try).

    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    :param task_id: the task id.
    :param map_index: the map index (-1 when not mapped).
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    @property
    def value(self) -> str:
        """The tag, e.g. ``af-0123456789ab-89abcdef`` (24 characters)."""
        return run_tag(self.dag_id, self.run_id) + _digest(
            self.task_id, str(self.map_index), length=_TASK_LEN
        )

    def ds_name(self, user_name: str | None = None) -> str:
        """The ``ds_name`` to send: the user's own name (shortened if needed) and the tag beside it.

        :param user_name: the ``ds_name`` the user asked for, if any.
        """
        tag = self.value
        if not user_name:
            return tag
        room = DS_NAME_MAX - len(tag) - 1
        name = user_name if len(user_name) <= room else user_name[: room - 1] + "…"
        return f"{name} {tag}"

    def matches(self, ds_name: str | None) -> bool:
        """Whether a batch's ``ds_name`` carries exactly this tag (the list filter is only a substring match).

        :param ds_name: the batch's ``metadata.ds_name``.
        """
        return bool(ds_name) and self.value in find_tags(ds_name or "")


def find_tags(ds_name: str) -> list[str]:
    """Every provider tag inside a ``ds_name``.

    :param ds_name: a batch's ``metadata.ds_name``.
    """
    return _TAG_RE.findall(ds_name)
