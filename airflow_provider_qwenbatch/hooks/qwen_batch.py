"""QwenBatchHook: the only place that reads the ``qwen_batch`` Connection."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_qwenbatch.client.errors import QwenBatchError
from airflow_provider_qwenbatch.client.regions import Region, validate_workspace_id, workspace_base_url
from airflow_provider_qwenbatch.client.retry import RetryPolicy
from airflow_provider_qwenbatch.compat import BaseHook, aread_connection

if TYPE_CHECKING:
    # Imported where used: a DAG file importing an operator should not pay for the clients.
    from airflow_provider_qwenbatch.client.aio import AsyncBatchClient
    from airflow_provider_qwenbatch.client.sync import BatchClient

API_KEY_ENV = "DASHSCOPE_API_KEY"
_EXTRA_PREFIX = "extra__qwen_batch__"
# The UI's Test button waits for test_connection: one attempt, short timeouts, so an unreachable
# host answers in about 5 s instead of five retries with back-off (~21 s).
# Seconds for connect and for each read: worst case ~5 s on a host that accepts and never answers.
TEST_CONNECTION_TIMEOUT = 2.5
TEST_CONNECTION_RETRIES = 0
# (conn_id, task instance) pairs already told that the key comes from the environment: several
# hooks of one task (submit, console link, kill path) resolve the same Connection.
_ENV_KEY_LOGGED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class ConnectionSettings:
    """What a ``qwen_batch`` Connection resolves to. The API key is hidden from ``repr``.

    :param conn_id: the Connection id.
    :param base_url: the API base URL (region's, or the override).
    :param region: the region (for console links).
    :param timeout: request timeout in seconds.
    :param connect_timeout: connect timeout in seconds.
    :param max_retries: retries of safe calls.
    :param api_key: the API key.
    :param api_key_source: ``connection`` or ``environment``.
    """

    conn_id: str
    base_url: str
    region: Region
    timeout: float
    connect_timeout: float
    max_retries: int
    api_key: str = field(repr=False)
    api_key_source: str = "connection"

    @property
    def httpx_timeout(self) -> httpx.Timeout:
        """Timeouts as httpx takes them."""
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def sync_client(self, **kwargs: Any) -> BatchClient:
        """Build a sync client from these settings.

        :param kwargs: passed to :class:`BatchClient` (``logger``, ``transport``...).
        """
        from airflow_provider_qwenbatch.client.sync import BatchClient

        return BatchClient(
            self.api_key,
            self.base_url,
            timeout=self.httpx_timeout,
            retry=RetryPolicy(max_retries=self.max_retries),
            **kwargs,
        )

    def async_client(self, **kwargs: Any) -> AsyncBatchClient:
        """Build an async client from these settings.

        :param kwargs: passed to :class:`AsyncBatchClient`.
        """
        from airflow_provider_qwenbatch.client.aio import AsyncBatchClient

        return AsyncBatchClient(
            self.api_key,
            self.base_url,
            timeout=self.httpx_timeout,
            retry=RetryPolicy(max_retries=self.max_retries),
            **kwargs,
        )

    def console_url(self, batch_id: str | None = None) -> str:
        """The Model Studio console page of the batch jobs.

        The console has no documented per-batch deep link; the id goes into the page's
        fragment route so the link at least names the batch.

        :param batch_id: the batch to name.
        """
        url = self.region.console_url
        return f"{url}?batch_id={batch_id}" if batch_id else url


class QwenBatchHook(BaseHook):
    """Connects to the Qwen Cloud (DashScope) Batch API with a ``qwen_batch`` Connection.

    Connection fields: **API Key** (password; when empty, the ``DASHSCOPE_API_KEY`` environment
    variable is used and the log says so), **Base URL override** (host; e.g. a local emulator),
    and extras ``region`` (``beijing``, ``singapore``, ``us``), ``timeout``, ``connect_timeout``,
    ``max_retries``, and ``workspace_id`` (Singapore's workspace-specific domain,
    ``https://{workspace_id}.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1``, which the vendor
    recommends over ``dashscope-intl``).

    :param qwen_batch_conn_id: the Connection id.
    """

    conn_name_attr = "qwen_batch_conn_id"
    default_conn_name = "qwen_batch_default"
    conn_type = "qwen_batch"
    hook_name = "Qwen Batch (DashScope)"

    def __init__(self, qwen_batch_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.qwen_batch_conn_id = qwen_batch_conn_id

    def __repr__(self) -> str:
        return f"QwenBatchHook(qwen_batch_conn_id={self.qwen_batch_conn_id!r})"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Labels and hidden fields of the Connection form (also declared in the provider info)."""
        from airflow_provider_qwenbatch.get_provider_info import get_provider_info

        conn = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
        return {
            "hidden_fields": conn["hidden-fields"],
            "relabeling": conn["relabeling"],
            "placeholders": conn["placeholders"],
        }

    def _settings_from(self, conn: Any) -> ConnectionSettings:
        return settings_from_connection(self.qwen_batch_conn_id, conn, self.log)

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The resolved Connection (read once per hook)."""
        return self._settings_from(self.get_connection(self.qwen_batch_conn_id))

    async def aget_settings(self) -> ConnectionSettings:
        """Resolve the Connection without blocking the event loop (for triggers)."""
        return await aread_connection(self, self.qwen_batch_conn_id, self._settings_from)

    def get_conn(self) -> BatchClient:
        """A new sync client for this Connection (close it, or use it as a context manager)."""
        return self.settings.sync_client(logger=self.log)

    def test_connection(self) -> tuple[bool, str]:
        """Really call the API (list one batch) with the Connection's key and URL.

        One attempt with short timeouts (:data:`TEST_CONNECTION_TIMEOUT`), so the UI's Test
        button answers within about 5 s even when the host is unreachable.
        """
        try:
            settings = replace(
                self.settings,
                timeout=min(self.settings.timeout, TEST_CONNECTION_TIMEOUT),
                connect_timeout=min(self.settings.connect_timeout, TEST_CONNECTION_TIMEOUT),
                max_retries=TEST_CONNECTION_RETRIES,
            )
            with settings.sync_client(logger=self.log) as client:
                page = client.list_batches(limit=1)
        except QwenBatchError as exc:
            return False, str(exc)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        seen = len(page.batches)
        return True, f"Connected to {self.settings.base_url} (listed {seen} batch{'es' if seen != 1 else ''})"


def _task_key() -> str:
    """The running task instance (``""`` outside a task), so the env-key notice is once per task."""
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # not in a task (a script, the triggerer, a test)
        return ""
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}/{ti.try_number}"


def _extra(extras: dict[str, Any], name: str) -> Any:
    value = extras.get(name)
    if value in (None, ""):
        value = extras.get(_EXTRA_PREFIX + name)
    return None if value == "" else value


def _base_url(conn: Any, extras: dict[str, Any], region: Region, workspace_id: str | None) -> str:
    override = _extra(extras, "base_url")
    host = (getattr(conn, "host", None) or "").strip()
    if override:
        return str(override).rstrip("/")
    if not host:
        return workspace_base_url(workspace_id) if workspace_id else region.base_url
    if "://" in host:
        return host.rstrip("/")
    # A URI-style Connection (qwen_batch://:key@127.0.0.1:8000/compatible-mode/v1) splits the URL up.
    local = host in ("localhost", "127.0.0.1", "::1")
    scheme = "http" if local else "https"
    port = f":{conn.port}" if getattr(conn, "port", None) else ""
    path = (getattr(conn, "schema", None) or "compatible-mode/v1").strip("/")
    return f"{scheme}://{host}{port}/{path}"


def settings_from_connection(conn_id: str, conn: Any, log: Any) -> ConnectionSettings:
    """Resolve a ``qwen_batch`` Connection into client settings.

    :param conn_id: the Connection id (for messages).
    :param conn: the Connection object.
    :param log: where to say that the key came from the environment.
    :raises ValueError: naming the Connection and the field that is wrong.
    """
    extras: dict[str, Any] = dict(conn.extra_dejson or {})
    raw_region = _extra(extras, "region")
    try:
        region = Region.parse(raw_region)
    except ValueError as exc:
        raise ValueError(f"Connection {conn_id!r}, extra 'region': {exc}") from None
    workspace_id = _extra(extras, "workspace_id")
    if workspace_id is not None:
        if not isinstance(workspace_id, str):
            raise ValueError(
                f"Connection {conn_id!r}, extra 'workspace_id': expected text, got {workspace_id!r}"
            )
        try:
            workspace_id = validate_workspace_id(workspace_id)
        except ValueError as exc:
            raise ValueError(f"Connection {conn_id!r}, extra 'workspace_id': {exc}") from None
        if raw_region is None:
            region = Region.SINGAPORE  # workspace domains exist in Singapore only
        elif region is not Region.SINGAPORE:
            raise ValueError(
                f"Connection {conn_id!r}, extra 'workspace_id': workspace domains exist only in the "
                f"singapore region, but extra 'region' is {raw_region!r}"
            )

    def number(name: str, default: float, strict: bool = True) -> float:
        raw = _extra(extras, name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"Connection {conn_id!r}, extra {name!r}: expected a number, got {raw!r}"
            ) from None
        if value < 0 or (strict and value == 0):
            raise ValueError(f"Connection {conn_id!r}, extra {name!r}: out of range, got {raw!r}")
        return value

    api_key = conn.password or ""
    source = "connection"
    if not api_key:
        api_key = os.environ.get(API_KEY_ENV, "")
        source = "environment"
        if not api_key:
            raise ValueError(
                f"Connection {conn_id!r} has no API key (the password field) and {API_KEY_ENV} is not set"
            )
        # Airflow masks Connection passwords itself; a key from the environment must be masked here.
        from airflow_provider_qwenbatch.compat import mask_secret

        mask_secret(api_key)
        seen = (conn_id, _task_key())
        if seen not in _ENV_KEY_LOGGED:
            _ENV_KEY_LOGGED.add(seen)
            log.info("Connection %r has no API key; using the %s environment variable", conn_id, API_KEY_ENV)
    return ConnectionSettings(
        conn_id=conn_id,
        base_url=_base_url(conn, extras, region, workspace_id),
        region=region,
        timeout=number("timeout", 60.0),
        connect_timeout=number("connect_timeout", 10.0),
        max_retries=int(number("max_retries", 5.0, strict=False)),
        api_key=api_key,
        api_key_source=source,
    )
