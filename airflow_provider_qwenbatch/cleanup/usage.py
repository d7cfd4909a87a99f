"""Whether a DAG run used the provider: the listener's local check before any API call.

The listener fires for every failed run of every DAG in the deployment. Finding a run's
batches costs a list request (from the account's 100/min list quota) and needs the
Connection, so it is done only when the metadata DB shows the run may have created a batch:

- an XCom ``batch_id`` of the run: the submit operator pushes it as soon as its batch exists
  (``operators._base.BATCH_ID_XCOM_KEY``; subclasses of the operator push it too);
- or a task instance of the run whose operator is one the provider's batch-creating classes
  that has started: it covers the moment between the create call and that XCom push (a task
  SIGKILLed there runs no ``on_kill``).

The sensor, the download and the cancel operators create no batch, so they are not evidence:
a sensor watches a batch a submit task of the same run created (and pushed), or one from
elsewhere, which is not tagged to this run and so not the listener's to cancel anyway.
"""

from __future__ import annotations

# The names Airflow stores in ``task_instance.operator`` (the class name) for the operators
# that create batches; a test keeps this equal to the classes' real names.
BATCH_CREATING_OPERATORS = frozenset({"SubmitBatchOperator"})


def run_batch_evidence(dag_id: str, run_id: str) -> str | None:
    """Say why the run may have created batches, or ``None`` when it cannot have.

    Reads the metadata DB through Airflow's ORM in a session of its own (call it off the
    caller's thread: the caller's session must not be committed by it).

    :param dag_id: the DAG id.
    :param run_id: the DAG run id.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_provider_qwenbatch.operators._base import BATCH_ID_XCOM_KEY

    with create_session() as session:
        # (dag_run_id, ...) leads the xcom primary key, so this is an index lookup.
        run_pk = select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id).scalar_subquery()
        pushed = session.scalar(
            select(XComModel.task_id)
            .where(XComModel.dag_run_id == run_pk, XComModel.key == BATCH_ID_XCOM_KEY)
            .limit(1)
        )
        if pushed is not None:
            return f"task {pushed} pushed XCom {BATCH_ID_XCOM_KEY!r}"
        started = session.execute(
            select(TaskInstance.task_id, TaskInstance.operator)
            .where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.operator.in_(sorted(BATCH_CREATING_OPERATORS)),
                TaskInstance.start_date.is_not(None),
            )
            .limit(1)
        ).first()
        if started is not None:
            return f"task {started[0]} ({started[1]}) started"
    return None
