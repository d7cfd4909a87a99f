"""Batch identity: the deterministic tag and input fingerprint every batch the provider creates carries.

``metadata.ds_name`` holds at most 100 characters (and is the only metadata key the live
service is confirmed to store and echo), the list filter matches substrings, and Airflow's
dag and task ids can be 250 characters each. So the identity is hashed::

    [<user's ds_name> ]af-<run: 12 hex>-<task: 20 hex>-<input: 16 hex>

- the run part comes from (dag_id, run_id): a substring search for ``af-<run part>-`` finds
  every batch of a run (the run clean-up relies on it);
- the task part comes from (task_id, map_index), 80 bits: two task instances of one run
  collide with probability below 1e-13 even at 100,000 map indexes (birthday bound
  ``n**2 / 2**81``); the try number is left out so a retry or a clear finds the batch of an
  earlier try;
- the input part (:class:`InputFingerprint`) says what the batch was created from, so an
  earlier try's batch is re-attached to only when the input is the same.

Tags written by the previous version (``af-<12 hex>-<8 hex>``, no input part) are still
recognised by :func:`find_tags`, so the run clean-up finds those batches too; a task's
re-attach lookup does not (see :func:`~.lookup.find_batch_for_task`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from airflow_provider_qwenbatch.client.window import parse_completion_window

DS_NAME_MAX = 100
_RUN_LEN = 12
_TASK_LEN = 20
_LEGACY_TASK_LEN = 8
FINGERPRINT_LEN = 16
_TAG_RE = re.compile(
    rf"af-[0-9a-f]{{{_RUN_LEN}}}-(?:[0-9a-f]{{{_TASK_LEN}}}|[0-9a-f]{{{_LEGACY_TASK_LEN}}})"
    rf"(?:-(?P<fp>[0-9a-f]{{{FINGERPRINT_LEN}}}))?(?![0-9a-f])(?:/(?P<label>r\d+s\d+))?"
)
_FINGERPRINT_VERSION = "qwenbatch-input-v1"


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
class InputFingerprint:
    """What a batch was created from: a short hash of its input and the batch parameters that shape results.

    Build it with :meth:`of_content` (the input file's bytes were hashed while validating) or
    :meth:`of_file_id` (the input was given as an uploaded file id or URL, whose content the
    provider never reads).

    :param value: 16 hex characters.
    """

    value: str

    def __post_init__(self) -> None:
        if not re.fullmatch(rf"[0-9a-f]{{{FINGERPRINT_LEN}}}", self.value):
            raise ValueError(f"an input fingerprint is {FINGERPRINT_LEN} hex characters, got {self.value!r}")

    @classmethod
    def of_content(
        cls,
        content_sha256: str,
        *,
        endpoint: str,
        completion_window: str,
        model: str | None,
        round_number: int = 0,
    ) -> InputFingerprint:
        """The fingerprint of a validated input file.

        :param content_sha256: hex SHA-256 of the file's bytes (as uploaded).
        :param endpoint: the batch endpoint.
        :param completion_window: e.g. ``24h`` (``1d`` gives the same fingerprint).
        :param model: the one model of the file.
        :param round_number: 0 for the input itself, ``r`` for its r-th resubmission round: a
            round that re-sends the same failed lines as the round before is a new batch, not
            the earlier round's batch to re-attach to.
        """
        source = content_sha256 if not round_number else f"{content_sha256}/round-{round_number}"
        return cls._of("content", source, endpoint, completion_window, model or "")

    @classmethod
    def of_file_id(cls, file_id: str, *, endpoint: str, completion_window: str) -> InputFingerprint:
        """The fingerprint of an input given by file id, OSS URL or ``oss:`` reference (its content is not read).

        :param file_id: the id or URL exactly as given.
        :param endpoint: the batch endpoint.
        :param completion_window: e.g. ``24h``.
        """
        return cls._of("file", file_id, endpoint, completion_window, "")

    @classmethod
    def _of(cls, kind: str, source: str, endpoint: str, window: str, model: str) -> InputFingerprint:
        hours = str(int(parse_completion_window(window).total_seconds() // 3600))
        return cls(
            _digest(_FINGERPRINT_VERSION, kind, source, endpoint, hours, model, length=FINGERPRINT_LEN)
        )


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
        """The tag without the input part, e.g. ``af-0123456789ab-0123456789abcdef0123`` (36 characters).

        It is what the list filter searches for: a substring of every ``ds_name`` of this task instance.
        """
        return run_tag(self.dag_id, self.run_id) + _digest(
            self.task_id, str(self.map_index), length=_TASK_LEN
        )

    def ds_name(
        self,
        user_name: str | None = None,
        *,
        fingerprint: InputFingerprint | None = None,
        shard: ShardLabel | None = None,
    ) -> str:
        """The ``ds_name`` to send: the user's own name (shortened if needed), then the tag and input part.

        :param user_name: the ``ds_name`` the user asked for, if any.
        :param fingerprint: what the batch is created from.
        :param shard: which shard of a split input (and which resubmission round) the batch runs.
        """
        tag = self.value + (f"-{fingerprint.value}" if fingerprint is not None else "")
        if shard is not None and fingerprint is not None:
            tag += f"/{shard.value}"
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

    def fingerprint_in(self, ds_name: str | None) -> InputFingerprint | None:
        """The input fingerprint recorded beside this tag in ``ds_name`` (``None``: none, or not this tag).

        :param ds_name: the batch's ``metadata.ds_name``.
        """
        for match in _TAG_RE.finditer(ds_name or ""):
            fp = match.group("fp")
            if fp and match.group(0)[: match.start("fp") - match.start() - 1] == self.value:
                return InputFingerprint(fp)
        return None

    def shard_in(self, ds_name: str | None) -> ShardLabel | None:
        """The shard label recorded beside this tag in ``ds_name`` (``None``: a batch of a whole input).

        :param ds_name: the batch's ``metadata.ds_name``.
        """
        for match in _TAG_RE.finditer(ds_name or ""):
            fp, label = match.group("fp"), match.group("label")
            if fp and label and match.group(0)[: match.start("fp") - match.start() - 1] == self.value:
                return ShardLabel.parse(label)
        return None


@dataclass(frozen=True)
class ShardLabel:
    """Which part of a split input a batch runs: ``r<round>s<shard>`` after the input part of the tag.

    :param round_number: 0 for the input itself, ``r`` for its r-th resubmission of failed lines.
    :param shard: the 1-based shard number within that round's input.
    """

    round_number: int
    shard: int

    @property
    def value(self) -> str:
        """E.g. ``r0s3``."""
        return f"r{self.round_number}s{self.shard}"

    @classmethod
    def parse(cls, value: str) -> ShardLabel:
        """Read ``r<round>s<shard>``.

        :param value: the label.
        """
        match = re.fullmatch(r"r(\d+)s(\d+)", value)
        if match is None:
            raise ValueError(f"not a shard label: {value!r}")
        return cls(int(match.group(1)), int(match.group(2)))


def find_tags(ds_name: str) -> list[str]:
    """Every provider tag inside a ``ds_name``, without its input part (current and previous format).

    :param ds_name: a batch's ``metadata.ds_name``.
    """
    return [
        m.group(0)[: m.start("fp") - m.start() - 1] if m.group("fp") else m.group(0)
        for m in _TAG_RE.finditer(ds_name)
    ]
