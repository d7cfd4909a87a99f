"""OpenLineage facets of the batch operators: what a batch read, and what its results became.

Imported only from the operators' ``get_openlineage_facets_*`` methods, which the OpenLineage
provider calls after a task ran; nothing here is imported when a DAG file is parsed, and
nothing fails when the OpenLineage provider is not installed (the methods are then never called).

Naming follows the OpenLineage dataset naming spec: a local file is namespace ``file``, name its
absolute path; ``s3://bucket/key`` is namespace ``s3://bucket``, name ``key`` (likewise for the
other object stores); a file held by DashScope is namespace ``dashscope://<api host>``, name
``files/<file id>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import RunFacet

    #: What the operators' ``get_openlineage_facets_on_*`` return.
    Lineage = OperatorLineage[Dataset, RunFacet]

FILE_NAMESPACE = "file"


def dataset_for_location(location: str) -> Dataset:
    """The dataset of a local path or an object-store URI.

    :param location: ``/abs/path``, ``file:///abs/path``, ``s3://bucket/key``, ``gs://...``...
    """
    from openlineage.client.event_v2 import Dataset

    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else location
        return Dataset(namespace=FILE_NAMESPACE, name=os.path.abspath(path))
    return Dataset(namespace=f"{parsed.scheme}://{parsed.netloc}", name=parsed.path.lstrip("/") or "/")


def dataset_for_file_id(file_id: str, base_url: str) -> Dataset:
    """The dataset of a file stored by DashScope (an input upload or a result file).

    An OSS URL given as ``input_file_id`` names an object store location instead.

    :param file_id: the file id (``file-batch-...``), or an ``oss:``/``https://`` input reference.
    :param base_url: the API base URL, whose host names the account's region.
    """
    if file_id.startswith(("http://", "https://")):
        return dataset_for_location(file_id.split("?", 1)[0])  # never the presigned signature
    if file_id.startswith("oss:"):
        # oss:{region}:{bucket}/{path}
        from openlineage.client.event_v2 import Dataset

        _, _, rest = file_id.partition(":")
        _, _, bucket_path = rest.partition(":")
        bucket, _, path = bucket_path.partition("/")
        return Dataset(namespace=f"oss://{bucket}", name=path)
    from openlineage.client.event_v2 import Dataset

    host = urlparse(base_url).netloc or base_url
    return Dataset(namespace=f"dashscope://{host}", name=f"files/{file_id}")


def batch_run_facets(batch_id: str, base_url: str) -> dict[str, RunFacet]:
    """The run facet naming the DashScope batch this task ran (``externalQuery``).

    :param batch_id: the batch id.
    :param base_url: the API base URL.
    """
    from openlineage.client.facet_v2 import external_query_run

    host = urlparse(base_url).netloc or base_url
    return {
        "externalQuery": external_query_run.ExternalQueryRunFacet(
            externalQueryId=batch_id, source=f"dashscope://{host}"
        )
    }


def submit_lineage(
    *,
    base_url: str,
    batch_id: str | None,
    input_path: str | None = None,
    input_file_id: str | None = None,
    result_file_ids: Iterable[str | None] = (),
) -> Lineage:
    """Facets of a submit: the input (path or file) in, the batch's result files out.

    :param base_url: the API base URL.
    :param batch_id: the batch created (or re-attached to); ``None`` when none was.
    :param input_path: the local path or URI the requests were read from.
    :param input_file_id: the uploaded (or given) input file id.
    :param result_file_ids: the batch's output and error file ids, when it has them.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    inputs: list[Dataset] = []
    if input_path:
        inputs.append(dataset_for_location(input_path))
    elif input_file_id:
        inputs.append(dataset_for_file_id(input_file_id, base_url))
    outputs = [dataset_for_file_id(f, base_url) for f in result_file_ids if f]
    return OperatorLineage(
        inputs=inputs,
        outputs=outputs,
        run_facets=batch_run_facets(batch_id, base_url) if batch_id else {},
    )


def download_lineage(
    *, base_url: str, batch_id: str, remote_file_ids: Iterable[str | None], stored: Iterable[str | None]
) -> Lineage:
    """Facets of a download: the batch's result files in, the files at the destination out.

    :param base_url: the API base URL.
    :param batch_id: the batch.
    :param remote_file_ids: the output and error file ids read.
    :param stored: where each was written (local paths or URIs).
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[dataset_for_file_id(f, base_url) for f in remote_file_ids if f],
        outputs=[dataset_for_location(p) for p in stored if p],
        run_facets=batch_run_facets(batch_id, base_url),
    )
