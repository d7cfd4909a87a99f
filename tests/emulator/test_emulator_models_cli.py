"""Model names: only real DashScope names pass (as the live service refuses the others); the CLI help."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx
import pytest

from airflow_provider_qwenbatch.emulator import EmulatorConfig, EmulatorHandle, FaultSpec
from airflow_provider_qwenbatch.emulator.__main__ import config_from_args
from airflow_provider_qwenbatch.emulator.config import field_docs
from airflow_provider_qwenbatch.emulator.models import DEFAULT_MODELS


@pytest.mark.parametrize("model", ["qwen-plsu", "gpt-4o", "qwen", "qwen-flash-2099"])
def test_an_unknown_model_fails_the_batch_with_model_not_found(
    http: httpx.Client, helpers: Any, model: str
) -> None:
    final = helpers.run_batch(http, helpers.chat_lines(3, model=model))
    assert final["status"] == "failed"
    first = final["errors"]["data"][0]
    assert first["code"] == "model_not_found"
    assert first["param"] == "body.model"
    assert first["line"] == 1
    assert model in first["message"]
    assert final["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert final["output_file_id"] is None


# Every name the repository's tests, example DAGs and benchmarks use, and the series the brief names.
@pytest.mark.parametrize(
    ("model", "url"),
    [
        ("qwen-flash", "/v1/chat/completions"),
        ("qwen-plus", "/v1/chat/completions"),
        ("qwen-max", "/v1/chat/completions"),
        ("qwen-turbo", "/v1/chat/completions"),
        ("qwen-plus-latest", "/v1/chat/completions"),
        ("qwen-long", "/v1/chat/completions"),
        ("qwq-plus", "/v1/chat/completions"),
        ("deepseek-v3.2", "/v1/chat/completions"),
        ("qwen-vl-max", "/v1/chat/completions"),
        ("qwen-vl-ocr", "/v1/chat/completions"),
        ("qwen3-max", "/v1/chat/completions"),
        ("qwen3.5-flash", "/v1/chat/completions"),
        ("qwen3.7-plus", "/v1/chat/completions"),
        ("text-embedding-v4", "/v1/embeddings"),
        ("text-embedding-v3", "/v1/embeddings"),
        ("batch-test-model", "/v1/chat/ds-test"),
    ],
)
def test_real_model_names_are_accepted(http: httpx.Client, helpers: Any, model: str, url: str) -> None:
    final = helpers.run_batch(http, helpers.chat_lines(2, model=model, url=url), url)
    assert final["status"] == "completed", final["errors"]


def test_the_model_list_and_accept_any_can_be_changed_at_runtime(
    http: httpx.Client, helpers: Any, emu: EmulatorHandle
) -> None:
    emu.set_config(models=[*sorted(DEFAULT_MODELS), "my-finetune"])
    assert helpers.run_batch(http, helpers.chat_lines(1, model="my-finetune"))["status"] == "completed"
    assert helpers.run_batch(http, helpers.chat_lines(1, model="qwen-plsu"))["status"] == "failed"
    emu.set_config(accept_any_model=True)
    assert helpers.run_batch(http, helpers.chat_lines(1, model="qwen-plsu"))["status"] == "completed"


def test_cli_models_replace_or_add() -> None:
    assert config_from_args(["--models", "a,b"]).models == ["a", "b"]
    added = config_from_args(["--models", "+my-ft,other"]).models
    assert set(added) == DEFAULT_MODELS | {"my-ft", "other"}
    assert config_from_args(["--accept-any-model"]).accept_any_model is True
    assert config_from_args([]).models == sorted(DEFAULT_MODELS)


def _help() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_qwenbatch.emulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    return " ".join(result.stdout.split())  # undo argparse's line wrapping


def test_help_describes_every_option_and_every_fault_key() -> None:
    text = _help()
    docs = field_docs(EmulatorConfig)
    for name in EmulatorConfig.model_fields:
        if name == "faults":
            assert "--fault ENDPOINT:key=value" in text
            continue
        flag = "--" + name.replace("_", "-")
        assert re.search(re.escape(flag) + r"\b", text), flag
        # The description of the field (its docstring entry) is shown, not only the flag.
        assert docs.get(name), f"EmulatorConfig.{name} has no :param: entry"
        assert docs[name] in text, name
    fault_docs = field_docs(FaultSpec)
    for key in FaultSpec.model_fields:
        assert fault_docs.get(key), f"FaultSpec.{key} has no :param: entry"
        assert f"{key} {fault_docs[key]}" in text, key
