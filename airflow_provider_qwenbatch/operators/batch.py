"""The provider's operators, under the module path the README documents.

Each lives in its own module (:mod:`.submit`, :mod:`.cancel`, :mod:`.download`); this module
keeps ``from airflow_provider_qwenbatch.operators.batch import SubmitBatchOperator`` working.
"""

from __future__ import annotations

from airflow_provider_qwenbatch.operators._base import BATCH_ID_XCOM_KEY
from airflow_provider_qwenbatch.operators.cancel import CancelBatchOperator
from airflow_provider_qwenbatch.operators.download import DownloadBatchResultsOperator
from airflow_provider_qwenbatch.operators.submit import SubmitBatchOperator

__all__ = ["BATCH_ID_XCOM_KEY", "CancelBatchOperator", "DownloadBatchResultsOperator", "SubmitBatchOperator"]
