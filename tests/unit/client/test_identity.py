"""Batch identity: the task part's collision bound, the input fingerprint beside the tag, old tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_qwenbatch.client.identity import (
    DS_NAME_MAX,
    BatchTag,
    InputFingerprint,
    find_tags,
    run_tag,
)
from airflow_provider_qwenbatch.client.jsonl import validate_jsonl_file, write_jsonl

DAG, RUN = "etl_daily", "scheduled__2026-04-17T00:00:00+00:00"
CHAT = "/v1/chat/completions"


def _fp(seed: str = "a" * 64, **kw: str) -> InputFingerprint:
    args = {"endpoint": CHAT, "completion_window": "24h", "model": "qwen-plus", **kw}
    return InputFingerprint.of_content(seed, **args)


def test_task_part_collision_probability_is_below_1e12_at_100k_map_indexes() -> None:
    value = BatchTag(DAG, RUN, "submit", 0).value
    task_part = value[len(run_tag(DAG, RUN)) :]
    bits = 4 * len(task_part)
    n = 100_000
    # Birthday bound: P(any collision among n) <= n^2 / 2^(bits+1).
    assert n * n / 2 ** (bits + 1) < 1e-12, bits
    # And no collision in practice among 100,000 map indexes of one task.
    assert len({BatchTag(DAG, RUN, "submit", i).value for i in range(n)}) == n


def test_run_prefix_still_finds_every_batch_of_a_run_including_old_format_tags() -> None:
    prefix = run_tag(DAG, RUN)
    new = BatchTag(DAG, RUN, "submit", 3).ds_name("my job", fingerprint=_fp())
    old_format = f"legacy job {prefix}0123abcd"  # what the previous version wrote: 8 hex, no input part
    for ds_name in (new, old_format):
        assert prefix in ds_name  # the server-side substring search
        assert any(t.startswith(prefix) for t in find_tags(ds_name))
    assert find_tags(old_format) == [f"{prefix}0123abcd"]
    assert find_tags(new) == [BatchTag(DAG, RUN, "submit", 3).value]


def test_ds_name_with_fingerprint_fits_100_chars_and_keeps_the_users_name() -> None:
    tag = BatchTag("d" * 250, "r" * 250, "t" * 250, 99_999)
    fp = _fp()
    for user_name in (None, "", "short name", "x" * 46, "x" * 47, "y" * 250, "测试任务" * 60):
        name = tag.ds_name(user_name, fingerprint=fp)
        assert len(name) <= DS_NAME_MAX, (user_name, len(name))
        assert tag.matches(name)
        assert tag.fingerprint_in(name) == fp
        assert find_tags(name) == [tag.value]
    assert tag.ds_name("short name", fingerprint=fp).startswith("short name ")
    assert tag.ds_name("x" * 46, fingerprint=fp).startswith("x" * 46 + " ")  # fits whole
    assert "…" in tag.ds_name("x" * 47, fingerprint=fp)  # shortened, marked


def test_fingerprint_belongs_to_its_own_tag_only() -> None:
    mine, sibling = BatchTag(DAG, RUN, "submit", 0), BatchTag(DAG, RUN, "submit", 1)
    name = sibling.ds_name("x", fingerprint=_fp())
    assert mine.fingerprint_in(name) is None
    assert mine.fingerprint_in(mine.ds_name("x")) is None  # no input part recorded
    assert mine.fingerprint_in(None) is None


def test_fingerprint_changes_with_content_endpoint_window_and_model_only() -> None:
    base = _fp()
    assert _fp() == base
    assert _fp(completion_window="1d") == base  # the same window spelt another way
    assert _fp("b" * 64) != base
    assert _fp(endpoint="/v1/embeddings") != base
    assert _fp(completion_window="48h") != base
    assert _fp(model="qwen-max") != base
    by_id = InputFingerprint.of_file_id("file-batch-1", endpoint=CHAT, completion_window="24h")
    assert by_id != InputFingerprint.of_file_id("file-batch-2", endpoint=CHAT, completion_window="24h")
    assert by_id != base
    with pytest.raises(ValueError, match="16 hex"):
        InputFingerprint("not-hex")


def test_validation_hashes_exactly_the_file_bytes_in_its_one_pass(tmp_path: Path) -> None:
    import hashlib

    rows = [
        {"custom_id": f"r-{i}", "method": "POST", "url": CHAT, "body": {"model": "qwen-plus", "x": i}}
        for i in range(3)
    ]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode() + b"\n  \n"  # trailing blank lines
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    summary = validate_jsonl_file(path, CHAT)
    assert summary.sha256 == hashlib.sha256(content).hexdigest()
    written = write_jsonl(rows, tmp_path / "out.jsonl", CHAT)
    assert written.sha256 == hashlib.sha256((tmp_path / "out.jsonl").read_bytes()).hexdigest()
    # The same requests give the same hash whichever way they arrive.
    assert validate_jsonl_file(tmp_path / "out.jsonl", CHAT).sha256 == written.sha256


# ---- shards of a split input ---------------------------------------------------------------


def test_a_shard_label_sits_after_the_fingerprint_and_leaves_tag_and_fingerprint_readable() -> None:
    from airflow_provider_qwenbatch.client.identity import ShardLabel

    tag = BatchTag(DAG, RUN, "submit", 7)
    name = tag.ds_name("nightly labels " * 10, fingerprint=_fp(), shard=ShardLabel(2, 41))
    assert len(name) <= DS_NAME_MAX
    assert name.endswith(f"{tag.value}-{_fp().value}/r2s41")
    assert tag.matches(name) and find_tags(name) == [tag.value]
    assert tag.fingerprint_in(name) == _fp()
    assert tag.shard_in(name) == ShardLabel(2, 41)
    # Another task instance's tag does not read this batch's shard or fingerprint.
    other = BatchTag(DAG, RUN, "submit", 8)
    assert other.shard_in(name) is None and other.fingerprint_in(name) is None
    # A whole-input batch has no label.
    assert tag.shard_in(tag.ds_name(fingerprint=_fp())) is None


def test_a_resubmission_round_is_a_new_fingerprint_even_for_the_same_bytes() -> None:
    base = _fp()
    assert (
        InputFingerprint.of_content("a" * 64, endpoint=CHAT, completion_window="24h", model="qwen-plus")
        == base
    )
    rounds = {
        InputFingerprint.of_content(
            "a" * 64, endpoint=CHAT, completion_window="24h", model="qwen-plus", round_number=r
        )
        for r in (1, 2)
    }
    assert len(rounds) == 2 and base not in rounds


def test_a_shard_label_is_parsed_or_refused() -> None:
    from airflow_provider_qwenbatch.client.identity import ShardLabel

    assert ShardLabel.parse("r0s12") == ShardLabel(0, 12)
    with pytest.raises(ValueError, match="not a shard label"):
        ShardLabel.parse("s12")
