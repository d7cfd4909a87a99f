"""Streaming: upload and download of a 500 MB / 50,000-line JSONL file, memory and throughput.

Each client runs in its own fresh subprocess (``--worker``), against the same emulator (a
separate process on 127.0.0.1), so RSS figures are not polluted by the others:

* ours: ``BatchClient.upload_file`` / ``BatchClient.download_file``;
* ``curl``: ``-F purpose=batch -F file=@path`` / ``-o path`` (its RSS is sampled from outside;
  the figure is its whole peak RSS, an upper bound of its growth);
* the official ``openai`` SDK: ``files.create(file=open(path, "rb"), purpose="batch")`` /
  ``files.content(id).write_to_file(path)`` (the documented call, which reads the whole body),
  and ``files.with_streaming_response.content(id)`` + ``stream_to_file`` (its streaming form).

RSS growth is the peak RSS (sampled every 10 ms in a thread) minus the RSS just before the
transfer; the client is built and one small request made before that, so imports and the
connection are not counted. Throughput is bytes over wall time of the transfer.

The download needs a large result file. The emulator's chat answers are short and echo
nothing, so the file is an ``/v1/embeddings`` batch (model ``text-embedding-v4``) whose lines
ask for ``dimensions``: each answer carries a vector of that size, which makes the output file
about as large as the input. The sizes reported are the true ones.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# psutil ships no types and types-psutil is not in the lock: it is untyped (Any) here.
import psutil  # type: ignore[import-untyped]

from benchmarks._common import API_KEY
from benchmarks._report import command, median, parser, table, write_section

GOAL_RSS_MB = 64.0
GOAL_THROUGHPUT = 0.8
MB = 1_000_000
# Answer vector size: an embedding value prints as ~9-10 characters, so ~1,000 dims is ~10 KB.
DIMENSIONS = 1000


# ---- the input file ------------------------------------------------------------------------


def write_input(path: Path, lines: int, total_bytes: int) -> int:
    """Write ``lines`` embedding requests of ``total_bytes // lines`` bytes each (newline included)."""
    per_line = total_bytes // lines
    with path.open("w", encoding="utf-8") as fh:
        for i in range(lines):
            body: dict[str, str | int] = {
                "model": "text-embedding-v4",
                "input": f"t{i}",
                "dimensions": DIMENSIONS,
                "user": "",
            }
            head = {"custom_id": f"s-{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
            bare = len(json.dumps(head, separators=(",", ":"))) + 1
            body["user"] = "x" * max(0, per_line - bare)
            fh.write(json.dumps(head, separators=(",", ":")) + "\n")
    return path.stat().st_size


# ---- workers (each in its own process) -------------------------------------------------------


class Sampler:
    """Samples the RSS of a process every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int | None = None, interval: float = 0.01) -> None:
        self.proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.peak = 0
        self.first = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            if not self.samples:
                self.first = rss
            self.samples += 1
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _self_measure(prepare: Any, transfer: Any) -> dict[str, Any]:
    state = prepare()
    rss_before = psutil.Process().memory_info().rss
    with Sampler() as s:
        t0 = time.perf_counter()
        nbytes, extra = transfer(state)
        elapsed = time.perf_counter() - t0
    peak = max(s.peak, psutil.Process().memory_info().rss)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "bytes": nbytes,
        "seconds": elapsed,
        "rss_before": rss_before,
        "rss_growth": peak - rss_before,
        "maxrss_growth": maxrss - rss_before,
        "samples": s.samples,
        **extra,
    }


def worker(mode: str, base_url: str, api_key: str, path: str, file_id: str) -> dict[str, Any]:
    if mode.endswith("-curl"):
        auth = ["-H", f"Authorization: Bearer {api_key}"]
        if mode == "upload-curl":
            cmd = [
                "curl",
                "-sS",
                "--fail",
                "-F",
                "purpose=batch",
                "-F",
                f"file=@{path}",
                *auth,
                f"{base_url}/files",
            ]
        else:
            cmd = ["curl", "-sS", "--fail", "-o", path, *auth, f"{base_url}/files/{file_id}/content"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        with Sampler(proc.pid) as s:
            out, _ = proc.communicate()
        elapsed = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"curl failed: {proc.returncode}")
        # Its whole peak RSS: the first sample may predate the exec, and ru_maxrss of the child
        # counts the forked copy of this interpreter, so neither is a fair "before".
        result: dict[str, Any] = {
            "bytes": os.path.getsize(path),
            "seconds": elapsed,
            "rss_growth": s.peak,
            "samples": s.samples,
        }
        if mode == "upload-curl":
            result["file_id"] = json.loads(out)["id"]
        return result

    if mode.endswith("-ours"):
        from airflow_provider_qwenbatch.client.sync import BatchClient

        def prepare() -> Any:
            client = BatchClient(api_key, base_url)
            client.list_files(limit=1)
            return client

        def transfer(client: Any) -> tuple[int, dict[str, Any]]:
            if mode == "upload-ours":
                f = client.upload_file(path)
                return os.path.getsize(path), {"file_id": f.id}
            return client.download_file(file_id, path), {}

    else:
        from openai import OpenAI

        def prepare() -> Any:
            client = OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=600)
            client.files.list(limit=1)
            return client

        def transfer(client: Any) -> tuple[int, dict[str, Any]]:
            if mode == "upload-openai":
                with open(path, "rb") as fh:
                    f = client.files.create(file=fh, purpose="batch")
                return os.path.getsize(path), {"file_id": f.id}
            if mode == "download-openai":
                client.files.content(file_id).write_to_file(path)
            else:  # download-openai-stream
                with client.files.with_streaming_response.content(file_id) as response:
                    response.stream_to_file(path)
            return os.path.getsize(path), {}

    return _self_measure(prepare, transfer)


def run_worker(mode: str, base_url: str, path: Path, file_id: str = "") -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.streaming", "--worker", mode, "--base-url", base_url]
    cmd += ["--api-key", API_KEY, "--path", str(path), "--file-id", file_id]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- the orchestration --------------------------------------------------------------------------


UPLOADS = [("curl", "upload-curl"), ("openai", "upload-openai"), ("ours", "upload-ours")]
DOWNLOADS = [
    ("curl", "download-curl"),
    ("openai", "download-openai"),
    ("openai (streaming response)", "download-openai-stream"),
    ("ours", "download-ours"),
]


def _summary(results: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "mbps": median([r["bytes"] / MB / r["seconds"] for r in results]),
        "rss": max(r["rss_growth"] for r in results) / 2**20,
        "seconds": median([r["seconds"] for r in results]),
        "bytes": results[0]["bytes"],
    }


def measure(base_url: str, tmp: Path, lines: int, total: int, repeats: int, log: Any) -> dict[str, Any]:
    from airflow_provider_qwenbatch.client.sync import BatchClient

    src = tmp / "input.jsonl"
    t0 = time.perf_counter()
    size = write_input(src, lines, total)
    log(f"input: {size / MB:.1f} MB, {lines} lines, written in {time.perf_counter() - t0:.1f} s")

    client = BatchClient(API_KEY, base_url)
    up: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in UPLOADS}
    batch_file = ""
    for _rep in range(repeats):
        for name, mode in UPLOADS:
            r = run_worker(mode, base_url, src)
            up[name].append(r)
            log(
                f"upload {name}: {r['bytes'] / MB / r['seconds']:.0f} MB/s, RSS +{r['rss_growth'] / 2**20:.1f} MiB"
            )
            if name == "ours" and not batch_file:
                batch_file = r["file_id"]
            else:
                client.delete_file(r["file_id"])  # keep the emulator's disk small

    t0 = time.perf_counter()
    batch = client.create_batch(batch_file, "/v1/embeddings")
    batch = client.wait_for_batch(batch.id, poll_interval=0.5)
    out_id = batch.output_file_id
    assert out_id, batch
    log(f"batch {batch.status} in {time.perf_counter() - t0:.1f} s: {batch.request_counts}")

    down: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in DOWNLOADS}
    dest = tmp / "download.jsonl"
    for _rep in range(repeats):
        for name, mode in DOWNLOADS:
            r = run_worker(mode, base_url, dest, out_id)
            dest.unlink(missing_ok=True)
            down[name].append(r)
            log(
                f"download {name}: {r['bytes'] / MB / r['seconds']:.0f} MB/s, RSS +{r['rss_growth'] / 2**20:.1f} MiB"
            )
    client.close()
    return {
        "lines": lines,
        "input_bytes": size,
        "upload": {k: _summary(v) for k, v in up.items()},
        "download": {k: _summary(v) for k, v in down.items()},
    }


def _rows(results: dict[str, dict[str, float]], ours: dict[str, float]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, s in results.items():
        rows.append(
            [
                name,
                f"{s['bytes'] / MB:.1f}",
                f"{s['seconds']:.2f}",
                f"{s['mbps']:.0f}",
                f"{s['rss']:.1f}",
                "1.00" if name == "ours" else f"{ours['mbps'] / s['mbps']:.2f}",
            ]
        )
    return rows


def render(res: dict[str, Any], repeats: int) -> str:
    headers = ["client", "MB", "seconds", "MB/s", "peak RSS growth (MiB)", "ours / this (throughput)"]
    parts = []
    verdicts = []
    for what in ("upload", "download"):
        r = res[what]
        ours, curl, oa = r["ours"], r["curl"], r["openai"]
        rss_ok = ours["rss"] < GOAL_RSS_MB
        tp = ours["mbps"] / curl["mbps"]
        verdicts.append(
            f"- {what}: RSS growth {ours['rss']:.1f} MiB (goal < {GOAL_RSS_MB:.0f}: {'met' if rss_ok else 'MISSED'}); "
            f"throughput {tp:.2f} x curl (goal >= {GOAL_THROUGHPUT}: {'met' if tp >= GOAL_THROUGHPUT else 'MISSED'}), "
            f"{ours['mbps'] / oa['mbps']:.2f} x openai; RSS {ours['rss']:.1f} vs curl {curl['rss']:.1f}, "
            f"openai {oa['rss']:.1f} MiB"
        )
        parts.append(f"**{what.capitalize()}**\n\n" + table(headers, _rows(r, ours)))
    mb = res["input_bytes"] / MB
    out_mb = res["download"]["ours"]["bytes"] / MB
    intro = (
        f"Upload of a {mb:.0f} MB / {res['lines']:,}-line JSONL file, download of the batch's "
        f"{out_mb:.0f} MB output file ({res['lines']:,} embedding answers of {DIMENSIONS} dims; chat "
        f"answers are short and echo nothing). Emulator in its own process on 127.0.0.1; each "
        f"client in a fresh subprocess; median of {repeats} run(s), RSS growth the max. RSS growth: "
        f"peak sampled every 10 ms over the RSS just before the transfer (curl: its whole "
        f"peak RSS, an upper bound). Goals: RSS growth < {GOAL_RSS_MB:.0f} MiB, throughput >= "
        f"{GOAL_THROUGHPUT} x curl."
    )
    return intro + "\n\n" + "\n".join(verdicts) + "\n\n" + "\n\n".join(parts)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--worker", help=argparse_hidden())
    p.add_argument("--base-url")
    p.add_argument("--api-key")
    p.add_argument("--path")
    p.add_argument("--file-id", default="")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.base_url, args.api_key, args.path, args.file_id)))
        return

    from airflow_provider_qwenbatch.emulator.config import EmulatorConfig
    from airflow_provider_qwenbatch.emulator.server import EmulatorProcess

    if not shutil.which("curl"):
        sys.exit("curl is needed as the baseline (apt-get install -y curl)")
    lines, total = (10_000, 100 * MB) if args.quick else (50_000, 500 * MB)
    repeats = args.repeats or 3

    def log(msg: str) -> None:
        print(msg, flush=True)

    with tempfile.TemporaryDirectory(prefix="qb-streaming-") as tmpdir:
        tmp = Path(tmpdir)
        config = EmulatorConfig(
            port=0,
            api_key=API_KEY,
            state_dir=str(tmp / "emulator"),
            validation_delay=0.05,
            finalize_delay=0.05,
            lines_per_second=50_000.0,
            max_lines_per_tick=50_000,
            tick_interval=0.02,
        )
        with EmulatorProcess(config) as handle:
            res = measure(handle.base_url, tmp, lines, total, repeats, log)
    body = render(res, repeats)
    print("\n" + body)
    if not args.no_write:
        write_section("streaming", "Streaming (upload / download)", body, command("streaming", args.quick))


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
