"""A real Airflow stack (api-server, scheduler, dag-processor, triggerer) for the system tests.

Every process is started with ``start_new_session=True`` (its own process group) and stopped
by that group id only: SIGTERM, then SIGKILL after a grace period. Nothing is ever killed by
name. The stack has its own AIRFLOW_HOME in a temporary folder; the metadata DB is a copy of a
template migrated once per Airflow version and cached under the repository's ``.tmp/``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".tmp"
DAGS = Path(__file__).resolve().parent / "dags"
T = TypeVar("T")

# Every process any stack of this session started; atexit stops those still alive.
_LIVE: set[Component] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.25,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns something truthy, or fail after ``timeout`` seconds.

    :param what: what is awaited (for the failure message).
    :param probe: returns the awaited value, or None/False.
    :param timeout: seconds.
    :param interval: seconds between calls.
    :param on_timeout: extra details for the failure message.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
                + (f"\n{extra}" if extra else "")
            )
        time.sleep(interval)


def migrated_db(target: Path, env: dict[str, str]) -> None:
    """Copy the cached migrated SQLite template to ``target``, migrating it once (~12 s) if needed.

    :param target: the DB file to create.
    :param env: the stack's environment (its SQL_ALCHEMY_CONN is replaced for the migration).
    """
    import airflow

    template = CACHE / f"airflow-{airflow.__version__}-template.db"
    if not template.exists():
        CACHE.mkdir(exist_ok=True)
        tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        migrate_env = dict(env, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp}")
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=migrate_env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        os.replace(tmp, template)
    shutil.copyfile(template, target)


class Component:
    """One long-running Airflow process in its own process group.

    :param name: e.g. ``scheduler``.
    :param args: the ``airflow`` sub-command and its arguments.
    :param env: the environment.
    :param log_dir: where ``<name>.log`` (stdout and stderr) goes.
    """

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        """Stdout and stderr of every start of this process."""
        return self.log_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """PID (also the process group id) of the current start."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """Whether the process this object started is still running."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start it in a new session (own process group)."""
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "airflow", *self.args],
                env=self.env,
                cwd=self.env["AIRFLOW_HOME"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _LIVE.add(self)

    def _group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group this object created, wait, then SIGKILL what is left.

        :param grace: seconds between SIGTERM and SIGKILL.
        """
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True: the leader's PID is the group id
        # Task processes may start their own process groups: remember every descendant first.
        descendants = _descendants(proc.pid)
        try:
            if proc.poll() is None or self._group_alive(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline:
                    if proc.poll() is not None and not self._group_alive(pgid):
                        break
                    time.sleep(0.1)
                if self._group_alive(pgid):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            for child in descendants:
                with contextlib.suppress(psutil.Error):
                    if child.is_running():
                        child.kill()  # psutil checks the PID still is that process (create time)
        finally:
            _LIVE.discard(self)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _stop_leftovers() -> None:
    for component in list(_LIVE):
        with contextlib.suppress(Exception):
            component.stop(grace=5.0)


atexit.register(_stop_leftovers)


class AirflowStack:
    """api-server, scheduler, dag-processor and triggerer on a temporary AIRFLOW_HOME.

    :param home: the AIRFLOW_HOME (created).
    :param conn_uri_json: ``AIRFLOW_CONN_QWEN_BATCH_DEFAULT`` (a JSON Connection).
    :param extra_env: further environment variables for every process.
    """

    COMPONENTS: tuple[tuple[str, list[str]], ...] = (
        ("api-server", ["api-server"]),
        ("scheduler", ["scheduler"]),
        ("dag-processor", ["dag-processor"]),
        ("triggerer", ["triggerer"]),
    )

    def __init__(self, home: Path, conn_uri_json: str, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.component_logs = home / "component-logs"
        self.component_logs.mkdir(parents=True, exist_ok=True)
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.pop("DASHSCOPE_API_KEY", None)
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": uuid.uuid4().hex,
                "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW_CONN_QWEN_BATCH_DEFAULT": conn_uri_json,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra_env or {})
        self.env = env
        self.components = {
            name: Component(name, args, dict(env), self.component_logs) for name, args in self.COMPONENTS
        }
        self.api: AirflowAPI | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def prepare(self) -> float:
        """Write an (empty) airflow.cfg and the migrated DB; returns the seconds it took."""
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        # An existing airflow.cfg stops four processes racing to write a default one.
        (self.home / "airflow.cfg").write_text("[core]\n")
        migrated_db(self.home / "airflow.db", self.env)
        return time.monotonic() - started

    def start(self, dag_ids: Iterable[str], timeout: float = 240.0) -> AirflowAPI:
        """Start the four processes and wait until healthy and every DAG is parsed.

        :param dag_ids: the DAGs that must be known before tests start.
        :param timeout: seconds for all of it.
        """
        for component in self.components.values():
            component.start()
        deadline = time.monotonic() + timeout
        api = AirflowAPI(self.base_url)
        self.api = api

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        def healthy() -> bool:
            self.check_alive()
            data = api.health()
            return all(
                (data.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            )

        poll("the api-server to answer", lambda: self.check_alive() or api.ping(), left(), 0.5)
        api.login()
        poll("every component to be healthy", healthy, left(), 1.0, on_timeout=lambda: str(api.health()))
        for dag_id in dag_ids:
            poll(
                f"DAG {dag_id} to be parsed",
                lambda d=dag_id: self.check_alive() or api.dag_known(d),  # type: ignore[misc]
                left(),
                1.0,
                on_timeout=lambda: f"import errors: {api.import_errors()}",
            )
        # The first call into the execution API is slow; warm it before anything is timed.
        api.client.get("/execution/health")
        return api

    def check_alive(self) -> None:
        """Fail at once if a component died (instead of waiting for a timeout)."""
        for component in self.components.values():
            if component.proc is not None and component.proc.poll() is not None:
                raise AssertionError(
                    f"{component.name} exited with {component.proc.returncode}; see {component.log_path}"
                )

    def restart(self, name: str, extra_env: dict[str, str] | None = None) -> float:
        """Stop one component (SIGTERM to its group) and start it again; returns the seconds it was down.

        :param name: the component.
        :param extra_env: environment changes for the new start.
        """
        component = self.components[name]
        stopped = time.monotonic()
        component.stop()
        if extra_env:
            component.env.update(extra_env)
        component.start()
        return time.monotonic() - stopped

    def add_component(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Component:
        """Start one more process on this stack (e.g. a second triggerer); :meth:`stop` stops it too.

        :param name: its name (and log file name).
        :param args: the ``airflow`` sub-command and its arguments.
        :param extra_env: environment changes for it only.
        """
        component = Component(name, args, dict(self.env, **(extra_env or {})), self.component_logs)
        self.components[name] = component
        component.start()
        return component

    def remove_component(self, name: str) -> None:
        """Stop a process added with :meth:`add_component` and forget it.

        :param name: its name.
        """
        self.components.pop(name).stop()

    def stop(self) -> None:
        """Stop every component this stack started (scheduler first: no new task starts)."""
        base = ("scheduler", "triggerer", "dag-processor", "api-server")
        for name in [*base, *(n for n in self.components if n not in base)]:
            self.components[name].stop()
        if self.api is not None:
            self.api.client.close()

    def keep_logs(self, destination: Path) -> Path:
        """Copy component output and AIRFLOW_HOME/logs to ``destination``.

        :param destination: a new folder.
        """
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.component_logs, destination / "components", dirs_exist_ok=True)
        if (self.home / "logs").exists():
            shutil.copytree(self.home / "logs", destination / "airflow-logs", dirs_exist_ok=True)
        return destination

    # ---- task logs -------------------------------------------------------------------------

    def task_log_text(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        """Every log file of one task instance (all tries, worker and triggerer parts), concatenated.

        :param dag_id: the DAG.
        :param run_id: the run.
        :param task_id: the task.
        :param map_index: the map index.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        if not folder.exists():
            return ""
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(folder.glob("attempt=*")) if p.is_file()
        )


class AirflowAPI:
    """The bits of Airflow's REST API the tests use (token from the simple auth manager).

    :param base_url: ``http://127.0.0.1:PORT``.
    """

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30.0)

    def ping(self) -> bool:
        """Whether the api-server answers its health route."""
        return self.client.get("/api/v2/monitor/health").status_code == 200

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health``."""
        result: dict[str, Any] = self.client.get("/api/v2/monitor/health").json()
        return result

    def login(self) -> None:
        """Get a token: with ``simple_auth_manager_all_admins`` a ``GET /auth/token`` needs no credentials."""
        response = self.client.get("/auth/token")
        response.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _ok(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise AssertionError(
                f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text[:1000]}"
            )
        return response.json()

    def dag_known(self, dag_id: str) -> bool:
        """Whether the DAG was parsed (and is not paused)."""
        response = self.client.get(f"/api/v2/dags/{dag_id}")
        return response.status_code == 200 and not response.json().get("is_paused")

    def import_errors(self) -> list[Any]:
        """DAG files that failed to import."""
        data = self._ok(self.client.get("/api/v2/importErrors"))
        return list(data.get("import_errors", []))

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> str:
        """Create a DAG run.

        :param dag_id: the DAG.
        :param run_id: the run id to use.
        :param conf: the run's conf.
        """
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        data = self._ok(self.client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body))
        return str(data["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """One DAG run."""
        result: dict[str, Any] = self._ok(self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))
        return result

    def mark_run_failed(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """``PATCH`` the run to ``failed`` (what the UI's "Mark run as failed" does)."""
        result: dict[str, Any] = self._ok(
            self.client.patch(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", json={"state": "failed"})
        )
        return result

    def mark_task_failed(self, dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> Any:
        """``PATCH`` one task instance to ``failed``."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        if map_index is not None and map_index >= 0:
            path += f"/{map_index}"
        return self._ok(self.client.patch(path, json={"new_state": "failed"}))

    def alive_job_ids(self, job_type: str) -> set[int]:
        """Ids of the jobs of one type that heartbeat (e.g. every running triggerer's).

        :param job_type: e.g. ``TriggererJob``.
        """
        data = self._ok(
            self.client.get("/api/v2/jobs", params={"job_type": job_type, "is_alive": True, "limit": 100})
        )
        return {int(job["id"]) for job in data["jobs"]}

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of a run (mapped ones one by one)."""
        data = self._ok(
            self.client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        )
        return list(data["task_instances"])

    def task_instance(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> dict[str, Any] | None:
        """One task instance, or None."""
        for ti in self.task_instances(dag_id, run_id):
            if ti["task_id"] == task_id and ti.get("map_index", -1) == map_index:
                return ti
        return None

    def wait_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        timeout: float,
        map_index: int = -1,
    ) -> dict[str, Any]:
        """Poll until the task instance is in one of ``states``.

        :param dag_id: the DAG.
        :param run_id: the run.
        :param task_id: the task.
        :param states: acceptable states.
        :param timeout: seconds.
        :param map_index: the map index.
        """
        wanted = set(states)

        def probe() -> dict[str, Any] | None:
            ti = self.task_instance(dag_id, run_id, task_id, map_index)
            return ti if ti is not None and ti.get("state") in wanted else None

        return poll(
            f"{dag_id}/{run_id}/{task_id}[{map_index}] to be {sorted(wanted)}",
            probe,
            timeout,
            0.5,
            on_timeout=lambda: json.dumps(
                [
                    (t["task_id"], t.get("map_index"), t.get("state"))
                    for t in self.task_instances(dag_id, run_id)
                ]
            ),
        )

    def wait_run_state(
        self, dag_id: str, run_id: str, states: Iterable[str], timeout: float
    ) -> dict[str, Any]:
        """Poll until the DAG run is in one of ``states``."""
        wanted = set(states)

        def probe() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            return run if run.get("state") in wanted else None

        return poll(f"run {dag_id}/{run_id} to be {sorted(wanted)}", probe, timeout, 0.5)
