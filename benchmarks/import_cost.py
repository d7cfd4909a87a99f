"""Import cost: what importing our operators and sensors adds on top of ``import airflow.sdk``.

Each sample is a fresh interpreter: time ``import airflow.sdk``, then the modules under test.
Baseline: the OpenAI provider's operators module. The same subprocesses also record every
``httpx.Client``/``AsyncClient`` and Airflow ``Connection`` built during the imports: a DAG
file importing the provider must not open clients nor read Connections at parse time.
"""

from __future__ import annotations

import json
import subprocess

from benchmarks._report import command, median, parser, python, table, write_section

OURS = ["airflow_provider_qwenbatch.operators.batch", "airflow_provider_qwenbatch.sensors.batch"]
BASELINE = ["airflow.providers.openai.operators.openai"]
GOAL_MS = 30.0

# Fresh interpreter: import airflow.sdk (timed), optionally a DAG file's usual imports, then the modules (timed).
TIMED = r"""
import importlib, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
if sys.argv[1] == "dagfile":
    from airflow.sdk import BaseHook, BaseOperator, BaseSensorOperator, dag, task
    import airflow.triggers.base
t2 = time.perf_counter()
for name in sys.argv[2:]:
    importlib.import_module(name)
t3 = time.perf_counter()
print(json.dumps({"sdk": t1 - t0, "added": t3 - t2}))
"""

# Fresh interpreter: record every HTTP client and Connection built while importing the modules,
# then build one client on purpose, to show the recorder sees it (also used by a unit test).
RECORD = r"""
import json, sys, importlib
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
from airflow.sdk import BaseHook, Connection
recorder(Connection)
original_get = BaseHook.get_connection.__func__
def get_connection(cls, conn_id):
    built.append("BaseHook.get_connection(%s)" % conn_id)
    return original_get(cls, conn_id)
BaseHook.get_connection = classmethod(get_connection)
for name in sys.argv[1:]:
    importlib.import_module(name)
at_import = list(built)
# Control: the recorder does see a client being built.
from airflow_provider_qwenbatch.client.sync import BatchClient
BatchClient("sk-control", "http://127.0.0.1:9").close()
print(json.dumps({"at_import": at_import, "after_control": built}))
"""


def sample(modules: list[str], preload: str = "sdk") -> dict[str, float]:
    out = subprocess.run(
        [python(), "-c", TIMED, preload, *modules], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def constructed_at_import(modules: list[str]) -> list[str]:
    """HTTP clients and Connections built while importing ``modules`` in a fresh interpreter."""
    out = subprocess.run(
        [python(), "-c", RECORD, *modules], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["at_import"]  # type: ignore[no-any-return]


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    repeats = 3 if args.quick else 10
    subprocess.run(
        [python(), "-c", "import airflow.sdk, " + ", ".join(OURS + BASELINE)], check=True
    )  # warm .pyc
    runs: dict[tuple[str, str], list[float]] = {}
    sdk_alone: list[float] = []
    for _ in range(repeats):
        sdk_alone.append(sample([])["sdk"])
        for preload in ("sdk", "dagfile"):
            for label, modules in (("ours", OURS), ("baseline", BASELINE)):
                runs.setdefault((label, preload), []).append(sample(modules, preload)["added"])
    ms = {key: median(values) * 1000 for key, values in runs.items()}
    sdk_ms = median(sdk_alone) * 1000
    built_ours = constructed_at_import(OURS)
    built_base = constructed_at_import(BASELINE)

    def ratio(preload: str) -> str:
        return f"{ms[('ours', preload)] / ms[('baseline', preload)]:.2f}x"

    rows = [
        ["`import airflow.sdk` alone", f"{sdk_ms:.0f} ms", "", ""],
        [
            "qwenbatch operators + sensors",
            f"{ms[('ours', 'sdk')]:.0f} ms ({ratio('sdk')})",
            f"{ms[('ours', 'dagfile')]:.0f} ms ({ratio('dagfile')})",
            ", ".join(built_ours) or "none",
        ],
        [
            "openai provider operators (baseline)",
            f"{ms[('baseline', 'sdk')]:.0f} ms",
            f"{ms[('baseline', 'dagfile')]:.0f} ms",
            ", ".join(built_base) or "none",
        ],
    ]
    added = ms[("ours", "sdk")]
    verdict = "met" if added < GOAL_MS else "NOT met"
    body = (
        table(
            [
                "import",
                "added to `import airflow.sdk`",
                "added to a DAG file's usual imports",
                "clients/Connections built",
            ],
            rows,
        )
        + f'\n\nMedians of {repeats} fresh processes each. "A DAG file\'s usual imports" = `from airflow.sdk '
        "import BaseHook, BaseOperator, BaseSensorOperator, dag, task` + `airflow.triggers.base`, which every "
        "DAG using operators pays anyway; the first column also charges us for loading Airflow's own "
        "BaseOperator machinery."
        + f"\n\nGoal: < {GOAL_MS:.0f} ms added: **{verdict}** ({added:.0f} ms). No HTTP client or Connection "
        f"built at import: **{'met' if not built_ours else 'NOT met'}** (also a unit test, "
        "`tests/unit/test_import_cost.py`, without timing)."
    )
    print(body)
    if built_ours:
        print("FAIL: built at import:", built_ours)
    if not args.no_write:
        write_section("import_cost", "Import cost", body, command("import_cost", args.quick))


if __name__ == "__main__":
    main()
