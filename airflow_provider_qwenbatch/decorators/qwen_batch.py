"""``@task.qwen_batch``: a TaskFlow function returns or yields request dicts; the task runs them as a batch job.

The function's requests are streamed into the submit operator's validation (one at a time, to
a temporary JSONL file: never all in memory), then the task submits, waits (in the worker or
deferred, ``[operators] default_deferrable``), optionally downloads the results to
``destination`` and returns the summary. Everything else (re-attach on retry, cancel on kill
or timeout, XCom keys, links) is :class:`SubmitBatchOperator`'s own.

Prompts are never Jinja-rendered: neither the function's return value nor its arguments
(``op_args``/``op_kwargs`` are not template fields here, unlike a plain ``@task``); XComArgs
among the arguments are still resolved, as TaskFlow does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory

from airflow_provider_qwenbatch.exceptions import BatchInputError
from airflow_provider_qwenbatch.operators.submit import SubmitBatchOperator

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator

    from airflow_provider_qwenbatch.client.sync import BatchClient


# Input arguments of SubmitBatchOperator that the function's return value replaces.
_INPUT_ARGUMENTS = ("requests", "input_path", "input_file_id", "input_conn_id")


class _QwenBatchDecoratedOperator(DecoratedOperator, SubmitBatchOperator):
    """Submit the request dicts a Python function returns or yields, wait, optionally download.

    :param python_callable: the decorated function; it returns or yields request dicts
        ``{custom_id, body}`` (``method``/``url`` default to POST and the endpoint).
    :param op_args: its positional arguments (XComArgs resolved, never Jinja-rendered).
    :param op_kwargs: its keyword arguments (XComArgs resolved, never Jinja-rendered).
    :param destination: after a successful job, download its results to this folder (local path
        or ObjectStoragePath URI, templated), as :class:`DownloadBatchResultsOperator` does; the
        returned summary then carries them under ``"results"``.
    :param destination_conn_id: Airflow Connection of the destination's object store, if it needs one.
    :param kwargs: every other :class:`SubmitBatchOperator` and BaseOperator argument.
    """

    # Not op_args/op_kwargs (a plain @task templates them): a prompt passed to the function as an
    # argument must reach the server as written, "{{ ds }}" included.
    template_fields: Sequence[str] = (*SubmitBatchOperator.template_fields, "destination")
    template_fields_renderers: ClassVar[dict[str, str]] = {}
    custom_operator_name: str = "@task.qwen_batch"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        destination: str | None = None,
        destination_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        task_id = kwargs.get("task_id", getattr(python_callable, "__name__", "?"))
        given = [name for name in _INPUT_ARGUMENTS if kwargs.get(name) is not None]
        if given:
            raise TypeError(
                f"{task_id}: @task.qwen_batch takes its requests from the function's return value; "
                f"{', '.join(given)} cannot be given (use SubmitBatchOperator for a file or an uploaded file id)"
            )
        if inspect.iscoroutinefunction(python_callable) or inspect.isasyncgenfunction(python_callable):
            raise TypeError(
                f"{task_id}: @task.qwen_batch needs a plain function or generator, not an async one"
            )
        if destination is not None and not kwargs.get("wait_for_completion", True):
            raise ValueError(
                f"{task_id}: destination needs wait_for_completion=True: results exist only once the job has ended"
            )
        # A placeholder for SubmitBatchOperator's "exactly one input" rule: the requests come
        # from the function when the task runs (_input_requests).
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            requests=(),
            **kwargs,
        )
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        from airflow.sdk import XComArg

        # Airflow links the XComArgs of template fields only, and op_args/op_kwargs are not.
        if not getattr(self, "_BaseOperator__from_mapped", False):
            XComArg.apply_upstream_relationship(self, self.op_args)
            XComArg.apply_upstream_relationship(self, self.op_kwargs)

    # ---- the input: the function's requests ------------------------------------------------

    def _input_requests(self, context: Context) -> Iterable[Mapping[str, Any]]:
        """Call the function as TaskFlow would and return its requests, unread (a generator stays lazy).

        Called again when a deferred task resumes and its input is re-read: the function must
        give the same requests each time.

        :param context: the task's context (what the function's context parameters receive).
        """
        from airflow_provider_qwenbatch.compat import determine_kwargs

        op_args = [_resolve_xcom_args(a, context) for a in self.op_args]
        op_kwargs = {k: _resolve_xcom_args(v, context) for k, v in self.op_kwargs.items()}
        # TaskFlow merges op_kwargs into the context and passes the keys the function names.
        kwargs = determine_kwargs(self.python_callable, op_args, {**context, **op_kwargs})
        name = getattr(self.python_callable, "__name__", "the function")
        self.log.info("Reading the requests %s() returns", name)
        result = self.python_callable(*op_args, **kwargs)
        if result is None or isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
            what = "None" if result is None else type(result).__name__
            hint = (
                " (one request? return a list of them, or yield each)" if isinstance(result, Mapping) else ""
            )
            raise BatchInputError(
                f"{self.task_id}: {name}() must return or yield request dicts, got {what}{hint}"
            )
        return result

    def _requests_source(self) -> str:
        # Errors name the function, not the operator's requests argument the user never wrote.
        verb = "yielded" if inspect.isgeneratorfunction(self.python_callable) else "returned"
        return f"requests {verb} by {getattr(self.python_callable, '__name__', 'the function')}()"

    # ---- the optional download --------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        """Read the function's requests, submit, wait in the worker or defer; download when done here.

        :param context: the task's context.
        """
        return self._with_results(super().execute(context))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after a deferral like :class:`SubmitBatchOperator`; download once the job is done.

        Every resume method of the submit operator comes through here (a trigger event, a
        timeout), so the download does not depend on which one ended the job.

        :param next_method: the method the task resumes in.
        :param next_kwargs: its arguments (the trigger event).
        :param context: the task's context.
        """
        return self._with_results(super().resume_execution(next_method, next_kwargs, context))

    def _with_results(self, summary: Any) -> Any:
        # Reached only with a job that succeeded: the submit operator raises for one that did not.
        if self.destination is None or not isinstance(summary, dict):
            return summary
        from airflow_provider_qwenbatch.exceptions import as_airflow_errors

        client = self._client()
        with client, as_airflow_errors():
            if summary.get("kind") == "sharded":
                results = self._download_job(client, summary)
            else:
                from airflow_provider_qwenbatch.operators.download import download_batch_results

                batch_id = summary["batch_id"]
                self.log.info("Downloading the results of batch %s to %s", batch_id, self.destination)
                results, _ = download_batch_results(
                    client,
                    client.retrieve_batch(batch_id),
                    self.destination,
                    destination_conn_id=self.destination_conn_id,
                    logger=self.log,
                )
        return {**summary, "results": results}

    def _download_job(self, client: BatchClient, job: dict[str, Any]) -> dict[str, Any]:
        """All shards' results merged into one ``output.jsonl`` and ``errors.jsonl`` at the destination."""
        from airflow_provider_qwenbatch.job_results import download_job_results

        self.log.info("Downloading the results of %d batches to %s", len(job["batch_ids"]), self.destination)
        return download_job_results(
            client,
            job,
            self.destination or "",
            destination_conn_id=self.destination_conn_id,
            logger=self.log,
        )


def _resolve_xcom_args(value: Any, context: Context) -> Any:
    """``value`` with each XComArg in it (nested in lists, tuples, sets, dicts) resolved; strings as given.

    What template rendering does to XComArgs, without rendering anything else.
    """
    from airflow.sdk import XComArg

    if isinstance(value, XComArg):
        return value.resolve(context)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple takes its fields one by one
        return type(value)(*(_resolve_xcom_args(v, context) for v in value))
    if isinstance(value, (list, tuple, set)):
        return type(value)(_resolve_xcom_args(v, context) for v in value)
    if isinstance(value, dict):
        return {k: _resolve_xcom_args(v, context) for k, v in value.items()}
    return value


def qwen_batch_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.qwen_batch``: run the request dicts a function returns or yields as a Qwen batch job.

    Registered with Airflow in the provider info (``task-decorators``), so ``from airflow.sdk
    import task`` gives ``@task.qwen_batch``::

        @task.qwen_batch(endpoint="/v1/chat/completions", destination="s3://bucket/results")
        def label(rows: list[dict]):
            for row in rows:
                yield {"custom_id": row["id"], "body": {"model": "qwen-plus", "messages": [...]}}

    :param python_callable: the function (bare ``@task.qwen_batch``).
    :param multiple_outputs: push the summary's keys as separate XComs (default False: the
        task's return value is the summary, not the function's).
    :param kwargs: :class:`SubmitBatchOperator` arguments (``endpoint``, ``conn_id``,
        ``deferrable``, ``timeout``...), ``destination``/``destination_conn_id``, and BaseOperator's.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=bool(multiple_outputs),
        decorated_operator_class=_QwenBatchDecoratedOperator,
        **kwargs,
    )
