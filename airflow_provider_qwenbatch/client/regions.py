"""Regions of Qwen Cloud: one API key and one base URL each."""

from __future__ import annotations

from enum import Enum


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
