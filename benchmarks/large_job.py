"""Large job: validate + split a 2,000,000-line (~2 GB) input, upload shards, merge 2,000,000 results.

Each measured step runs in its own fresh subprocess (``--worker``), so its RSS growth (peak
RSS sampled every 10 ms, minus the RSS just before the step) is not polluted by the others.
Throughput is compared with a bare ``for line in f: json.loads(line)`` pass over the SAME file,
measured in the same run, in its own subprocess too.

- validate + split: :func:`~airflow_provider_qwenbatch.client.shards.split_jsonl_file` (every
  rule of the validator, the compact id table, shard files written and hashed);
- upload: the shards to the emulator (a separate process on 127.0.0.1) with
  ``BatchClient.upload_file``; all of them (``--upload-shards N``: only the first N; the
  Python emulator writes every byte it receives to disk on the same 2 cores);
- merge: ``merge_results`` of one output file per shard (the emulator's result-line shape),
  streaming (``order="results"``) and with the on-disk index (``order="input"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# psutil ships no types and types-psutil is not in the lock: it is untyped (Any) here.
import psutil  # type: ignore[import-untyped]

from benchmarks._common import API_KEY
from benchmarks._report import command, parser, table, write_section
from benchmarks.streaming import Sampler

GOAL_RSS_MB = 128.0
GOAL_SPLIT = 0.6
GOAL_MERGE = 0.8
MB = 1_000_000
LINE_BYTES = 1000


def write_input(path: Path, lines: int) -> int:
    """``lines`` chat requests of about LINE_BYTES bytes each."""
    head = '{"custom_id":"req-%08d","method":"POST","url":"/v1/chat/completions","body":{"model":"qwen-flash","messages":[{"role":"user","content":"'
    tail = '"}],"max_completion_tokens":64,"enable_thinking":false}}\n'
    pad = LINE_BYTES - len(head % 0) - len(tail)
    with path.open("w", encoding="utf-8", buffering=1 << 20) as fh:
        for i in range(lines):
            fh.write(head % i + f"q{i} ".ljust(pad, "x") + tail)
    return path.stat().st_size


def write_results(folder: Path, shards: int, per_shard: int) -> list[str]:
    """One output file per shard in the emulator's shape (answer of ``answer_line``)."""
    from airflow_provider_qwenbatch.emulator.answers import answer_line

    body = {"model": "qwen-flash", "messages": [{"role": "user", "content": "hi"}]}
    template = json.dumps(
        answer_line(
            custom_id="CID",
            body=body,
            endpoint="/v1/chat/completions",
            outcome="ok",
            seed=1,
            now=0,
            embedding_dimensions=8,
        )
    )
    paths = []
    n = 0
    for s in range(shards):
        path = folder / f"output-{s:05d}.jsonl"
        with path.open("w", encoding="utf-8", buffering=1 << 20) as fh:
            for _ in range(per_shard):
                fh.write(template.replace('"CID"', f'"req-{n:08d}"', 1) + "\n")
                n += 1
        paths.append(str(path))
    return paths


# ---- workers (each in its own process) -------------------------------------------------------


def worker(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    if mode == "bare":

        def run() -> dict[str, Any]:
            n = 0
            for path in args["paths"]:
                with open(path, "rb") as fh:
                    for line in fh:
                        json.loads(line)
                        n += 1
            return {"lines": n}

    elif mode == "split":
        from airflow_provider_qwenbatch.client.shards import split_jsonl_file

        def run() -> dict[str, Any]:
            plan = split_jsonl_file(args["path"], "/v1/chat/completions", folder=args["folder"])
            return {"lines": plan.total_lines, "shards": [s.path for s in plan.shards]}

    elif mode == "upload":
        from airflow_provider_qwenbatch.client.sync import BatchClient

        client = BatchClient(args["api_key"], args["base_url"])
        client.list_files(limit=1)

        def run() -> dict[str, Any]:
            sent = 0
            for path in args["paths"]:
                client.upload_file(path)
                sent += os.path.getsize(path)
            return {"bytes": sent}

    else:  # merge-results / merge-input
        from airflow_provider_qwenbatch.client.merge import ResultFiles, merge_results

        def run() -> dict[str, Any]:
            files = [ResultFiles(i + 1, p) for i, p in enumerate(args["paths"])]
            order = "input" if mode == "merge-input" else "results"
            s = merge_results(
                files,
                Path(args["folder"]) / "output.jsonl",
                Path(args["folder"]) / "errors.jsonl",
                order=order,  # type: ignore[arg-type]
                inputs=args.get("inputs", []),
                work_dir=args["folder"],
            )
            return {"lines": s.total.lines, "succeeded": s.total.succeeded}

    before = psutil.Process().memory_info().rss
    with Sampler() as sampler:
        t0, cpu0 = time.perf_counter(), time.process_time()
        extra = run()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = max(sampler.peak, psutil.Process().memory_info().rss)
    return {"seconds": elapsed, "cpu": cpu, "rss_growth": peak - before, **extra}


def run_worker(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_job", "--worker", mode, "--args", json.dumps(args)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--worker", default="")
    p.add_argument("--args", default="{}")
    p.add_argument("--lines", type=int, default=None)
    p.add_argument("--upload-shards", type=int, default=None, help="upload only the first N shards")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.args))))
        return
    lines = args.lines or (200_000 if args.quick else 2_000_000)
    load_before = _load()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="qb-large-", dir=os.environ.get("QB_BENCH_TMP")) as tmpdir:
        tmp = Path(tmpdir)
        src = tmp / "input.jsonl"
        size = write_input(src, lines)
        log(f"input: {lines} lines, {size / MB:.0f} MB")
        bare = run_worker("bare", {"paths": [str(src)]})
        log(f"bare json.loads pass: {bare['seconds']:.1f} s")
        (tmp / "shards").mkdir()
        split = run_worker("split", {"path": str(src), "folder": str(tmp / "shards")})
        log(f"validate+split: {split['seconds']:.1f} s, {len(split['shards'])} shards")
        shards: list[str] = split["shards"]

        from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
        from airflow_provider_qwenbatch.emulator.server import EmulatorProcess

        subset = shards if args.upload_shards is None else shards[: args.upload_shards]
        config = EmulatorConfig(port=0, api_key=API_KEY, state_dir=str(tmp / "emulator"))
        with EmulatorProcess(config) as handle:
            upload = run_worker(
                "upload", {"paths": subset, "api_key": handle.api_key, "base_url": handle.base_url}
            )
        log(f"upload of {len(subset)} shards: {upload['seconds']:.1f} s")
        src.unlink()  # disk: the results are written next

        per_shard = max(1, lines // max(1, len(shards)))
        results = write_results(tmp, len(shards), per_shard)
        result_bytes = sum(os.path.getsize(p) for p in results)
        log(f"results: {per_shard * len(shards)} lines, {result_bytes / MB:.0f} MB")
        bare_results = run_worker("bare", {"paths": results})
        (tmp / "m1").mkdir()
        (tmp / "m2").mkdir()
        merge = run_worker("merge-results", {"paths": results, "folder": str(tmp / "m1")})
        log(f"merge (streaming): {merge['seconds']:.1f} s")
        merge_in = run_worker("merge-input", {"paths": results, "folder": str(tmp / "m2"), "inputs": shards})
        log(f"merge (input order): {merge_in['seconds']:.1f} s")

    def mbps(nbytes: float, seconds: float) -> str:
        return f"{nbytes / MB / seconds:.0f}"

    ratio_split = bare["seconds"] / split["seconds"]
    ratio_merge = bare_results["seconds"] / merge["seconds"]
    # The same ratios in CPU time: what the load of other processes on the machine changes less.
    cpu_split = bare["cpu"] / split["cpu"]
    cpu_merge = bare_results["cpu"] / merge["cpu"]
    ratio_merge_in = bare_results["seconds"] / merge_in["seconds"]
    rows = [
        [
            "bare json.loads, input",
            f"{bare['seconds']:.1f}",
            f"{bare['cpu']:.1f}",
            mbps(size, bare["seconds"]),
            f"{bare['rss_growth'] / MB:.0f}",
            "1.00",
            "",
        ],
        [
            "validate + split",
            f"{split['seconds']:.1f}",
            f"{split['cpu']:.1f}",
            mbps(size, split["seconds"]),
            f"{split['rss_growth'] / MB:.0f}",
            f"{ratio_split:.2f}",
            f"{len(shards)} shards",
        ],
        [
            f"upload ({len(subset)} of {len(shards)} shards)",
            f"{upload['seconds']:.1f}",
            f"{upload['cpu']:.1f}",
            mbps(upload["bytes"], upload["seconds"]),
            f"{upload['rss_growth'] / MB:.0f}",
            "",
            f"{upload['bytes'] / MB:.0f} MB to the emulator",
        ],
        [
            "bare json.loads, results",
            f"{bare_results['seconds']:.1f}",
            f"{bare_results['cpu']:.1f}",
            mbps(result_bytes, bare_results["seconds"]),
            f"{bare_results['rss_growth'] / MB:.0f}",
            "1.00",
            "",
        ],
        [
            "merge, streaming",
            f"{merge['seconds']:.1f}",
            f"{merge['cpu']:.1f}",
            mbps(result_bytes, merge["seconds"]),
            f"{merge['rss_growth'] / MB:.0f}",
            f"{ratio_merge:.2f}",
            "",
        ],
        [
            "merge, input order (SQLite index)",
            f"{merge_in['seconds']:.1f}",
            f"{merge_in['cpu']:.1f}",
            mbps(result_bytes, merge_in["seconds"]),
            f"{merge_in['rss_growth'] / MB:.0f}",
            f"{ratio_merge_in:.2f}",
            "no goal set",
        ],
    ]
    worst_rss = (
        max(split["rss_growth"], merge["rss_growth"], merge_in["rss_growth"], upload["rss_growth"]) / MB
    )

    def met(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    body = (
        f"Input: {lines:,} chat requests, {size / MB:.0f} MB; results: {per_shard * len(shards):,} lines, "
        f"{result_bytes / MB:.0f} MB (one output file per shard). Each step in its own subprocess; "
        "RSS growth = peak RSS (sampled every 10 ms) minus RSS before the step. Ratio = bare "
        "`json.loads` time / step time over the same file (higher is better), wall-clock; CPU s = the "
        "step's process CPU time (all its threads), which the other engineers' load on the shared "
        f"machine changes less (load average before / after the run: {load_before} / {_load()}).\n\n"
        + table(["step", "seconds", "CPU s", "MB/s", "RSS growth (MB)", "ratio to bare", "note"], rows)
        + f"\n\nGoals: RSS growth < {GOAL_RSS_MB:.0f} MB: {met(worst_rss < GOAL_RSS_MB)} ({worst_rss:.0f} MB worst); "
        f"validate+split >= {GOAL_SPLIT}: {met(ratio_split >= GOAL_SPLIT)} ({ratio_split:.2f}); "
        f"merge >= {GOAL_MERGE}: {met(ratio_merge >= GOAL_MERGE)} ({ratio_merge:.2f}). "
        f"In CPU time: validate+split {cpu_split:.2f}, merge {cpu_merge:.2f} (the split's CPU time "
        "includes the thread that writes and hashes its shards). "
        + (
            f"Upload measured on {len(subset)} of {len(shards)} shards (the Python emulator on the same 2 cores)."
            if len(subset) < len(shards)
            else f"Upload: all {len(shards)} shards to the emulator (its own process, same 2 cores)."
        )
    )
    print("\n" + body)
    if not args.no_write:
        write_section(
            "large_job", "Large job (validate + split, upload, merge)", body, command("large_job", args.quick)
        )


if __name__ == "__main__":
    main()
