"""Run every benchmark in turn (``make bench``); each rewrites its own section of BENCHMARKS.md."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "import_cost",
    "api_economy",
    "triggerer_scale",
    "abort_latency",
    "streaming",
    "trigger_kill_many",
    "large_job",
]


def main() -> None:
    extra = sys.argv[1:]
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *extra], check=False).returncode:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
