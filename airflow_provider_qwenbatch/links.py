"""Operator extra link to the batch jobs page of the Qwen Cloud (Model Studio) console."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

CONSOLE_URL_XCOM_KEY = "console_url"


class QwenBatchConsoleLink(BaseOperatorLink):
    """Link "Qwen Batch Console": the console URL pushed to XCom right after the batch was created."""

    name = "Qwen Batch Console"

    @property
    def xcom_key(self) -> str:
        """The XCom key the operators push the URL under (read directly by the Airflow UI)."""
        return CONSOLE_URL_XCOM_KEY

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The console URL of the task instance's batch, or ``""`` before one was created.

        :param operator: the operator.
        :param ti_key: the task instance.
        """
        if getattr(operator, "batch_id", "") is None:
            # Called by the task runner as the task ends, on the operator that ran: it created no
            # batch (it failed before), so there is no URL, and asking for the XCom would only
            # make the API answer 404 and the task log an "XCom not found" error.
            return ""
        from airflow.sdk.execution_time.xcom import XCom

        value: Any = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return str(value) if value else ""
