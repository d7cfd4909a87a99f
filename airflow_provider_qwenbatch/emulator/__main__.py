"""Command line: ``python -m airflow_provider_qwenbatch.emulator --port 8000`` (or ``qwenbatch-emulator``).

Every field of :class:`~airflow_provider_qwenbatch.emulator.config.EmulatorConfig` is a flag
(``--lines-per-second 50``, ``--no-shuffle-output``, ...); faults are given per endpoint with
``--fault ENDPOINT:key=value,...`` (repeatable), e.g. ``--fault create_batch:p_429=0.2,retry_after=2``
or ``--fault '*:latency_ms=50,latency_jitter_ms=20'``; ``fail_next`` takes kinds joined by
``+`` (``fail_next=429+drop``). On startup one line
``QWENBATCH_EMULATOR_READY http://127.0.0.1:PORT/compatible-mode/v1`` goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import types
from collections.abc import Sequence
from typing import Any

import uvicorn

from airflow_provider_qwenbatch.emulator.app import API_PREFIX, create_app
from airflow_provider_qwenbatch.emulator.config import EmulatorConfig, FaultSpec
from airflow_provider_qwenbatch.emulator.server import READY_MARKER, _free_socket


def parse_fault(text: str) -> tuple[str, FaultSpec]:
    """Parse ``ENDPOINT:key=value,...`` into an endpoint name and a spec.

    :param text: the flag's value.
    """
    endpoint, _, rest = text.partition(":")
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = part.partition("=")
        values[key.strip()] = value.split("+") if key.strip() == "fail_next" else value.strip()
    return endpoint.strip() or "*", FaultSpec.model_validate(values)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one flag per config field."""
    parser = argparse.ArgumentParser(
        prog="qwenbatch-emulator", description="Local emulator of the Qwen Cloud (DashScope) batch API."
    )
    for name, info in EmulatorConfig.model_fields.items():
        if name == "faults":
            continue
        flag = "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        help_text = f"default: {default}"
        if isinstance(default, bool):
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif name == "known_model_prefixes":
            parser.add_argument(flag, dest=name, default=None, help="comma list; " + help_text)
        elif name == "state_dir":
            parser.add_argument(flag, dest=name, default=None, help="default: a temporary directory")
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ENDPOINT:key=value,...",
        help="fault injection for one endpoint (create_batch, get_batch, list_batches, cancel_batch, "
        "upload_file, get_file, list_files, delete_file, get_file_content, or *); repeatable",
    )
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> EmulatorConfig:
    """Build the config from command-line arguments.

    :param argv: the arguments (``sys.argv[1:]`` when omitted).
    """
    ns = build_parser().parse_args(argv)
    values: dict[str, Any] = {k: v for k, v in vars(ns).items() if v is not None and k != "fault"}
    if "known_model_prefixes" in values:
        values["known_model_prefixes"] = [p for p in values["known_model_prefixes"].split(",") if p]
    values["faults"] = dict(parse_fault(f) for f in ns.fault)
    return EmulatorConfig.model_validate(values)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the emulator until SIGINT or SIGTERM.

    :param argv: the arguments (``sys.argv[1:]`` when omitted).
    """
    config = config_from_args(argv)
    sock = _free_socket(config.host, config.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on")
    )

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                break
            await asyncio.sleep(0.01)
        if server.started:
            sys.stdout.write(f"{READY_MARKER} http://{config.host}:{port}{API_PREFIX}\n")
            sys.stdout.flush()
        await task

    def stop(signum: int, frame: types.FrameType | None) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    main()
