"""Abort latency: renders the per-scenario figures the system tests write to ``.tmp/system-summary.json``."""

from __future__ import annotations

import json
from typing import Any

from benchmarks._report import ROOT, command, parser, table, write_section

SUMMARY = ROOT / ".tmp" / "system-summary.json"


def render(data: Any) -> str:
    scenarios = data.get("scenarios", data) if isinstance(data, dict) else data
    items = list(scenarios.values()) if isinstance(scenarios, dict) else list(scenarios)
    rows = []
    for s in items:
        lat = s.get("abort_to_cancel") or {}
        extras = {
            k: v
            for k, v in s.items()
            if k not in ("scenario", "name", "tests", "outcome", "abort_to_cancel", "note")
        }
        rows.append(
            [
                s.get("scenario") or s.get("name", "?"),
                s.get("outcome", ""),
                lat.get("n", ""),
                lat.get("median_s", ""),
                lat.get("max_s", ""),
                "; ".join(
                    [*([s["note"]] if s.get("note") else []), *(f"{k}={v}" for k, v in extras.items())]
                ),
            ]
        )
    return table(["scenario", "outcome", "n", "abort -> cancel request, median (s)", "max (s)", "note"], rows)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    if not SUMMARY.exists():
        body = (
            f"No `{SUMMARY.relative_to(ROOT)}` yet: the system tests write it. Produce it with `make test` "
            "(or `.venv/bin/python -m pytest -m system`), then run this again."
        )
    else:
        body = f"From `{SUMMARY.relative_to(ROOT)}` (written by the system tests):\n\n" + render(
            json.loads(SUMMARY.read_text(encoding="utf-8"))
        )
    print(body)
    if not args.no_write:
        write_section(
            "abort_latency", "Abort latency (system tests)", body, command("abort_latency", args.quick)
        )


if __name__ == "__main__":
    main()
