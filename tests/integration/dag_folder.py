"""Run a DAG written by a test under ``dag.test()``: it must sit in the dags folder, so the test's is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def load_dags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> dict[str, Any]:
    """Write ``source`` as ``<tmp>/dags/<name>.py``, make that folder the dags folder, parse it.

    :param tmp_path: the test's temporary folder.
    :param monkeypatch: undoes the dags folder change after the test.
    :param name: the module name of the DAG file.
    :param source: the DAG file's code.
    """
    from airflow import settings

    from airflow_provider_qwenbatch.compat import dag_bag_class

    DagBag = dag_bag_class()

    folder = tmp_path / "dags"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    # dag.test() syncs the DAG from the dags-folder bundle, which reads settings.DAGS_FOLDER.
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    return dict(bag.dags)
