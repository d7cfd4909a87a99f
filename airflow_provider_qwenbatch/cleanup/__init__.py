"""Every way a failed or aborted DAG run's batches get cancelled, in one place.

Inside a task (not here: each lives with the code that holds the batch):

- the submit operator's and the sensor's ``on_kill`` (task or run marked failed, ``execution_timeout``);
- the trigger's ``on_kill`` / cancellation handling (deferred task or run marked failed);
- the operator's or trigger's own ``timeout``.

After the fact, for a whole run (this package), all through :func:`.run.cancel_run_batches`,
which finds the run's batches by their tag:

- :mod:`.callbacks`: ``cancel_batches_on_failure``, a DAG or task ``on_failure_callback``
  (also importable as ``airflow_provider_qwenbatch.callbacks``);
- :mod:`.listener`: ``on_dag_run_failed`` in the api-server or scheduler, for runs marked
  failed while no task is alive (no DAG callback runs then); it acts only for runs that
  used the provider (:mod:`.usage`);
- :mod:`.plugins`: the Airflow plugins that register the listener.

``cancel_run_batches`` is loaded on first use: the listener plugin imports this package in
every Airflow process, which should not pay for the HTTP client until a run fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_qwenbatch.cleanup.run import CLEANUP_CANCEL_BUDGET, cancel_run_batches

__all__ = ["CLEANUP_CANCEL_BUDGET", "cancel_run_batches"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from airflow_provider_qwenbatch.cleanup import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
