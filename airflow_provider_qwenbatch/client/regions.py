"""Regions of Qwen Cloud: one API key and one base URL each, and the models each serves for batch."""

from __future__ import annotations

import re
from enum import Enum
from urllib.parse import urlparse


class Region(str, Enum):
    """A DashScope region; its API key works only there."""

    BEIJING = "beijing"
    SINGAPORE = "singapore"
    US = "us"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL of the region."""
        return _BASE_URLS[self]

    @property
    def console_url(self) -> str:
        """The Model Studio console page that lists batch jobs in this region."""
        return _CONSOLE_URLS[self]

    @classmethod
    def parse(cls, value: str | Region | None) -> Region:
        """Parse a region name (``beijing``, ``singapore``/``intl``, ``us``); ``None`` is Beijing.

        :param value: the region as written in a Connection or by a user.
        :raises ValueError: naming the value and the choices.
        """
        if isinstance(value, Region):
            return value
        if value is None or value == "":
            return cls.BEIJING
        key = value.strip().lower()
        key = _ALIASES.get(key, key)
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown region {value!r}: choose one of {choices}") from None


DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
_BASE_URLS = {
    Region.BEIJING: DEFAULT_BASE_URL,
    Region.SINGAPORE: "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    # Batch availability in the US region is UNCONFIRMED; the URL follows the others' pattern.
    Region.US: "https://dashscope-us.aliyuncs.com/compatible-mode/v1",
}
_CONSOLE_URLS = {
    Region.BEIJING: "https://bailian.console.aliyun.com/?tab=model#/batch",
    Region.SINGAPORE: "https://modelstudio.console.alibabacloud.com/?tab=model#/batch",
    Region.US: "https://modelstudio.console.alibabacloud.com/?tab=model#/batch",
}
_ALIASES = {
    "cn-beijing": "beijing",
    "cn": "beijing",
    "intl": "singapore",
    "ap-southeast-1": "singapore",
    "international": "singapore",
    "us-east-1": "us",
    "virginia": "us",
}


# ---- Singapore's workspace-specific domain --------------------------------------------------

# The vendor recommends it over dashscope-intl for Singapore. A workspace id is what the Model
# Studio console shows (``ws-`` and lower-case letters/digits, or a bare id): it becomes a DNS
# label, so it is checked as one before it can be turned into a URL.
_WORKSPACE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_WORKSPACE_HOST_SUFFIX = ".ap-southeast-1.maas.aliyuncs.com"


def validate_workspace_id(workspace_id: str) -> str:
    """Return the workspace id, stripped, if it can name a Singapore workspace domain.

    :param workspace_id: the Model Studio workspace id, e.g. ``ws-0a1b2c3d4e5f``.
    :raises ValueError: saying what is wrong with the id.
    """
    value = workspace_id.strip()
    if not _WORKSPACE_ID_RE.match(value):
        raise ValueError(
            f"workspace_id {workspace_id!r} is not a valid workspace id: use the id the Model Studio "
            "console shows (lower-case letters, digits and '-', at most 63 characters, e.g. ws-0a1b2c3d)"
        )
    return value


def workspace_base_url(workspace_id: str) -> str:
    """The OpenAI-compatible base URL of a Singapore workspace.

    :param workspace_id: the Model Studio workspace id.
    :raises ValueError: when the id is malformed (see :func:`validate_workspace_id`).
    """
    return f"https://{validate_workspace_id(workspace_id)}{_WORKSPACE_HOST_SUFFIX}/compatible-mode/v1"


def region_of_base_url(base_url: str | None) -> Region | None:
    """The region a base URL belongs to, or ``None`` for a URL of no known region (an emulator, a proxy).

    ``None`` (no URL given) is Beijing, like the client's default.

    :param base_url: the base URL the client talks to.
    """
    if not base_url:
        return Region.BEIJING
    host = (urlparse(base_url if "://" in base_url else f"https://{base_url}").hostname or "").lower()
    if host.endswith(_WORKSPACE_HOST_SUFFIX):
        return Region.SINGAPORE
    for region, url in _BASE_URLS.items():
        if host == urlparse(url).hostname:
            return region
    return None


# ---- models each region serves for batch ----------------------------------------------------

# From the vendor's pages of June 2026. Names change over time, so this list only ever gives
# advice (a warning before upload); the server's ``model_not_found`` stays the truth.
EMBEDDING_MODELS: frozenset[str] = frozenset(
    {"text-embedding-v1", "text-embedding-v2", "text-embedding-v3", "text-embedding-v4"}
)
# The one list of batch models per region: the client warns from it, the emulator accepts it.
BATCH_MODELS: dict[Region, frozenset[str]] = {
    Region.SINGAPORE: frozenset({"qwen-max", "qwen-plus", "qwen-flash", "qwen-turbo"}),
    Region.BEIJING: frozenset(
        {
            # Qwen-Max/Plus/Flash/Long/Turbo, stable and -latest.
            "qwen-max",
            "qwen-max-latest",
            "qwen-plus",
            "qwen-plus-latest",
            "qwen-flash",
            "qwen-flash-latest",
            "qwen-long",
            "qwen-long-latest",
            "qwen-turbo",
            "qwen-turbo-latest",
            "qwq-plus",
            # Third-party models served by DashScope.
            "deepseek-r1",
            "deepseek-v3",
            "deepseek-v3.2",
            # Vision and OCR.
            "qwen-vl-max",
            "qwen-vl-max-latest",
            "qwen-vl-plus",
            "qwen-vl-plus-latest",
            "qwen-vl-flash",
            "qwen-vl-ocr",
            "qwen-vl-ocr-latest",
            *EMBEDDING_MODELS,
        }
    ),
    # The US region's batch models are not documented: no list, so no warning there.
}
# The test model of ``/v1/chat/ds-test`` is served everywhere.
_EVERYWHERE = frozenset({"batch-test-model"})


def batch_model_warning(region: Region | None, model: str | None) -> str | None:
    """A warning when ``model`` is not on ``region``'s batch list, else ``None``.

    :param region: the region (``None``: unknown, e.g. an emulator; nothing to say).
    :param model: the model every request of the batch uses.
    """
    if region is None or not model or model in _EVERYWHERE:
        return None
    known = BATCH_MODELS.get(region)
    if known is None or model in known:
        return None
    return (
        f"model {model!r} is not on the {region.value} region's list of batch models "
        f"({', '.join(sorted(known))}); the server may fail the batch with model_not_found. "
        "Uploading anyway: the list is advice, the server decides"
    )
