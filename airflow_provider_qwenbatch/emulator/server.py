"""Running the emulator in a background thread or as a subprocess.

:func:`running_emulator` and :class:`EmulatorProcess` both hand out an :class:`EmulatorHandle`.

Both bind 127.0.0.1 on a free port. The subprocess is stopped by its PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from airflow_provider_qwenbatch.emulator.app import ADMIN_PREFIX, API_PREFIX, create_app
from airflow_provider_qwenbatch.emulator.config import EmulatorConfig, FaultSpec

READY_MARKER = "QWENBATCH_EMULATOR_READY"


class EmulatorHandle:
    """Where a running emulator is, and helpers over its admin API.

    :param root_url: ``http://127.0.0.1:PORT``.
    :param api_key: the key it accepts.
    """

    def __init__(self, root_url: str, api_key: str) -> None:
        self.root_url = root_url.rstrip("/")
        self.base_url = self.root_url + API_PREFIX
        self.admin_url = self.root_url + ADMIN_PREFIX
        self.api_key = api_key

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.root_url.rsplit(":", 1)[1])

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        with httpx.Client(timeout=30.0) as client:
            response = client.request(method, self.admin_url + path, **kwargs)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        """``GET /_emulator/health``."""
        result: dict[str, Any] = self._admin("GET", "/health")
        return result

    def requests(
        self, *, since: int = 0, endpoint: str | None = None, batch_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The request log (API requests only), oldest first.

        :param since: only entries with ``seq`` greater than this.
        :param endpoint: only this endpoint name, e.g. ``create_batch``.
        :param batch_id: only requests about this batch.
        """
        params: dict[str, Any] = {"since": since}
        if endpoint:
            params["endpoint"] = endpoint
        if batch_id:
            params["batch_id"] = batch_id
        result: list[dict[str, Any]] = self._admin("GET", "/requests", params=params)["requests"]
        return result

    def status_reads(self, batch_id: str, *, since: int = 0) -> list[dict[str, Any]]:
        """Requests that read the batch's status: ``GET /batches/{id}``, and list pages that showed it.

        :param batch_id: the batch.
        :param since: only entries with ``seq`` greater than this.
        """
        reads = self.requests(since=since, endpoint="get_batch", batch_id=batch_id)
        pages = [
            e
            for e in self.requests(since=since, endpoint="list_batches")
            if e.get("status") == 200 and batch_id in (e.get("listed") or [])
        ]
        return sorted(reads + pages, key=lambda e: int(e["seq"]))

    def batches(self, *, lines: bool = True) -> list[dict[str, Any]]:
        """Full state of every batch (``GET /_emulator/batches``).

        :param lines: include the per-line results.
        """
        result: list[dict[str, Any]] = self._admin("GET", "/batches", params={"lines": str(lines).lower()})[
            "batches"
        ]
        return result

    def batch_state(self, batch_id: str) -> dict[str, Any]:
        """Full state of one batch.

        :param batch_id: its id.
        """
        result: dict[str, Any] = self._admin("GET", f"/batches/{batch_id}")
        return result

    def callbacks(self) -> list[dict[str, Any]]:
        """How each ``ds_batch_finish_callback`` went (``GET /_emulator/callbacks``), oldest first."""
        result: list[dict[str, Any]] = self._admin("GET", "/callbacks")["callbacks"]
        return result

    def set_faults(self, faults: dict[str, FaultSpec | dict[str, Any]]) -> dict[str, Any]:
        """Replace the fault table (``PUT /_emulator/faults``).

        :param faults: endpoint name (or ``*``) -> spec.
        """
        body = {k: v.model_dump() if isinstance(v, FaultSpec) else v for k, v in faults.items()}
        result: dict[str, Any] = self._admin("PUT", "/faults", json={"faults": body})
        return result

    def clear_faults(self) -> None:
        """Remove every fault."""
        self.set_faults({})

    def set_config(self, **changes: Any) -> dict[str, Any]:
        """Change runtime settings (``PUT /_emulator/config``).

        :param changes: field -> value, e.g. ``lines_per_second=50``.
        """
        result: dict[str, Any] = self._admin("PUT", "/config", json=changes)
        return result

    def reset(self) -> None:
        """Forget every file, batch and logged request."""
        self._admin("POST", "/reset")


def _free_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


@contextlib.contextmanager
def running_emulator(config: EmulatorConfig | None = None) -> Iterator[EmulatorHandle]:
    """Run the emulator in a background thread on a free port of 127.0.0.1.

    ``config.port`` and ``config.host`` are ignored: tests must not collide on a port.

    :param config: the settings (defaults when omitted).
    """
    config = config or EmulatorConfig()
    app = create_app(config)
    sock = _free_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="qwenbatch-emulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the emulator did not start")
        time.sleep(0.01)
    try:
        yield EmulatorHandle(f"http://127.0.0.1:{port}", config.api_key)
    finally:
        server.should_exit = True
        thread.join(timeout=15.0)
        sock.close()


def config_to_args(config: EmulatorConfig) -> list[str]:
    """The CLI flags that reproduce a config (only the fields that differ from the defaults).

    :param config: the settings.
    """
    default = EmulatorConfig()
    args: list[str] = []
    for name in EmulatorConfig.model_fields:
        value = getattr(config, name)
        if value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "faults":
            for endpoint, spec in value.items():
                args += ["--fault", f"{endpoint}:{spec_to_text(spec)}"]
        elif name == "models":
            args += [flag, ",".join(value)]
        elif isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def spec_to_text(spec: FaultSpec) -> str:
    """Render a fault spec as ``key=value,...`` for ``--fault``.

    :param spec: the spec.
    """
    parts = []
    for key, value in spec.model_dump().items():
        if key == "fail_next":
            if value:
                parts.append(f"fail_next={'+'.join(value)}")
        elif value != FaultSpec.model_fields[key].default:
            parts.append(f"{key}={value}")
    return ",".join(parts)


class EmulatorProcess:
    """The emulator as a subprocess (``python -m airflow_provider_qwenbatch.emulator``).

    Use as a context manager or call :meth:`start` / :meth:`stop`. Everything of the config is
    passed as CLI flags; the port is always ``0`` (a free one) unless ``port`` is given.

    :param config: the settings.
    :param port: a fixed port instead of a free one.
    :param env: extra environment variables.
    :param startup_timeout: seconds to wait for the READY line.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        port: int = 0,
        env: dict[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.port_request = port
        self.env = env
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.handle: EmulatorHandle | None = None
        self.output: list[str] = []

    @property
    def pid(self) -> int | None:
        """The subprocess's PID."""
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        """The command line."""
        # The port always comes from this object, never from config.port.
        cleaned: list[str] = []
        skip = False
        for a in config_to_args(self.config):
            if skip:
                skip = False
                continue
            if a == "--port":
                skip = True
                continue
            cleaned.append(a)
        return [
            sys.executable,
            "-m",
            "airflow_provider_qwenbatch.emulator",
            "--port",
            str(self.port_request),
            *cleaned,
        ]

    def start(self) -> EmulatorHandle:
        """Start it and wait for the READY line."""
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            # Keep draining so a chatty server never blocks on a full pipe.
            for line in stdout:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="qwenbatch-emulator-stdout", daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                line = ""
            if line is None or (line == "" and time.monotonic() >= deadline):
                self.stop()
                raise RuntimeError("the emulator did not start:\n" + "".join(self.output[-50:]))
            if line.startswith(READY_MARKER):
                base_url = line.split()[1]
                root = base_url[: -len(API_PREFIX)]
                self.handle = EmulatorHandle(root, self.config.api_key)
                return self.handle

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it by PID: SIGTERM, then SIGKILL after ``timeout``.

        :param timeout: seconds to wait for a clean exit.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL it by PID (a crash, for restart tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10.0)

    def __enter__(self) -> EmulatorHandle:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
