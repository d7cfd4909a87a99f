"""A migrated Airflow metadata DB for tests, migrated once and cached by Airflow version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
CACHE = ROOT / ".tmp"


def migrated_db(target: Path) -> Path:
    """Put a migrated SQLite metadata DB at ``target``: copy the cached template, or migrate once (~12 s).

    :param target: where the DB file must be.
    """
    import airflow

    template = CACHE / f"airflow-{airflow.__version__}-template.db"
    if not template.exists():
        CACHE.mkdir(exist_ok=True)
        tmp = template.with_suffix(f".{os.getpid()}.tmp")
        env = dict(os.environ, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp}")
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.replace(tmp, template)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return target
