"""Import cost: what importing our operators and sensors adds on top of ``import airflow.sdk``.

Each sample is a fresh interpreter: time ``import airflow.sdk``, then the modules under test.
Baseline: the OpenAI provider's operators module. The same subprocesses also record every
``httpx.Client``/``AsyncClient`` and Airflow ``Connection`` built during the imports: a DAG
file importing the provider must not open clients nor read Connections at parse time.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from benchmarks._report import command, median, parser, python, table, write_section

OURS = ["airflow_provider_qwenbatch.operators.batch", "airflow_provider_qwenbatch.sensors.batch"]
BASELINE = ["airflow.providers.openai.operators.openai"]
GOAL_MS = 30.0

# Runs in a fresh interpreter. Records constructions, then times the imports.
PROBE = r"""
import json, sys, time
import httpx
built = []
def recorder(cls):
    original = cls.__init__
    def init(self, *a, **k):
        built.append(cls.__name__)
        original(self, *a, **k)
    cls.__init__ = init
recorder(httpx.Client)
recorder(httpx.AsyncClient)
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
from airflow.sdk import BaseHook, Connection
recorder(Connection)
original_get = BaseHook.get_connection.__func__
def get_connection(cls, conn_id):
    built.append("BaseHook.get_connection(%s)" % conn_id)
    return original_get(cls, conn_id)
BaseHook.get_connection = classmethod(get_connection)
t2 = time.perf_counter()
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
t3 = time.perf_counter()
print(json.dumps({"sdk": t1 - t0, "added": t3 - t2, "built": built}))
"""


def sample(modules: list[str]) -> dict[str, Any]:
    out = subprocess.run([python(), "-c", PROBE, *modules], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def constructed_at_import(modules: list[str]) -> list[str]:
    """HTTP clients and Connections built while importing ``modules`` in a fresh interpreter."""
    return list(sample(modules)["built"])


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    repeats = 3 if args.quick else 10
    subprocess.run([python(), "-c", "import airflow.sdk, " + ", ".join(OURS + BASELINE)], check=True)  # warm .pyc
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": [], "sdk": []}
    for _ in range(repeats):
        results["sdk"].append(sample([]))
        results["ours"].append(sample(OURS))
        results["baseline"].append(sample(BASELINE))
    sdk_ms = median([r["sdk"] for r in results["sdk"]]) * 1000
    ours_ms = median([r["added"] for r in results["ours"]]) * 1000
    base_ms = median([r["added"] for r in results["baseline"]]) * 1000
    built_ours = sorted({b for r in results["ours"] for b in r["built"]})
    built_base = sorted({b for r in results["baseline"] for b in r["built"]})
    rows = [
        ["`import airflow.sdk` alone", f"{sdk_ms:.0f} ms", "", ""],
        [
            "qwenbatch operators + sensors, added",
            f"{ours_ms:.1f} ms",
            f"{ours_ms / base_ms:.2f}x" if base_ms else "n/a",
            ", ".join(built_ours) or "none",
        ],
        ["openai provider operators (baseline), added", f"{base_ms:.1f} ms", "1.00x", ", ".join(built_base) or "none"],
    ]
    verdict = "met" if ours_ms < GOAL_MS and not built_ours else "NOT met"
    body = (
        table(["import", f"median of {repeats} fresh processes", "vs baseline", "clients/Connections built"], rows)
        + f"\n\nGoal: < {GOAL_MS:.0f} ms added, and no HTTP client or Connection built at import: **{verdict}**."
        + "\nThe no-client check is also a unit test (`tests/unit/test_import_cost.py`), without timing."
    )
    print(body)
    if built_ours:
        print("FAIL: built at import:", built_ours)
    if not args.no_write:
        write_section("import_cost", "Import cost", body, command("import_cost", args.quick))


if __name__ == "__main__":
    main()
